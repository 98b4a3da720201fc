"""How far apart do training runs of chapter 2's recipe land, and what interval covers them?

Chapter 2's bootstrap covers the test town's sample of chips for one training run. Another machine runs
the same float32 recipe with other float rounding (other kernels, another thread count), and six epochs
of training carry such differences far: another seed is the same kind of perturbation. This trains the
CLI-default recipe (``TrainConfig`` defaults, as ``schoolvision train``) on the book's chips for each
``--seeds`` value (runs already trained with the same recipe are reused, and ``--runs`` adds finished
runs such as the book's own), and pools every run's bootstrap resamples of the test split into one
interval: the test sample's variation and the training runs' at once. Prints one JSON object: per run,
its seed, precision, AUPRC and F1 with its own bootstrap interval and whether they lie inside the
committed chapter 2's printed intervals (git ``--ref``); the pooled intervals; the chips' fingerprint and
the recipe. ``--write FILE`` also writes it where chapter 2 reads it (``book/params/training_spread.json``),
which it uses only for the same chips and recipe.

    .venv/bin/python benchmarks/training_spread.py --out /tmp/spread [--seeds 1 2] [--runs runs/quick] \\
        [--write book/params/training_spread.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from schoolvision.book.training_spread import run_recipe
from schoolvision.io.folders import ChipsFolder, RunFolder
from schoolvision.train.evaluation import bootstrap_groups
from schoolvision.train.fit import TrainConfig, fit
from schoolvision.train.metrics import bootstrap_draws, percentile_intervals

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # build_tools: the book's glued values
from build_tools.book import committed_intervals  # noqa: E402


def test_draws(run: Path, chips: Path, n_boot: int) -> tuple[dict[str, np.ndarray], dict]:
    """The bootstrap resamples of a run's test split (as ``fit`` draws them) and its test metrics."""
    metrics = RunFolder(run).read_metrics("test")
    predictions = RunFolder(run).read_predictions()
    test = predictions[predictions["split"] == "test"]
    index = ChipsFolder(chips).read_index()
    index = index.assign(chip_id=index["chip_id"].astype(str)).set_index("chip_id")
    ordered = index.loc[test["chip_id"].astype(str)].reset_index()
    draws, _ = bootstrap_draws(test["label"].to_numpy(int), test["prob"].to_numpy(float), metrics["threshold"],
                               n_boot, seed=0, groups=bootstrap_groups(ordered))
    return draws, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=Path, default=Path("data/chips"))
    parser.add_argument("--out", type=Path, required=True, help="work folder: one run folder per seed")
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--runs", type=Path, nargs="*", default=[Path("runs/quick")],
                        help="finished runs of the same recipe to pool (default: the book's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--ref", default="HEAD", help="git revision of the committed chapter 2")
    parser.add_argument("--write", type=Path, default=None, help="also write the JSON here (chapter 2 reads it)")
    args = parser.parse_args()
    book = committed_intervals(args.ref)
    runs = []
    for seed in args.seeds:
        out = args.out / f"seed{seed}"
        if not (RunFolder(out).metrics_path().is_file() and RunFolder(out).read_config().get("seed") == seed):
            started = time.perf_counter()
            fit(TrainConfig(args.chips, out, seed=seed, device=args.device, overwrite=True))
            print(f"seed {seed}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
        runs.append(out)
    runs += list(args.runs)
    recipes = {str(run): run_recipe(RunFolder(run).read_config()) for run in runs}
    if len({json.dumps(r, sort_keys=True) for r in recipes.values()}) > 1:
        raise SystemExit(f"the runs differ in their recipe: {recipes}")
    pooled: dict[str, list[np.ndarray]] = {}
    rows = []
    for run in runs:
        draws, metrics = test_draws(run, args.chips, args.n_boot)
        for key, values in draws.items():
            pooled.setdefault(key, []).append(values)
        row = {"run": str(run), "seed": RunFolder(run).read_config().get("seed"),
               "precision": metrics.get("training_precision"), "best_epoch": metrics.get("best_epoch")}
        for key, entry in book.items():
            low, high = entry["interval"]
            row[key] = round(float(metrics[key]), 4)
            row[f"{key}_interval"] = [round(v, 4) for v in metrics["bootstrap"][key]]
            row[f"{key}_inside_book"] = bool(low - 1e-9 <= float(metrics[key]) <= high + 1e-9)
        rows.append(row)
    intervals = percentile_intervals({k: np.concatenate(v) for k, v in pooled.items()})
    report = {
        "machine": platform.processor() or platform.machine(), "chips": str(args.chips),
        "chips_fingerprint": ChipsFolder(args.chips).read_meta(required=True).get("fingerprint"),
        "recipe": next(iter(recipes.values())), "book": book, "runs": rows, "n_boot": args.n_boot, "level": 0.95,
        "pooled": {key: intervals[key] for key in ("auprc", "f1")},
        "spread": {key: [min(r[key] for r in rows), max(r[key] for r in rows)] for key in ("auprc", "f1")},
        "all_inside_book": all(r["auprc_inside_book"] and r["f1_inside_book"] for r in rows),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.write:
        args.write.write_text(text + "\n")


if __name__ == "__main__":
    main()
