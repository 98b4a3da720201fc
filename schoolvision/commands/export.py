"""`schoolvision export`: the run's classifier as ONNX, and two models for QGIS's Deepness plugin.

Beside ``model.onnx``: ``model_deepness.onnx``, a Regressor whose layer holds each tile's P(school) in
percent (0-100), ``model_deepness.qml``, the QGIS style of that layer classed at the run's threshold,
and ``model_deepness_segmentor.onnx``, a Segmentor that draws the pixels with P(school) above the
threshold as school polygons. Tile size, overlap, resolution, standardisation, output
scaling and threshold are read from each file's metadata by the plugin's "Load default parameters".
"""

from __future__ import annotations

import argparse
from pathlib import Path

from schoolvision.commands import default_of
from schoolvision.errors import UserError, check_range
from schoolvision.io.folders import RunFolder, check_inputs, sha256
from schoolvision.model import export as onnx
from schoolvision.model.checkpoint import load_classifier


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="run folder (best.pt) or checkpoint file")
    parser.add_argument("--out", required=True, type=Path, help="classifier .onnx file to write")
    parser.add_argument(
        "--deepness",
        type=Path,
        default=None,
        help="Deepness (QGIS) Regressor file to write (default: <out>_deepness.onnx beside --out); its .qml "
        "style and the Segmentor <name>_segmentor.onnx are written beside it",
    )
    parser.add_argument("--image-size", type=int, default=None, help="input side in pixels (default: the run's)")
    overlap = default_of(onnx.export_deepness, "overlap")
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


def deepness_files(deepness: Path) -> dict[str, Path]:
    """The Deepness Regressor, its QGIS style and the Segmentor: ``X.onnx``, ``X.qml``, ``X_segmentor.onnx``."""
    return {"--deepness": deepness, "style": deepness.with_suffix(".qml"),
            "segmentor": deepness.with_name(f"{deepness.stem}_segmentor.onnx")}


def run(args: argparse.Namespace) -> int:
    onnx.require_onnx()
    out, deepness = args.out, args.deepness or deepness_path(args.out)
    if out.suffix != ".onnx" or deepness.suffix != ".onnx":
        raise UserError("output files must end in .onnx", out if out.suffix != ".onnx" else deepness)
    files = {"--out": out, **deepness_files(deepness)}
    if len({path.resolve() for path in files.values()}) < len(files):
        raise UserError("--out and --deepness name the same file", out)
    for option, path in files.items():
        if path.is_dir():
            raise UserError(f"is a folder; {option} names the file to write", path)
        check_inputs(path, {"--run": args.run}, option)
    check_range("--image-size", args.image_size, minimum=32)
    if not args.overwrite:
        for path in files.values():
            if path.exists():
                raise UserError("exists; pass --overwrite to replace it", path)
    if not 0 <= args.tiles_overlap < 100:
        raise UserError(f"--tiles-overlap must be a percentage in [0, 100), got {args.tiles_overlap}")
    checkpoint = RunFolder.checkpoint(args.run)
    model, meta = load_classifier(checkpoint)
    size = int(args.image_size or meta.image_size)
    sha = sha256(checkpoint)
    onnx.export_onnx(model, meta, out, size, sha256=sha)
    onnx.export_deepness(model, meta, deepness, size, sha256=sha, overlap=args.tiles_overlap)
    onnx.write_deepness_style(meta, files["style"])
    onnx.export_deepness(model, meta, files["segmentor"], size, sha256=sha, overlap=args.tiles_overlap,
                    model_type="Segmentor")
    resolution = onnx.deepness_resolution(meta, size)
    where = f"{resolution:g} cm/pixel" if resolution is not None else "a resolution to set in Deepness (no GSD)"
    t = meta.threshold
    print(
        f"wrote {out} (classifier, {meta.backbone}, input {size} px, threshold {t:.3f}, "
        f"temperature {meta.temperature:.3f})"
    )
    print(
        f"wrote {deepness} (Deepness Regressor: P(school) in percent, school from {onnx.threshold_percent(t)}; "
        f"tiles {size} px at {where}, {args.tiles_overlap}% overlap) and its style {files['style'].name}"
    )
    print(f"wrote {files['segmentor']} (Deepness Segmentor: school where P(school) > {t:.3f})")
    return 0
