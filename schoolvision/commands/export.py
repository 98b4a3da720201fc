"""`schoolvision export`: the run's classifier as ONNX, and a per-tile P(school) map for QGIS's Deepness plugin.

In QGIS with the Deepness plugin: open its panel, choose model type Regressor and the
``*_deepness.onnx`` file; tile size, overlap, resolution and standardisation are read from its
metadata. The map it writes holds each tile's P(school) (the classifier's calibrated probability).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from schoolvision.commands import default_of
from schoolvision.errors import UserError, check_range
from schoolvision.io.folders import RunFolder, check_inputs, sha256
from schoolvision.model.checkpoint import load_classifier
from schoolvision.model.export import export_deepness, export_onnx, input_gsd_cm, require_onnx


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="run folder (best.pt) or checkpoint file")
    parser.add_argument("--out", required=True, type=Path, help="classifier .onnx file to write")
    parser.add_argument(
        "--deepness",
        type=Path,
        default=None,
        help="Deepness (QGIS) model file to write (default: <out>_deepness.onnx beside --out)",
    )
    parser.add_argument("--image-size", type=int, default=None, help="input side in pixels (default: the run's)")
    overlap = default_of(export_deepness, "overlap")
    parser.add_argument(
        "--tiles-overlap",
        type=int,
        default=overlap,
        help=f"Deepness tile overlap in percent (default {overlap}: half a tile, like scan)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def deepness_path(out: Path) -> Path:
    """``model.onnx`` -> ``model_deepness.onnx``."""
    return out.with_name(f"{out.stem}_deepness.onnx")


def run(args: argparse.Namespace) -> int:
    require_onnx()
    out, deepness = args.out, args.deepness or deepness_path(args.out)
    if out.suffix != ".onnx" or deepness.suffix != ".onnx":
        raise UserError("output files must end in .onnx", out if out.suffix != ".onnx" else deepness)
    if out.resolve() == deepness.resolve():
        raise UserError("--out and --deepness name the same file", out)
    for option, path in (("--out", out), ("--deepness", deepness)):
        if path.is_dir():
            raise UserError(f"is a folder; {option} names the .onnx file to write", path)
        check_inputs(path, {"--run": args.run}, option)
    check_range("--image-size", args.image_size, minimum=32)
    if not args.overwrite:
        for path in (out, deepness):
            if path.exists():
                raise UserError("exists; pass --overwrite to replace it", path)
    if not 0 <= args.tiles_overlap < 100:
        raise UserError(f"--tiles-overlap must be a percentage in [0, 100), got {args.tiles_overlap}")
    checkpoint = RunFolder.checkpoint(args.run)
    model, meta = load_classifier(checkpoint)
    size = int(args.image_size or meta.image_size)
    sha = sha256(checkpoint)
    export_onnx(model, meta, out, size, sha256=sha)
    export_deepness(model, meta, deepness, size, sha256=sha, overlap=args.tiles_overlap)
    resolution = input_gsd_cm(meta, size)
    where = f"{resolution:g} cm/pixel" if resolution is not None else "a resolution to set in Deepness (no GSD)"
    print(
        f"wrote {out} (classifier, {meta.backbone}, input {size} px, threshold {meta.threshold:.3f}, "
        f"temperature {meta.temperature:.3f})"
    )
    print(
        f"wrote {deepness} (Deepness Regressor: P(school) map, tiles {size} px at {where}, "
        f"{args.tiles_overlap}% overlap)"
    )
    return 0
