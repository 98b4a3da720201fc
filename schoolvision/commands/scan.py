"""`schoolvision scan`: probability rasters, ranked candidates, evaluation and a map for whole scenes.

``--engine ray`` runs the scenes on Ray actors (this machine, or a cluster with ``--ray-address``);
``--resume`` continues an interrupted scan in the same ``--out``, skipping the scenes already done.
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
    config_from_args,
    default_of,
)
from schoolvision.errors import UserError
from schoolvision.io.folders import ScanFolder
from schoolvision.io.imagery import parse_bands, parse_scale, scenes_line
from schoolvision.io.schools import parse_lonlat_columns
from schoolvision.model.runtime import RUNTIME_CHOICES
from schoolvision.scan.engines import ENGINES
from schoolvision.scan.registry import ID_COLUMNS
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
        help="forward passes of the windows: auto (ONNX Runtime on CPU when the onnx extra is installed: int8 "
        "where the CPU runs it natively and the run's test AUPRC stays within tolerance, else float32), torch, "
        "torch-fast, onnx or onnx-int8 (calibrated on the run's validation chips, cached in RUN/onnx) "
        "(default: %(default)s)",
    )
    parser.add_argument("--schools", type=Path, default=None, metavar="FILE",
                        help="known schools to evaluate against, read before any scene is scanned: " + SCHOOLS_HELP)
    add_schools_options(parser, ScanConfig)
    parser.add_argument("--registry", type=Path, default=default_of(ScanConfig, "registry"), metavar="FILE",
                        help="a school registry to audit (read before any scene is scanned; the same formats as "
                             "--schools): registry schools confirmed or not seen, candidates in the registry or new "
                             "(registry_audit.csv, layers of candidates.gpkg, counts in scan.json)")
    parser.add_argument("--registry-id-column", default=default_of(ScanConfig, "registry_id_column"), metavar="NAME",
                        help="column of --registry holding its own school ids (default: the first of "
                             f"{', '.join(ID_COLUMNS)} it has, any case; none: row numbers, and the scan says so)")
    parser.add_argument(
        "--match-distance",
        type=float,
        default=default_of(ScanConfig, "match_distance"),
        help="metres between a candidate and a school",
    )
    parser.add_argument("--min-area", dest="min_area_m2", type=float, default=default_of(ScanConfig, "min_area_m2"),
                        metavar="M2", help="drop candidate regions smaller than this many square metres above the "
                                           "threshold: specks of the probability raster, far smaller than any "
                                           "school building (default: %(default)g; 0 keeps every region)")
    parser.add_argument("--min-separation", type=float, default=default_of(ScanConfig, "min_separation"),
                        metavar="M", help="metres between two probability peaks of one region that make them two "
                                          "candidates, each with its own point and footprint, however shallow the "
                                          "valley between them (two schools on adjacent compounds); peaks closer "
                                          "than this are one school unless a deep valley parts them (default: 3/4 "
                                          "of a chip's ground width, 96 m for 128 px at 1 m; 0: only valleys split)")
    parser.add_argument("--mask", type=Path, default=default_of(ScanConfig, "mask"), metavar="FILE",
                        help="building footprints or areas of interest (read before any scene is scanned): windows "
                             "farther than --mask-distance from every feature are neither read nor scored and stay "
                             "nodata; any OGR vector file in any CRS, GeoParquet, or a CSV table with a WKT geometry "
                             "column or WGS84 longitude/latitude columns (the form of Google's Open Buildings); "
                             "e.g. the demo's buildings.geojson")
    parser.add_argument("--mask-distance", type=float, default=default_of(ScanConfig, "mask_distance"),
                        metavar="M", help="metres between a window and the nearest --mask feature beyond which the "
                                          "window is skipped (default: half a chip at the run's GSD)")
    parser.add_argument("--mask-layer", default=default_of(ScanConfig, "mask_layer"), metavar="NAME",
                        help="layer of a --mask file with several layers (GeoPackage, KML)")
    parser.add_argument("--mask-min-area", type=float, default=default_of(ScanConfig, "mask_min_area"), metavar="M2",
                        help="leave out --mask polygons smaller than this many square metres, e.g. 150 to keep "
                             "buildings as large as a classroom block where houses stand everywhere (default: all)")
    add_imagery_options(parser, ScanConfig, from_run=True)
    add_tile_options(parser, ScanConfig)
    parser.add_argument("--native-resolution", action="store_true", help="scan at the scene's GSD, not the run's")
    parser.add_argument(
        "--no-cam", action="store_true", help="place candidates at the probability peak, not grad-CAM's"
    )
    parser.add_argument("--no-map", action="store_true", help="do not write map.html")
    parser.add_argument("--map-candidates", type=int, default=default_of(ScanConfig, "map_candidates"), metavar="N",
                        help="map.html shows the N most probable candidates and says so (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted scan in --out: scenes whose done-record matches are skipped "
                             "(refused when the run or an option changed)")
    parser.add_argument("--engine", default=default_of(ScanConfig, "engine"), choices=ENGINES,
                        help="where scenes are scanned: local (this process) or ray (Ray actors, one per GPU or per "
                             "--cpus-per-worker CPUs; pip install schoolvision[ray]) (default: %(default)s)")
    parser.add_argument("--ray-address", default=default_of(ScanConfig, "ray_address"), metavar="ADDR",
                        help="a running Ray cluster: auto or HOST:PORT (default: start a local Ray instance)")
    parser.add_argument("--cpus-per-worker", type=int, default=default_of(ScanConfig, "cpus_per_worker"),
                        metavar="N", help="CPUs (torch threads) of each Ray actor without a GPU (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    labels = {"--schools-layer": args.schools_layer, "--schools-where": args.schools_where,
              "--lonlat-columns": args.lonlat_columns}
    given = [name for name, value in labels.items() if value is not None]
    if given and args.schools is None:
        raise UserError(f"{', '.join(given)} says how to read the known schools: pass them with --schools FILE")
    given = [name for name, value in (("--mask-distance", args.mask_distance), ("--mask-layer", args.mask_layer),
                                      ("--mask-min-area", args.mask_min_area)) if value is not None]
    if given and args.mask is None:
        raise UserError(f"{', '.join(given)} says how to use a mask: pass it with --mask FILE")
    summary = run_scan(config_of(args))
    _report(args, summary)
    return 2 if summary.failed else 0


RENAMED = {"out": "out_dir"}
"""Option ``dest`` -> ``ScanConfig`` field, where they differ (``--out`` is every command's output folder)."""

NEGATED = {"no_cam": "cam_peaks", "no_map": "make_map"}
"""``--no-x`` flags -> the ``ScanConfig`` field they turn off."""

PARSED = {"lonlat_columns": parse_lonlat_columns, "bands": lambda text: parse_bands(text, keep_auto=True),
          "scale": lambda text: parse_scale(text, keep_auto=True)}
"""``ScanConfig`` fields whose option is text to parse."""


def config_of(args: argparse.Namespace) -> ScanConfig:
    """The one options object of the scan, from its arguments (same names, same defaults as the fields)."""
    return config_from_args(ScanConfig, args, renamed=RENAMED, negated=NEGATED, parsed=PARSED)


def _report(args: argparse.Namespace, summary) -> None:
    """What the scan did, in the terminal: scenes, runtime, imagery, resume, evaluation, registry, mask, failures."""
    if summary.scenes or summary.failed:
        area = sum(s.area_km2 for s in summary.scenes)
        print(
            f"scanned {len(summary.scenes)} scene(s), {area:.2f} km2; {summary.candidates} candidate(s) "
            f"at P(school) >= {summary.threshold:.3f} -> {summary.out_dir}"
        )
    detail = ScanFolder(summary.out_dir).read_summary().get("runtime_detail") if summary.scenes else None
    if detail:  # the runtime auto chose and why (int8 or float32: the one line the runtime issue asks for)
        print(f"runtime: {detail}")
    sized = [(s.scene, s.files, *s.size_m) for s in summary.scenes if any(s.size_m)]  # older records: no size
    if sized:
        print("imagery: " + scenes_line(sized))
    if summary.scene_counts.get("skipped"):
        c = summary.scene_counts
        print(f"resumed: {c['skipped']} scene(s) done before, {c['done']} scanned now, {c['failed']} failed")
    if summary.evaluation:
        e = summary.evaluation
        print(
            f"known schools {e['schools']}: recall {e['recall']:.3f}, precision {e['precision']:.3f}, "
            f"F1 {e['f1']:.3f} ({e['match_distance_m']:g} m matching); recall ceiling {e['recall_ceiling']:.3f} "
            f"(best of the sweep, at {e['recall_ceiling_threshold']:.2f})"
        )
    audit = ScanFolder(summary.out_dir).read_summary().get("registry") if args.registry is not None else None
    if audit:
        print(f"registry {audit['in_scenes']} school(s) in the scenes: {audit['confirmed']} confirmed, "
              f"{audit['not_seen']} not seen ({audit['not_seen_near_new']} with a new candidate within "
              f"{audit['displaced_search_m']:g} m); candidates: {audit['candidates_registry']} in the registry, "
              f"{audit['candidates_new']} new")
        if audit.get("id_column") is None:
            print("registry ids: the file has no id column (--registry-id-column), so row numbers stand for them")
    if args.mask is not None and summary.scenes:
        masked = sum(s.masked_windows for s in summary.scenes)
        total = masked + sum(s.windows + s.skipped_windows for s in summary.scenes)
        print(f"mask {args.mask.name}: {masked} of {total} window(s) skipped ({masked / max(total, 1):.0%}), "
              "far from every feature")
    for name, msg in summary.failed.items():
        print(f"FAILED {name}: {msg}")
