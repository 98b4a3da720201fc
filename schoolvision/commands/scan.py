"""`schoolvision scan`: probability rasters, ranked candidates, evaluation and a map for whole scenes.

Under ``torchrun --nproc-per-node N -m schoolvision -- scan ...`` scenes are split across ranks.
Exit code 2 when any scene failed (after the others were scanned and written) or on a user error.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from schoolvision.commands import (
    OVERWRITE_HELP,
    SCHOOLS_HELP,
    add_imagery_options,
    add_schools_options,
    add_tile_options,
    default_of,
    tile_arguments,
)
from schoolvision.errors import UserError
from schoolvision.io.imagery import parse_bands, parse_scale
from schoolvision.io.schools import parse_lonlat_columns
from schoolvision.model.runtime import RUNTIME_CHOICES
from schoolvision.scan.runner import ScanConfig, run_scan


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="run folder (best.pt) or checkpoint file")
    parser.add_argument(
        "--imagery",
        required=True,
        nargs="+",
        type=Path,
        help="GeoTIFF files, folders of them (adjacent tiles form one mosaic), or XYZ/TMS tile folders "
        "(one mosaic each)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--stride",
        type=int,
        default=default_of(ScanConfig, "stride"),
        help="window stride in pixels (default: half a chip)",
    )
    parser.add_argument("--batch-size", type=int, default=default_of(ScanConfig, "batch_size"))
    parser.add_argument(
        "--threshold",
        type=float,
        default=default_of(ScanConfig, "threshold"),
        help="P(school) threshold (default: the run's tuned one)",
    )
    parser.add_argument("--device", default=default_of(ScanConfig, "device"), help="auto, cpu or cuda")
    parser.add_argument(
        "--runtime", default=default_of(ScanConfig, "runtime"), choices=RUNTIME_CHOICES,
        help="forward passes of the windows: auto (ONNX Runtime on CPU when the onnx extra is installed), torch, "
        "torch-fast or onnx; grad-CAM peaks always run in torch (default: %(default)s)",
    )
    parser.add_argument("--schools", type=Path, default=None, metavar="FILE",
                        help="known schools to evaluate against, read before any scene is scanned: " + SCHOOLS_HELP)
    add_schools_options(parser, ScanConfig)
    parser.add_argument(
        "--match-distance",
        type=float,
        default=default_of(ScanConfig, "match_distance"),
        help="metres between a candidate and a school",
    )
    add_imagery_options(parser, ScanConfig, from_run=True)
    add_tile_options(parser, ScanConfig)
    parser.add_argument("--native-resolution", action="store_true", help="scan at the scene's GSD, not the run's")
    parser.add_argument(
        "--no-cam", action="store_true", help="place candidates at the probability peak, not grad-CAM's"
    )
    parser.add_argument("--no-map", action="store_true", help="do not write map.html")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def run(args: argparse.Namespace) -> int:
    labels = {"--schools-layer": args.schools_layer, "--schools-where": args.schools_where,
              "--lonlat-columns": args.lonlat_columns}
    given = [name for name, value in labels.items() if value is not None]
    if given and args.schools is None:
        raise UserError(f"{', '.join(given)} says how to read the known schools: pass them with --schools FILE")
    summary = run_scan(
        ScanConfig(
            run=args.run,
            imagery=list(args.imagery),
            out_dir=args.out,
            stride=args.stride,
            batch_size=args.batch_size,
            threshold=args.threshold,
            device=args.device,
            runtime=args.runtime,
            schools=args.schools,
            schools_layer=args.schools_layer,
            schools_where=args.schools_where,
            lonlat_columns=parse_lonlat_columns(args.lonlat_columns),
            match_distance=args.match_distance,
            bands=parse_bands(args.bands, keep_auto=True),
            crs=args.crs,
            scale=parse_scale(args.scale, keep_auto=True),
            native_resolution=args.native_resolution,
            overwrite=args.overwrite,
            cam_peaks=not args.no_cam,
            **tile_arguments(args),
            make_map=not args.no_map,
        )
    )
    if summary.rank != 0:  # rank 0 prints the merged summary
        return 2 if summary.failed else 0
    if summary.scenes or summary.failed:
        area = sum(s.area_km2 for s in summary.scenes)
        print(
            f"scanned {len(summary.scenes)} scene(s), {area:.2f} km2; {summary.candidates} candidate(s) "
            f"at P(school) >= {summary.threshold:.3f} -> {summary.out_dir}"
        )
    if summary.evaluation:
        e = summary.evaluation
        print(
            f"known schools {e['schools']}: recall {e['recall']:.3f}, precision {e['precision']:.3f}, "
            f"F1 {e['f1']:.3f} ({e['match_distance_m']:g} m matching)"
        )
    for name, msg in summary.failed.items():
        print(f"FAILED {name}: {msg}")
    return 2 if summary.failed else 0
