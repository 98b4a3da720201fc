"""`schoolvision demo`: write synthetic georeferenced towns with known school footprints and a registry."""

from __future__ import annotations

import argparse
from pathlib import Path

from schoolvision.commands import OVERWRITE_HELP, default_of
from schoolvision.demo import REGIONS, make_demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder (scenes/, schools.geojson, registry.csv, demo.json)")
    parser.add_argument(
        "--towns",
        type=int,
        default=default_of(make_demo, "towns"),
        help="number of towns (one scene each; default %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=default_of(make_demo, "seed"),
        help="random seed; the same seed gives identical files",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=default_of(make_demo, "size"),
        help="scene width and height in pixels (default %(default)s)",
    )
    parser.add_argument(
        "--gsd",
        type=float,
        default=default_of(make_demo, "gsd"),
        help="ground sampling distance in m/pixel (default %(default)s)",
    )
    parser.add_argument(
        "--region",
        choices=tuple(REGIONS),
        default=default_of(make_demo, "region"),
        help="the towns' look: " + "; ".join(f"{r.name}: {r.description}" for r in REGIONS.values())
             + " (default %(default)s)",
    )
    parser.add_argument(
        "--registry-missing",
        type=float,
        default=default_of(make_demo, "registry_missing"),
        metavar="SHARE",
        help="share of each town's schools left out of registry.csv (default %(default)s)",
    )
    parser.add_argument(
        "--registry-displaced",
        type=float,
        default=default_of(make_demo, "registry_displaced"),
        metavar="SHARE",
        help="share of the listed schools placed 100-500 m off (default %(default)s)",
    )
    parser.add_argument(
        "--registry-false",
        type=int,
        default=default_of(make_demo, "registry_false"),
        metavar="N",
        help="look-alikes per town listed as schools (default %(default)s); registry_truth.csv says what each "
             "registry row really is",
    )
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def run(args: argparse.Namespace) -> int:
    info = make_demo(args.out, towns=args.towns, seed=args.seed, size=args.size, gsd=args.gsd, overwrite=args.overwrite,
                     region=args.region, registry_missing=args.registry_missing,
                     registry_displaced=args.registry_displaced, registry_false=args.registry_false)
    total = sum(info.n_schools.values())
    negatives = sum(info.n_landmarks.values())
    print(f"wrote {len(info.scenes)} towns with {total} schools and {negatives} hard negatives to {info.out_dir}")
    for name, n in info.n_schools.items():
        print(f"  {name}: {n} schools, {info.n_landmarks[name]} hard negatives")
    print(f"  region {args.region}; registry.csv lists some schools, misplaces some and lists some look-alikes "
          "(registry_truth.csv says which)")
    return 0
