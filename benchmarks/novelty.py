"""Trust map: does the scene-level share of flagged windows tell home imagery from other regions, and at what cost?

A trained run (default the CLI-default run on the rural demo, ``--run``, with its ``--chips``) is copied
into ``--work`` and given its novelty summary there (the original run is never written). Demo towns never
used in training are generated for every region (``--towns`` each, ``--seed``; the first region is home).
Each town is scanned with ``run_scan`` against its own schools: recall, and the share of windows above
the home 99th percentile (the scan's own novelty, default summary). Reported:

* per town: region, flagged share, recall, recall drop (mean home recall minus the town's);
* ``auroc``: the flagged share as a score of "other region" over all towns (target >= 0.95);
* ``spearman_share_vs_recall_drop`` (rho and p) over all towns;
* ``home_flagged_share`` mean and max (target <= 0.05);
* ``methods``: the same AUROC and home share for every summary (kNN k=1, k=5, class-conditional
  Gaussians with Ledoit-Wolf shrinkage; kNN referenced on the validation chips alone), on the windows
  of a second pass at a stride of one chip;
* ``throughput``: windows/s with and without novelty, interleaved: the scan's inner step on batches in
  memory (``bare``) and ``scan_scene`` on a home town (``scan``); ``ratio`` = with / without (target
  >= 0.90, i.e. <= 10% cost).

Prints one JSON object. Example: ``python benchmarks/novelty.py --work /tmp/novelty-bench``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np


class Recording:
    """A novelty summary that keeps every embedding it scores (the method comparison's second pass)."""

    def __init__(self, summary):
        self.summary, self.embeddings = summary, []

    def percentile(self, embeddings):
        self.embeddings.append(np.asarray(embeddings, np.float32))
        return self.summary.percentile(embeddings)


def prepare_run(args) -> tuple[Path, dict]:
    """A copy of the run with the default summary written into it, and every compared summary in memory."""
    from schoolvision.data.dataset import ChipDataset
    from schoolvision.io.folders import sha256
    from schoolvision.model.checkpoint import load_classifier
    from schoolvision.model.runtime import make_runtime
    from schoolvision.train.novelty import NoveltyConfig, chip_embeddings, fit_summary, write_summary

    run = args.work / "run"
    run.mkdir(parents=True, exist_ok=True)
    for name in ("best.pt", "config.json"):
        shutil.copy2(args.run / name, run / name)
    model, meta = load_classifier(run / "best.pt", args.device)
    runtime = make_runtime(args.runtime, model, meta, args.device)
    emb = {split: chip_embeddings(runtime, ChipDataset(args.chips, split=split, image_size=meta.image_size),
                                  progress=False) for split in ("train", "val", "test")}
    labels = ChipDataset(args.chips, split="train").class_ids
    configs = {"knn-k1": NoveltyConfig(method="knn", k=1), "knn-k5": NoveltyConfig(method="knn", k=5),
               "gaussian": NoveltyConfig(method="gaussian"),
               "knn-k1-val-only": NoveltyConfig(method="knn", k=1, reference_splits=("val",))}
    record = {"checkpoint_sha256": sha256(run / "best.pt"), "backbone": meta.backbone}
    summaries = {name: fit_summary(emb["train"], labels, np.concatenate([emb[s] for s in c.reference_splits]), c,
                                   {"reference_splits": list(c.reference_splits), **record})
                 for name, c in configs.items()}
    default = next(name for name, c in configs.items() if c == NoveltyConfig())
    write_summary(run, summaries[default])
    return run, {"summaries": summaries, "default": default, "model": model, "meta": meta, "runtime": runtime}


def towns(args) -> list[tuple[str, Path, Path]]:
    """(region, scene, schools file) of every generated town, home region first."""
    from schoolvision.demo import make_demo

    out = []
    for region in args.regions:
        demo = args.work / "demo" / region
        if not (demo / "demo.json").is_file():
            make_demo(demo, towns=args.towns, seed=args.seed, region=region)
        out += [(region, scene, demo / "schools.geojson") for scene in sorted((demo / "scenes").glob("*.tif"))]
    return out


def scan_town(args, run: Path, region: str, scene: Path, schools: Path) -> dict:
    """Recall and the scan's flagged share of one town."""
    from schoolvision.scan.runner import ScanConfig, run_scan

    out = args.work / "scans" / region / scene.stem
    summary = run_scan(ScanConfig(run=run, imagery=[scene], out_dir=out, schools=schools, device=args.device,
                                  runtime=args.runtime, make_map=False, progress=False, overwrite=True))
    s = summary.scenes[0]
    return {"region": region, "town": scene.stem, "flagged_share": s.novelty_share,
            "recall": summary.evaluation["recall"], "windows": s.windows, "seconds": s.seconds}


def town_embeddings(args, state: dict, region: str, scene: Path) -> np.ndarray:
    """Embeddings of the town's windows at a stride of one chip (a second, lighter pass)."""
    from schoolvision.io.imagery import list_sources
    from schoolvision.scan.scene import scan_scene

    recording = Recording(state["summaries"][state["default"]])
    meta = state["meta"]
    out = args.work / "tmp" / f"{region}-{scene.stem}_probability.tif"
    scan_scene(state["model"], meta, list_sources([scene])[0], out, stride=meta.chip_size, device=args.device,
               progress=False, runtime=state["runtime"], novelty=recording)
    return np.concatenate(recording.embeddings)


def throughput(args, state: dict, scene: Path) -> dict:
    """Windows/s without and with novelty: the scan's inner step on batches in memory, then whole scans.

    ``bare``: :func:`~schoolvision.scan.windows.score_windows` on one batch of windows at the input size
    (forward pass, P(school), and with novelty the percentile), interleaved, best of ``5 x repeats``: the
    cost of novelty alone, steady against a loaded machine. ``scan``: ``scan_scene`` on one town without and
    with novelty, interleaved, best of ``repeats`` (reads, resizes, blends and the rasters included).
    """
    import torch

    from schoolvision.io.imagery import list_sources
    from schoolvision.scan.scene import scan_scene
    from schoolvision.scan.windows import score_windows

    summary, runtime, meta = state["summaries"][state["default"]], state["runtime"], state["meta"]
    images = torch.rand(32, 3, meta.image_size, meta.image_size, generator=torch.Generator().manual_seed(0))
    bare: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(5 * args.repeats):
        for kind, novelty in (("without", None), ("with", summary)):
            t0 = time.perf_counter()
            score_windows(runtime, images, meta.image_size, novelty)
            bare[kind].append(len(images) / (time.perf_counter() - t0))
    source = list_sources([scene])[0]
    scans: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(args.repeats):  # the runtime is warm from the towns' scans
        for kind, novelty in (("without", None), ("with", summary)):
            t0 = time.perf_counter()
            res = scan_scene(state["model"], meta, source, args.work / "tmp" / f"tp-{kind}_probability.tif",
                             device=args.device, progress=False, runtime=runtime, novelty=novelty)
            scans[kind].append(res.windows / (time.perf_counter() - t0))
    out = {"town": scene.stem}
    for name, rates in (("bare", bare), ("scan", scans)):
        best = {k: max(v) for k, v in rates.items()}
        out[name] = {"windows_per_s": {k: round(v, 2) for k, v in best.items()},
                     "ratio": round(best["with"] / best["without"], 3),
                     "runs": {k: [round(x, 2) for x in v] for k, v in rates.items()}}
    return out


def separation(rows: list[dict], home: str, key: str) -> dict:
    """AUROC of ``key`` as a score of "not home", and the home towns' mean and max."""
    from sklearn.metrics import roc_auc_score

    y = [r["region"] != home for r in rows]
    x = [r[key] for r in rows]
    homes = [r[key] for r in rows if r["region"] == home]
    return {"auroc": round(float(roc_auc_score(y, x)), 3), "home_mean": round(float(np.mean(homes)), 4),
            "home_max": round(float(np.max(homes)), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/quick"), help="the CLI-default run (chapter 2)")
    parser.add_argument("--chips", type=Path, default=Path("data/chips"), help="its chips (chapter 1)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/novelty-bench"))
    parser.add_argument("--regions", nargs="+", default=["rural", "urban", "arid"], help="the first is home")
    parser.add_argument("--towns", type=int, default=3)
    parser.add_argument("--seed", type=int, default=21, help="demo seed: other towns than the run's (seed 0)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from scipy.stats import spearmanr

    from schoolvision.train.novelty import FLAG_PERCENTILE, WARN_SHARE, flagged_share

    warnings.simplefilter("ignore")  # the scans' own warning lines (scene shares) are in the JSON
    t0 = time.perf_counter()
    run, state = prepare_run(args)
    all_towns = towns(args)
    home = args.regions[0]
    rows = [scan_town(args, run, *town) for town in all_towns]
    home_recall = float(np.mean([r["recall"] for r in rows if r["region"] == home]))
    for r in rows:
        r["recall_drop"] = round(home_recall - r["recall"], 4)
    rho = spearmanr([r["flagged_share"] for r in rows], [r["recall_drop"] for r in rows])
    methods = {}
    embeddings = {f"{region}-{scene.stem}": town_embeddings(args, state, region, scene)
                  for region, scene, _ in all_towns}
    np.savez(args.work / "window_embeddings.npz", **embeddings)  # for comparing other summaries offline
    for name, summary in state["summaries"].items():
        shares = [{"region": region, "share": flagged_share(summary.percentile(embeddings[f"{region}-{scene.stem}"]))}
                  for region, scene, _ in all_towns]
        methods[name] = {**separation(shares, home, "share"),
                         "shares": [round(s["share"], 4) for s in shares]}
    result = {
        "run": str(args.run), "home": home, "regions": args.regions, "towns_per_region": args.towns,
        "seed": args.seed, "runtime": state["runtime"].describe(), "summary": state["default"],
        "flag_percentile": FLAG_PERCENTILE, "warn_share": WARN_SHARE, "towns": rows,
        **{f"flagged_share_{k}": v for k, v in separation(rows, home, "flagged_share").items()},
        "home_recall": round(home_recall, 4),
        "spearman_share_vs_recall_drop": {"rho": round(float(rho.statistic), 3), "p": round(float(rho.pvalue), 4)},
        "methods": methods,
        "throughput": throughput(args, state, next(t[1] for t in all_towns if t[0] == home)),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
