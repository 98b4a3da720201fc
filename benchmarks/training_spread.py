"""Do other training runs of chapter 2's recipe land inside the intervals chapter 2 prints?

Chapter 2's bootstrap intervals cover the test town's sample of chips, for one training run. Another
machine runs the same float32 recipe with other float rounding (other kernels, another thread count);
another seed is a larger perturbation of the same kind (other initial head weights, other batches and
augmentations). This trains the CLI-default recipe (``TrainConfig`` defaults, as ``schoolvision train``)
on the book's chips for each ``--seeds`` value and each ``--threads`` count, and compares each run's test
AUPRC and F1 with the committed chapter 2's printed intervals (``build_tools.book``'s glued values, read
from git ``--ref``). Prints one JSON object: per run, the seed, the threads, the precision used, seconds,
AUPRC and F1 and whether each lies inside; and the spread of each metric over the runs.

    .venv/bin/python benchmarks/training_spread.py --chips data/chips --out /tmp/spread \\
        [--seeds 1 2] [--threads 2] [--ref HEAD]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from schoolvision.train.fit import TrainConfig, fit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # build_tools: the book's glued values
from build_tools.book import glued_values, repo_root  # noqa: E402


def book_intervals(ref: str) -> dict[str, list[float]]:
    """Chapter 2's printed AUPRC and F1 intervals and values in the committed notebook at ``ref``."""
    text = subprocess.run(["git", "show", f"{ref}:book/02_training.ipynb"], cwd=repo_root(), check=True,
                          capture_output=True, text=True).stdout
    book = glued_values(text)
    return {key: {"value": float(book[f"ch2_test_{key}"]),
                  "interval": [float(book[f"ch2_{key}_lo"]), float(book[f"ch2_{key}_hi"])]} for key in ("auprc", "f1")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=Path, default=Path("data/chips"))
    parser.add_argument("--out", type=Path, required=True, help="work folder: one run folder per seed and threads")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--ref", default="HEAD", help="git revision of the committed chapter 2")
    args = parser.parse_args()
    book = book_intervals(args.ref)
    runs = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for seed in args.seeds:
            config = TrainConfig(args.chips, args.out / f"seed{seed}_threads{threads}", seed=seed, device=args.device,
                                 overwrite=True)
            started = time.perf_counter()
            metrics = fit(config)
            row = {"seed": seed, "threads": threads, "precision": metrics.get("training_precision"),
                   "seconds": round(time.perf_counter() - started, 1), "best_epoch": metrics.get("best_epoch")}
            for key, entry in book.items():
                low, high = entry["interval"]
                value = float(metrics[key])
                row[key] = round(value, 4)
                row[f"{key}_inside"] = bool(low - 1e-9 <= value <= high + 1e-9)
            runs.append(row)
    print(json.dumps({
        "machine": platform.processor() or platform.machine(), "chips": str(args.chips), "book": book,
        "recipe": {"epochs": TrainConfig.epochs, "image_size": "backbone default", "lr": TrainConfig.lr},
        "runs": runs,
        "spread": {key: [min(r[key] for r in runs), max(r[key] for r in runs)] for key in book},
        "all_inside": all(r["auprc_inside"] and r["f1_inside"] for r in runs),
    }, indent=2))


if __name__ == "__main__":
    main()
