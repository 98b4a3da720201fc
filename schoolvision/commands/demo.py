"""`schoolvision demo`: write synthetic georeferenced towns with known school footprints."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder (scenes/, schools.geojson, demo.json)")
    parser.add_argument("--towns", type=int, default=6, help="number of towns (one scene each; default 6)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    parser.add_argument("--size", type=int, default=1536, help="scene width and height in pixels (default 1536)")
    parser.add_argument("--gsd", type=float, default=1.0, help="ground sampling distance in m/pixel (default 1.0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing different output folder")


def run(args: argparse.Namespace) -> int:
    from schoolvision.data.synthetic import make_demo

    info = make_demo(args.out, towns=args.towns, seed=args.seed, size=args.size, gsd=args.gsd, overwrite=args.overwrite)
    total = sum(info.n_schools.values())
    print(f"wrote {len(info.scenes)} towns with {total} schools and {sum(info.n_landmarks.values())} hard negatives to {info.out_dir}")
    for name, n in info.n_schools.items():
        print(f"  {name}: {n} schools, {info.n_landmarks[name]} hard negatives")
    return 0
