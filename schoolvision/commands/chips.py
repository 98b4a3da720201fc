"""`schoolvision chips`: cut labelled chips from imagery and school labels."""

from __future__ import annotations

import argparse

from schoolvision.commands import default_of
from schoolvision.data.chips import ChipConfig, make_chips
from schoolvision.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--imagery",
        nargs="+",
        required=True,
        metavar="PATH",
        help="GeoTIFF files, folders of GeoTIFFs, or XYZ tile folders (z-x-y.png|jpg)",
    )
    parser.add_argument("--schools", required=True, metavar="FILE", help="school Points/Polygons (GeoJSON, any CRS)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output chips folder")
    parser.add_argument("--chip-size", type=int, default=default_of(ChipConfig, "chip_size"), metavar="PX")
    parser.add_argument(
        "--stride",
        type=int,
        default=default_of(ChipConfig, "stride"),
        metavar="PX",
        help="grid step (default chip size / 2)",
    )
    parser.add_argument(
        "--gsd",
        type=float,
        default=default_of(ChipConfig, "gsd"),
        metavar="M",
        help="metres per pixel to resample to (default: native GSD of the first scene)",
    )
    parser.add_argument("--crs", default=None, metavar="EPSG", help="CRS of rasters that have none, e.g. EPSG:32636")
    parser.add_argument("--bands", default=None, metavar="R,G,B", help="1-based RGB band numbers, e.g. 1,2,3")
    parser.add_argument(
        "--point-buffer",
        type=float,
        default=None,
        metavar="M",
        help="radius in metres of the disc standing for a school given as a point",
    )
    parser.add_argument(
        "--negative-ratio",
        type=float,
        default=default_of(ChipConfig, "negative_ratio"),
        metavar="R",
        help="not_school chips kept per school chip in train (0 or less: keep all)",
    )
    parser.add_argument("--seed", type=int, default=default_of(ChipConfig, "seed"))
    parser.add_argument("--overwrite", action="store_true", help="replace an existing chips folder")


def run(args: argparse.Namespace) -> int:
    bands = None
    if args.bands:
        try:
            bands = tuple(int(b) for b in args.bands.split(","))
        except ValueError:
            raise UserError(f"--bands must be three band numbers like 1,2,3, got {args.bands!r}") from None
    extra = {} if args.point_buffer is None else {"point_buffer_m": args.point_buffer}
    config = ChipConfig(
        chip_size=args.chip_size,
        stride=args.stride,
        gsd=args.gsd,
        crs=args.crs,
        bands=bands,
        negative_ratio=args.negative_ratio if args.negative_ratio and args.negative_ratio > 0 else None,
        seed=args.seed,
        **extra,
    )
    summary = make_chips(args.imagery, args.schools, args.out, config, overwrite=args.overwrite)
    print(("up to date: " if summary.reused else "") + str(summary))
    return 0
