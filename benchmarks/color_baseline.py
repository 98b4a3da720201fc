"""Colour-only baseline: can per-chip colour histograms (no spatial information) find schools?

The synthetic demo must not be solvable from colour alone, or a CNN would learn nothing about
school layouts. Fits a logistic regression on RGB + HSV histograms of the train/val chips and reports
its AUPRC on the held-out test town (acceptance: <= 0.75). Prints one JSON object.

    .venv/bin/python benchmarks/color_baseline.py [--demo DIR] [--chips DIR] [--towns 6] [--size 1536]
        [--region rural|urban|arid]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from skimage.color import rgb2hsv
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

BINS = 16


def colour_features(chip: np.ndarray) -> np.ndarray:
    """Normalised 16-bin histograms of R, G, B, H, S, V plus channel means and stds (order-free)."""
    rgb = chip.transpose(1, 2, 0).astype(np.float32) / 255.0
    hsv = rgb2hsv(rgb)
    feats = []
    for img in (rgb, hsv):
        for c in range(3):
            h, _ = np.histogram(img[..., c], bins=BINS, range=(0.0, 1.0))
            feats.append(h / h.sum())
    flat = rgb.reshape(-1, 3)
    feats += [flat.mean(0), flat.std(0)]
    return np.concatenate(feats)


def baseline(demo: Path | None = None, chips: Path | None = None, *, towns: int = 6, size: int = 1536, seed: int = 0,
             region: str = "rural") -> dict:
    """The colour-only model's scores on the held-out test town (demo and chips made in a temp folder if None)."""
    from schoolvision.data.chips import ChipConfig, make_chips
    from schoolvision.demo import make_demo

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if demo is None:
            demo = Path(tmp) / "demo"
            make_demo(demo, towns=towns, seed=seed, size=size, region=region)
        if chips is None:
            chips = Path(tmp) / "chips"
            make_chips([demo / "scenes"], demo / "schools.geojson", chips, ChipConfig(seed=seed))
        frame = pd.read_csv(chips / "chips.csv")
        feats = []
        for rel in frame["path"]:
            with rasterio.open(chips / rel) as src:
                feats.append(colour_features(src.read()))
    x = np.stack(feats)
    y = (frame["label"] == "school").to_numpy().astype(int)
    train = frame["split"].isin(["train", "val"]).to_numpy()
    test = (frame["split"] == "test").to_numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced"))
    model.fit(x[train], y[train])
    p = model.predict_proba(x[test])[:, 1]
    return {
        "region": region,
        "auprc_test": round(float(average_precision_score(y[test], p)), 4),
        "auroc_test": round(float(roc_auc_score(y[test], p)), 4),
        "auprc_train": round(float(average_precision_score(y[train], model.predict_proba(x[train])[:, 1])), 4),
        "prevalence_test": round(float(y[test].mean()), 4),
        "n_pos": int(y.sum()), "n_neg": int((1 - y).sum()),
        "n_test_pos": int(y[test].sum()), "n_test_neg": int((1 - y[test]).sum()),
        "test_scenes": sorted(frame.loc[test, "scene"].unique().tolist()),
        "features": "RGB+HSV 16-bin histograms, channel mean/std",
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, help="existing demo folder (default: generate one in a temp folder)")
    parser.add_argument("--chips", type=Path, help="existing chips folder made from the demo")
    parser.add_argument("--towns", type=int, default=6)
    parser.add_argument("--size", type=int, default=1536)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--region", default="rural", help="the demo's region when it is generated here")
    args = parser.parse_args()
    print(json.dumps(baseline(args.demo, args.chips, towns=args.towns, size=args.size, seed=args.seed,
                              region=args.region), indent=2))


if __name__ == "__main__":
    main()
