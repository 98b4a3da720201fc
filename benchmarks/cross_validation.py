"""Spatial cross-validation beside the single split: is the pooled out-of-fold AUPRC inside the split's interval?

Trains the single-split run and ``--folds`` fold models with the same settings on one chips folder
(``fit`` and ``cross_validate``), then prints one JSON object: each one's AUPRC, its bootstrap interval
and how many schools it was measured on, and whether the pooled out-of-fold AUPRC lies within the
single split's interval. The out-of-fold number counts every school; the single split's only the test
split's, which is why its interval is the wider one on small data.

    .venv/bin/python benchmarks/cross_validation.py --chips data/chips --out /tmp/cv_bench \\
        [--folds 3] [--epochs 6] [--image-size 224] [--device auto]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from schoolvision.train.fit import TrainConfig, fit
from schoolvision.train.folds import count_schools, cross_validate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="work folder: single/ and folds/ runs")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = TrainConfig(args.chips, args.out / "single", epochs=args.epochs, image_size=args.image_size,
                         device=args.device, seed=args.seed, overwrite=True)
    started = time.perf_counter()
    single = fit(config)
    split_seconds = time.perf_counter() - started
    pooled = cross_validate(dataclasses.replace(config, out_dir=args.out / "folds"), args.folds)
    low, high = single["bootstrap"]["auprc"]
    print(json.dumps({
        "chips": str(args.chips), "epochs": args.epochs, "image_size": args.image_size, "folds": args.folds,
        "single": {"auprc": single["auprc"], "auprc_interval": [low, high],
                   "test_schools": count_schools(args.chips), "seconds": round(split_seconds, 1)},
        "out_of_fold": {"auprc": pooled["auprc"], "auprc_interval": pooled["bootstrap"]["auprc"],
                        "schools": sum(row["test_schools"] for row in pooled["folds"]),
                        "per_fold_auprc": [row["auprc"] for row in pooled["folds"]],
                        "mean_fold_auprc": pooled["cross_validation"]["mean_fold_auprc"],
                        "unit": pooled["cross_validation"]["unit"],
                        "seconds": round(time.perf_counter() - started - split_seconds, 1)},
        "out_of_fold_within_single_interval": bool(low <= pooled["auprc"] <= high),
    }, indent=2))


if __name__ == "__main__":
    main()
