"""`schoolvision chips`: cut labelled chips from imagery and school labels."""

from __future__ import annotations

import argparse

from schoolvision.commands import (
    OVERWRITE_HELP,
    SCHOOLS_HELP,
    add_imagery_options,
    add_schools_options,
    add_tile_options,
    default_of,
    tile_arguments,
)
from schoolvision.data.chips import ChipConfig, make_chips
from schoolvision.io.folders import ChipsFolder
from schoolvision.io.imagery import parse_bands, parse_scale


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--imagery",
        nargs="+",
        required=True,
        metavar="PATH",
        help="GeoTIFF files, folders of GeoTIFFs (adjacent tiles form one mosaic), or XYZ/TMS tile folders "
        "(z-x-y.png|jpg, z/x/y.png)",
    )
    parser.add_argument("--schools", required=True, metavar="FILE", help=SCHOOLS_HELP)
    add_schools_options(parser, ChipConfig)
    parser.add_argument(
        "--negatives",
        default=default_of(make_chips, "negatives"),
        metavar="FILE",
        help="places known not to be schools, e.g. the rejected decisions of `schoolvision review import` "
        "(any file --schools accepts; polygons count by their centroid): one not_school chip centred on each, "
        "marked view=hard_negative in chips.csv; left out where it would touch a school",
    )
    parser.add_argument(
        "--negatives-where",
        default=default_of(make_chips, "negatives_where"),
        metavar="KEY=VALUE",
        help="keep only the --negatives features whose attribute KEY equals VALUE, as --schools-where; for the "
        "labels of `review import`: --schools-where label=school --negatives-where label=not_school",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output chips folder")
    parser.add_argument("--chip-size", type=int, default=default_of(ChipConfig, "chip_size"), metavar="PX")
    parser.add_argument(
        "--stride",
        type=int,
        default=default_of(ChipConfig, "stride"),
        metavar="PX",
        help="grid step (default: planned: chip size / 2, down to chip size / 8 on a small area)",
    )
    parser.add_argument(
        "--block-size",
        type=float,
        default=default_of(ChipConfig, "block_size"),
        metavar="M",
        help="side in metres of the square blocks that split one or two scenes into train, val and test (whole "
        "blocks, never single chips); default: planned, the largest size from 512 px down to two chips whose "
        "blocks give every split a school",
    )
    parser.add_argument(
        "--gsd",
        type=float,
        default=default_of(ChipConfig, "gsd"),
        metavar="M",
        help="metres per pixel to resample to (default: native GSD of the first scene)",
    )
    add_imagery_options(parser, ChipConfig)
    add_tile_options(parser, ChipConfig)
    parser.add_argument(
        "--point-buffer",
        type=float,
        default=default_of(ChipConfig, "point_buffer_m"),
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
    for split in ("val", "test"):
        parser.add_argument(
            f"--{split}-scenes",
            default=None,
            metavar="NAME,...",
            help=f"scenes (file or folder names) that form the {split} split; default with 3 or more scenes: "
            "by sorted name, last = test, the one before = val (1 or 2 scenes: split by blocks)",
        )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=OVERWRITE_HELP,
    )


def run(args: argparse.Namespace) -> int:
    bands, scale = parse_bands(args.bands), parse_scale(args.scale)
    extra = {} if args.point_buffer is None else {"point_buffer_m": args.point_buffer}
    config = ChipConfig(
        chip_size=args.chip_size,
        stride=args.stride,
        block_size=args.block_size,
        gsd=args.gsd,
        crs=args.crs,
        bands=bands,
        scale=scale,
        negative_ratio=args.negative_ratio if args.negative_ratio and args.negative_ratio > 0 else None,
        seed=args.seed,
        schools_layer=args.schools_layer,
        schools_where=args.schools_where,
        lonlat_columns=args.lonlat_columns,
        val_scenes=_names(args.val_scenes),
        test_scenes=_names(args.test_scenes),
        **tile_arguments(args),
        **extra,
    )
    summary = make_chips(args.imagery, args.schools, args.out, config, overwrite=args.overwrite,
                         negatives=args.negatives, negatives_where=args.negatives_where)
    print(("up to date: " if summary.reused else "") + str(summary))
    hard = ChipsFolder(args.out).read_meta().get("negatives") if args.negatives else None
    if hard:
        print(f"  hard negatives: {hard['chips']} chips from {hard['places']} places in {args.negatives}")
    return 0


def _names(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(n.strip() for n in value.split(",") if n.strip())
