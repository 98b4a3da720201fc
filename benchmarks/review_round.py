"""One review round through the command line on a region the home model never saw; prints one JSON object.

The loop of the README's "Review and retrain": ``scan --registry`` of the first demo town, ``review build``,
decisions from the demo's truth (a simulated mapper, written as the page exports them), ``review retrain``,
then scans of the other towns, which nobody reviewed, with the home run and the new run. Reports recall and
precision there before and after (each run at its own tuned threshold), the home test metrics before and
after, the round's chip counts and the seconds of ``review retrain``.

Without ``--run`` a home run is trained first on 3 rural demo towns (seed 0): by default 1 epoch at 64 px, a
CPU smoke run and not a good model; ``--home-size 160 --home-epochs 4`` gives one (about a minute on two
cores) that misses the new region's schools for the region's sake, the case a review round is for. With the
book's run (``--run runs/quick``) it measures the book's model. Measured results: ``benchmarks/README.md``.

    .venv/bin/python benchmarks/review_round.py --out /tmp/review_round [--run RUN | --home-size 160
        --home-epochs 4] [--seed 7] [--epochs 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import geopandas as gpd

from schoolvision.book.simulate import simulate_review
from schoolvision.cli import main
from schoolvision.data.chips import ChipConfig, make_chips
from schoolvision.demo import make_demo
from schoolvision.io.folders import RunFolder, ScanFolder
from schoolvision.train.fit import TrainConfig, fit


def train_home(out: Path, device: str, image_size: int = 64, epochs: int = 1) -> Path:
    """A run on three rural demo towns (seed 0), one town per split."""
    make_demo(out / "home_demo", towns=3, seed=0, size=768)
    make_chips([out / "home_demo" / "scenes"], out / "home_demo" / "schools.geojson", out / "home_chips", ChipConfig())
    fit(TrainConfig(chips_dir=out / "home_chips", out_dir=out / "home_run", epochs=epochs, image_size=image_size,
                    device=device))
    return out / "home_run"


def run_round(args: argparse.Namespace) -> dict:
    out = args.out
    home = args.run or train_home(out, args.device, args.home_size, args.home_epochs)
    demo = out / "region"
    make_demo(demo, towns=args.towns, seed=args.seed, size=args.size, region=args.region)
    scenes = sorted((demo / "scenes").glob("*.tif"))
    scan = ["--device", args.device, "--no-map"]
    assert main(["scan", "--run", str(home), "--imagery", str(scenes[0]), "--out", str(out / "scan"),
                 "--registry", str(demo / "registry.csv"), *scan]) == 0
    assert main(["review", "build", "--scan", str(out / "scan"), "--out", str(out / "queue"),
                 "--device", args.device]) == 0
    truth = gpd.read_file(demo / "schools.geojson")
    decisions = simulate_review(out / "queue", truth, out / "decisions.geojson", match_distance=50.0).decisions
    t0 = time.perf_counter()
    assert main(["review", "retrain", "--queue", str(out / "queue"), "--decisions", str(decisions), "--run", str(home),
                 "--out", str(out / "round"), "--epochs", str(args.epochs), "--device", args.device]) == 0
    seconds = time.perf_counter() - t0
    unreviewed = {}
    for when, run in (("before", home), ("after", out / "round" / "run")):
        folder = out / f"unreviewed_{when}"
        assert main(["scan", "--run", str(run), "--imagery", *map(str, scenes[1:]), "--out", str(folder),
                     "--schools", str(demo / "schools.geojson"), *scan]) == 0
        e = ScanFolder(folder).read_summary()["evaluation"]
        unreviewed[when] = {k: e[k] for k in ("schools", "recall", "precision", "f1")}
    record = RunFolder(out / "round" / "run").read_round()
    return {"home_run": str(home), "region": args.region, "seed": args.seed, "towns": args.towns,
            "reviewed_town": scenes[0].stem, "unreviewed_towns": [s.stem for s in scenes[1:]],
            "decided": record["decided"], "chips": record["chips"], "epochs": args.epochs,
            "retrain_seconds": round(seconds, 1), "unreviewed": unreviewed,
            "home_test": {w: {k: record["home_test"][w][k] for k in ("auprc", "f1", "recall", "threshold")}
                          for w in ("before", "after")},
            "reviewed_places": {w: record["reviewed_places"][w] for w in ("before", "after")}}


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder (must be new or empty)")
    parser.add_argument("--run", type=Path, default=None, help="home run (default: one trained here)")
    parser.add_argument("--home-size", type=int, default=64, help="image size of a home run trained here (default: 64)")
    parser.add_argument("--home-epochs", type=int, default=1, help="epochs of the home run trained here (default: 1)")
    parser.add_argument("--region", default="urban", help="demo region of the new area (default: urban)")
    parser.add_argument("--seed", type=int, default=7, help="demo seed of the new area (default: 7)")
    parser.add_argument("--towns", type=int, default=3, help="towns of the new area, the first reviewed (default: 3)")
    parser.add_argument("--size", type=int, default=768, help="town size in px (default: 768)")
    parser.add_argument("--epochs", type=int, default=2, help="review retrain --epochs (default: 2)")
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda (default: cpu)")
    print(json.dumps(run_round(parser.parse_args()), indent=1))


if __name__ == "__main__":
    main_cli()
