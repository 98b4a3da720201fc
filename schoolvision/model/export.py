"""ONNX export of a trained classifier: the graph, its metadata, and the per-checkpoint cache.

What comes out of one checkpoint:

* the **classifier** (:func:`export_onnx`): input ``image`` float32 (N, 3, S, S), RGB in [0, 1]
  (normalisation is inside the graph, as in the torch model); outputs ``logits`` (N, classes) and
  ``embedding`` (N, feature_dim). P(school) = softmax(logits / temperature)[:, school_index].
  The copy cached for the ``onnx`` runtime (:func:`cached_onnx`) has a third output,
  ``feature_map`` (N, feature_dim, h, w), the trunk's map before pooling: with the head's weights it
  gives the class activation map of the scan's CAM peaks without a backward pass.
* the **Deepness models**, for the QGIS plugin Deepness: a ``Regressor`` (:func:`export_deepness`)
  whose single output ``p_school`` (N, 1, S, S) is the tile's calibrated P(school), spread over the
  tile, and a ``Segmentor`` (``model_type="Segmentor"``) whose output ``school_classes``
  (N, 2, S, S) holds the channels ``not_school`` and ``school`` (see :class:`_SchoolClasses`). The
  plugin crops tiles of ``tiles_size`` pixels at ``resolution`` cm/pixel, divides by 255,
  standardises with mean 0 / std 1 (so the graph sees [0, 1] like the classifier) and steps tiles
  with ``tiles_overlap`` percent overlap: 50 by default, the half-chip stride ``schoolvision scan``
  uses. It stitches the tiles' centres into a ``uint8`` array, so the Regressor's P(school) is
  written in percent (``reg_output_scaling`` 100): whole percents survive where fractions of 1 would
  all become 0. :func:`deepness_style` is the QGIS style of that layer, classed at the run's threshold.

Every metadata value is JSON text (``json.loads`` reads each back), the convention Deepness uses.
The tile is the model's input grid, ``image_size`` pixels at ``gsd * chip_size / image_size``: the
anti-aliased resize that scan applies to a ``chip_size`` window does not export to ONNX, so QGIS
resamples the raster to that resolution instead.

``onnx`` and ``onnxruntime`` are an optional extra (``pip install schoolvision[onnx]``), imported
only here and in :mod:`schoolvision.model.runtime`, when an ONNX graph is wanted.
"""

from __future__ import annotations

import io
import json
import math
import re
import warnings
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import torch
from torch import nn

from schoolvision import SCHOOL, __version__
from schoolvision.errors import UserError
from schoolvision.io.atomic import write_bytes, write_text
from schoolvision.io.folders import RunFolder
from schoolvision.io.folders import sha256 as file_sha256
from schoolvision.model.backbones import BACKBONES
from schoolvision.model.checkpoint import CheckpointMeta

FORMAT = "schoolvision-onnx/1"
OPSET = 17  # the TorchScript exporter's well-trodden opset; ONNX Runtime >= 1.14 runs it
INPUT = "image"
OUTPUTS = ("logits", "embedding")
FEATURE_MAP = "feature_map"  # third output of the runtime's cached graph (CAMs from a forward pass)
DEEPNESS_OUTPUT = "p_school"
DEEPNESS_CLASSES_OUTPUT = "school_classes"
DEEPNESS_OVERLAP = 50  # percent: a half-tile stride, like scan's default stride of half a chip
DEEPNESS_SCALING = 100.0  # Regressor output x this = P(school) in percent, what the plugin's uint8 stitching keeps
DEEPNESS_TYPES = ("Regressor", "Segmentor")  # the plugin's model types this export writes
DEEPNESS_DECIMALS = 2  # the plugin's resolution (cm/px) and probability-threshold fields keep two decimals
EXTRA_HINT = "pip install 'schoolvision[onnx]'"


def require_onnx() -> tuple[Any, Any]:
    """Import ``onnx`` and ``onnxruntime``, or fail with one line naming the extra.

    Returns:
        The ``(onnx, onnxruntime)`` modules.

    Raises:
        UserError: when either package is not installed.
    """
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise UserError(f"the ONNX runtime needs the packages onnx and onnxruntime ({EXTRA_HINT})") from exc
    return onnx, onnxruntime


class _ClassifierOutputs(nn.Module):
    """logits and embedding (and the feature map they pool) from one pass."""

    def __init__(self, model: nn.Module, feature_map: bool = False):
        super().__init__()
        self.model = model
        self.with_feature_map = feature_map

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        fmap = self.model.feature_map(x)
        emb = self.model.pool(fmap)
        return (self.model.head(emb), emb, fmap) if self.with_feature_map else (self.model.head(emb), emb)


class _SchoolMap(nn.Module):
    """Calibrated P(school) of each tile, as a (N, 1, H, W) map for Deepness's Regressor."""

    def __init__(self, model: nn.Module, temperature: float, tile: int):
        super().__init__()
        self.model = model
        self.temperature = float(temperature)
        # a constant (1, 1, tile, tile) factor keeps H and W static in the graph: Deepness checks H == W
        self.register_buffer("ones", torch.ones(1, 1, tile, tile), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(self.model(x) / self.temperature, dim=1)[:, SCHOOL : SCHOOL + 1]
        return p[:, :, None, None] * self.ones


class _SchoolClasses(_SchoolMap):
    """Channels ``not_school`` and ``school`` of each tile, (N, 2, H, W), for Deepness's Segmentor.

    ``school`` is P; ``not_school`` is (1 - P) * t / (1 - t) with the run's threshold t, so the
    plugin's argmax picks school exactly where P > t (P = t ties to not_school), whatever t is. With
    the plain pair (1 - P, P) the argmax would draw P > 0.5 instead. The plugin's threshold field then
    only zeroes channels below it; in P units, on the school channel.
    """

    def __init__(self, model: nn.Module, temperature: float, tile: int, threshold: float):
        super().__init__(model, temperature, tile)
        t = min(max(float(threshold), 0.0), 1.0 - 1e-6)
        self.odds = t / (1.0 - t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = super().forward(x)
        return torch.cat([(1.0 - p) * self.odds, p], dim=1)


def input_gsd_cm(meta: CheckpointMeta, image_size: int) -> float | None:
    """Centimetres per pixel of the model input: the chips' GSD stretched by the resize to ``image_size``."""
    return None if meta.gsd is None else round(float(meta.gsd) * meta.chip_size / image_size * 100.0, 6)


def classifier_metadata(meta: CheckpointMeta, image_size: int, sha256: str | None = None,
                        feature_map: bool = False) -> dict[str, Any]:
    """What a user of the classifier graph needs, as plain values (written as JSON text).

    ``feature_map``: the graph also outputs the trunk's feature map (the runtime's cached copy).
    """
    info = BACKBONES[meta.backbone]
    extra = {"feature_map_output": True} if feature_map else {}
    return {
        "schoolvision_format": FORMAT,
        "schoolvision_version": __version__,
        "backbone": meta.backbone,
        "classes": list(meta.classes),
        "school_index": SCHOOL,
        "input": f"{INPUT}: float32 (N, 3, {image_size}, {image_size}), RGB in [0, 1]; the graph normalises",
        "outputs": "logits (N, classes), embedding (N, features)"
                   + (", feature_map (N, features, h, w)" if feature_map else "")
                   + "; P(school) = softmax(logits / temperature)[:, school_index]",
        "image_size": int(image_size),
        "chip_size": int(meta.chip_size),
        "gsd_cm": None if meta.gsd is None else round(float(meta.gsd) * 100.0, 6),
        "input_gsd_cm": input_gsd_cm(meta, image_size),
        "normalisation_mean": list(info.mean),
        "normalisation_std": list(info.std),
        "threshold": float(meta.threshold),
        "temperature": float(meta.temperature),
        "checkpoint_sha256": sha256,
        **extra,
    }


def deepness_resolution(meta: CheckpointMeta, image_size: int) -> float | None:
    """cm/pixel as the plugin's two-decimal resolution field holds it (the input GSD, rounded)."""
    exact = input_gsd_cm(meta, image_size)
    return None if exact is None else round(exact, DEEPNESS_DECIMALS)


def threshold_percent(threshold: float) -> int:
    """The smallest whole percent at or above ``threshold``: the Regressor layer's first school value.

    The layer holds P(school) in percent truncated to whole numbers, so ``layer >= k`` means
    P >= k / 100; P in [threshold, k / 100) reads one class lower (under one percentage point).
    """
    return math.ceil(round(float(threshold) * DEEPNESS_SCALING, 6))


def _resolution_note(meta: CheckpointMeta, image_size: int) -> str:
    exact, kept = input_gsd_cm(meta, image_size), deepness_resolution(meta, image_size)
    if exact is None:
        return "no GSD recorded: set the resolution (cm/px) of the chips' imagery by hand"
    if exact == kept:
        return f"tiles of {image_size} px at {kept:g} cm/px"
    return (f"tiles of {image_size} px at {kept:g} cm/px (the model's input grid is {exact:g} cm/px; the "
            f"plugin keeps two decimals, a scale difference of {abs(kept / exact - 1) * 100:.4f} %)")


def deepness_description(meta: CheckpointMeta, image_size: int, model_type: str = "Regressor") -> str:
    """What the plugin's layer holds and which value is the run's threshold, in plain words."""
    t = float(meta.threshold)
    where = _resolution_note(meta, image_size)
    if model_type == "Regressor":
        k = threshold_percent(t)
        return (f"schoolvision P(school) map for Deepness (Regressor): the layer holds each tile's P(school) in "
                f"percent, 0-100 (reg_output_scaling {DEEPNESS_SCALING:g}; Deepness stitches whole numbers). The "
                f"run's threshold {t:.4g} is {t * DEEPNESS_SCALING:.4g} %: school where the layer is >= {k} (the "
                f".qml style beside this file). {where}.")
    return (f"schoolvision school mask for Deepness (Segmentor): channel school is the tile's P(school), channel "
            f"not_school is (1 - P) * t / (1 - t) with the run's threshold t = {t:.4g}, so the larger channel is "
            f"school exactly where P(school) > t; seg_thresh {_seg_thresh(t):g} is t rounded down to the plugin's "
            f"two decimals and only zeroes P below it. {where}.")


def _seg_thresh(threshold: float) -> float:
    """The threshold rounded down to two decimals: the plugin's field rounds, and must never cut above t."""
    scale = 10**DEEPNESS_DECIMALS
    return math.floor(round(float(threshold) * scale, 6)) / scale


def deepness_metadata(meta: CheckpointMeta, image_size: int, sha256: str | None = None,
                      overlap: int = DEEPNESS_OVERLAP, model_type: str = "Regressor") -> dict[str, Any]:
    """The keys QGIS's Deepness plugin reads, plus the classifier's (Deepness ignores unknown keys).

    ``model_type`` is one of :data:`DEEPNESS_TYPES`. ``tile_size`` is written beside the documented
    ``tiles_size``: the plugin's code reads the former. ``resolution`` is the input GSD rounded to the
    plugin's two decimals (``input_gsd_cm`` keeps it exact); ``description`` says what the layer holds.
    """
    if model_type not in DEEPNESS_TYPES:
        raise ValueError(f"model_type must be one of {DEEPNESS_TYPES}, got {model_type!r}")
    out = classifier_metadata(meta, image_size, sha256)
    size = int(image_size)
    out.update({
        "model_type": model_type,
        "description": deepness_description(meta, size, model_type),
        "tiles_size": size,
        "tile_size": size,
        "tiles_overlap": int(overlap),
        "standardization_mean": [0.0, 0.0, 0.0],  # Deepness gives [0, 1]; the graph normalises itself
        "standardization_std": [1.0, 1.0, 1.0],
    })
    if model_type == "Regressor":
        out.update({
            "outputs": f"{DEEPNESS_OUTPUT} (N, 1, {size}, {size}): the tile's P(school) on every pixel",
            "class_names": {0: "school"},
            "reg_output_scaling": DEEPNESS_SCALING,
            "threshold_percent": threshold_percent(meta.threshold),
        })
    else:
        out.update({
            "outputs": f"{DEEPNESS_CLASSES_OUTPUT} (N, 2, {size}, {size}): not_school, school on every pixel",
            "class_names": {0: "not_school", 1: "school"},
            "seg_thresh": _seg_thresh(meta.threshold),
            "seg_small_segment": 0,  # no median filter: the mask is the tiles' own, as in the scan
        })
    resolution = deepness_resolution(meta, size)
    if resolution is not None:
        out["resolution"] = resolution
    return out


_STYLE = """<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.0" styleCategories="Symbology">
  <pipe>
    <rasterrenderer type="singlebandpseudocolor" band="1" opacity="0.6" alphaBand="-1"
                    classificationMin="0" classificationMax="100" nodataColor="">
      <rasterTransparency/>
      <rastershader>
        <colorrampshader colorRampType="DISCRETE" classificationMode="1" clip="0"
                         minimumValue="0" maximumValue="100" labelPrecision="0">
          <item value="{k_break}" color="#ffffff" alpha="0" label="{below}"/>
          <item value="inf" color="#e31a1c" alpha="255" label="{above}"/>
        </colorrampshader>
      </rastershader>
    </rasterrenderer>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""
"""QGIS raster style of the Regressor layer: two discrete classes split at ``k_break`` percent."""


def deepness_style(meta: CheckpointMeta) -> str:
    """A QGIS style (``.qml``) for the Regressor layer: transparent below the run's threshold, red at and above.

    The layer holds whole percents, so the class break sits half a percent below
    :func:`threshold_percent`, where no value falls.
    """
    k = threshold_percent(meta.threshold)
    t = float(meta.threshold)
    below = escape(f"P(school) < {k} %: below the run's threshold {t:.4g}")
    above = escape(f"P(school) >= {k} %: school (run threshold {t:.4g})")
    return _STYLE.format(k_break=f"{k - 0.5:g}", below=below, above=above)


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _export_bytes(module: nn.Module, image_size: int, output_names: tuple[str, ...]) -> bytes:
    """Trace ``module`` in eval mode to ONNX with a dynamic batch axis."""
    module = module.eval()
    # a private generator: exporting must not move torch's global RNG (ROAD's imputer noise draws from it)
    x = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(_device(module))
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter announces its deprecation on every call
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (x,), buf, dynamo=False, opset_version=OPSET, input_names=[INPUT], output_names=list(output_names),
            dynamic_axes={INPUT: {0: "batch"}, **{name: {0: "batch"} for name in output_names}},
        )
    return buf.getvalue()


def with_metadata(graph: bytes, metadata: dict[str, Any]) -> bytes:
    """``graph`` with ``metadata`` as JSON text values (what runtimes and QGIS read) and a doc string."""
    onnx, _ = require_onnx()
    proto = onnx.load_from_string(graph)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        if value is not None:
            proto.metadata_props.add(key=key, value=json.dumps(value))
    proto.doc_string = metadata.get("description") or f"schoolvision {metadata.get('backbone', '')} school classifier"
    return proto.SerializeToString()


def onnx_bytes(model: nn.Module, meta: CheckpointMeta, image_size: int | None = None, *,
               sha256: str | None = None, feature_map: bool = False) -> bytes:
    """The serialised ONNX classifier with its metadata (no file written; see :func:`export_onnx`).

    ``feature_map`` adds the classifier's third output :data:`FEATURE_MAP` (the runtime's graph).
    """
    require_onnx()
    size = int(image_size or meta.image_size)
    model = getattr(model, "module", model)
    was_training = model.training
    try:
        outputs = (*OUTPUTS, FEATURE_MAP) if feature_map else OUTPUTS
        graph = _export_bytes(_ClassifierOutputs(model, feature_map), size, outputs)
    finally:
        model.train(was_training)
    return with_metadata(graph, classifier_metadata(meta, size, sha256, feature_map))


def deepness_bytes(model: nn.Module, meta: CheckpointMeta, image_size: int | None = None, *,
                   sha256: str | None = None, overlap: int = DEEPNESS_OVERLAP, model_type: str = "Regressor") -> bytes:
    """The serialised Deepness ``Regressor`` or ``Segmentor`` with the plugin's metadata (no file written)."""
    require_onnx()
    size = int(image_size or meta.image_size)
    model = getattr(model, "module", model)
    metadata = deepness_metadata(meta, size, sha256, overlap, model_type)  # checks model_type first
    was_training = model.training
    try:
        if model_type == "Regressor":
            head, output = _SchoolMap(model, meta.temperature, size), DEEPNESS_OUTPUT
        else:
            head, output = _SchoolClasses(model, meta.temperature, size, meta.threshold), DEEPNESS_CLASSES_OUTPUT
        graph = _export_bytes(head.to(_device(model)), size, (output,))
    finally:
        model.train(was_training)
    return with_metadata(graph, metadata)


def export_onnx(model: nn.Module, meta: CheckpointMeta, path: str | Path, image_size: int | None = None, *,
                sha256: str | None = None) -> Path:
    """Write the classifier graph with its metadata to ``path``, atomically.

    Args:
        model: the classifier (any device; it is traced in eval mode and left in its mode).
        meta: the checkpoint's meta (classes, GSD, threshold, temperature go into the metadata).
        path: the ``.onnx`` file to write.
        image_size: input side in pixels (default ``meta.image_size``); the batch axis is dynamic.
        sha256: the checkpoint's SHA-256, recorded so that a cached file can be checked against it.

    Returns:
        ``path``.

    Raises:
        UserError: when onnx / onnxruntime are not installed.
    """
    return write_bytes(path, onnx_bytes(model, meta, image_size, sha256=sha256))


def export_deepness(model: nn.Module, meta: CheckpointMeta, path: str | Path, image_size: int | None = None, *,
                    sha256: str | None = None, overlap: int = DEEPNESS_OVERLAP, model_type: str = "Regressor") -> Path:
    """Write a Deepness model with the plugin's metadata, atomically.

    Args:
        model: the classifier.
        meta: the checkpoint's meta; its temperature (and, for the Segmentor, threshold) is built into the graph.
        path: the ``.onnx`` file to write.
        image_size: tile side in pixels (default ``meta.image_size``).
        sha256: the checkpoint's SHA-256, recorded in the metadata.
        overlap: ``tiles_overlap`` in percent.
        model_type: ``Regressor`` (per-tile P(school) map, in percent in QGIS) or ``Segmentor``
            (per-pixel ``not_school`` / ``school`` classes, school where P(school) > the run's threshold).

    Returns:
        ``path``.

    Raises:
        UserError: when onnx / onnxruntime are not installed.
    """
    data = deepness_bytes(model, meta, image_size, sha256=sha256, overlap=overlap, model_type=model_type)
    return write_bytes(path, data)


def write_deepness_style(meta: CheckpointMeta, path: str | Path) -> Path:
    """Write :func:`deepness_style` to ``path`` (a ``.qml`` file), atomically."""
    return write_text(path, deepness_style(meta))


def read_metadata(source: str | Path | bytes) -> dict[str, Any]:
    """An ONNX file's metadata_props, each value decoded from JSON."""
    onnx, _ = require_onnx()
    if isinstance(source, bytes):
        proto = onnx.load_from_string(source)
    else:
        proto = onnx.load(str(source), load_external_data=False)
    return {p.key: json.loads(p.value) for p in proto.metadata_props}


def cache_path(checkpoint: str | Path, sha256: str, image_size: int) -> Path:
    """``RUN/onnx/<checkpoint stem>-<sha12>-<size>.onnx``: beside the checkpoint, keyed by its bytes and input size."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent / "onnx" / f"{checkpoint.stem}-{sha256[:12]}-{int(image_size)}.onnx"


def cached_record(path: Path, sha: str, size: int) -> dict:
    """The metadata of a cached graph made from these weights (``sha``) at this size; ``{}`` when there is none.

    A missing, truncated, foreign or stale file gives ``{}``: the caller simply makes it again.
    """
    if not path.is_file():
        return {}
    try:
        recorded = read_metadata(path)
    except Exception:  # noqa: BLE001 - a truncated or foreign file is simply made again
        return {}
    return recorded if recorded.get("checkpoint_sha256") == sha and recorded.get("image_size") == size else {}


def cached_onnx(model: nn.Module, meta: CheckpointMeta, checkpoint: str | Path, image_size: int | None = None) -> Path:
    """The classifier graph of ``checkpoint`` at ``image_size``: exported once, reused while the weights stay the same.

    The cached graph also outputs :data:`FEATURE_MAP`. A cached file is used only when its recorded
    ``checkpoint_sha256`` and ``image_size`` equal the checkpoint's and it has that output; otherwise
    (another run's file, a retrained ``best.pt``, a damaged file, an older export) it is
    re-exported. Files of the same checkpoint name with another checksum (any size) are deleted.

    Args:
        model: the classifier loaded from ``checkpoint``.
        meta: its meta.
        checkpoint: the checkpoint file or run folder the model came from.
        image_size: input side (default ``meta.image_size``).

    Returns:
        The path of the up-to-date ONNX file.
    """
    checkpoint = RunFolder.checkpoint(checkpoint)
    size = int(image_size or meta.image_size)
    sha = file_sha256(checkpoint)
    path = cache_path(checkpoint, sha, size)
    if cached_record(path, sha, size).get("feature_map_output") is True:
        return path
    write_bytes(path, onnx_bytes(model, meta, size, sha256=sha, feature_map=True))
    other_weights = re.compile(rf"{re.escape(checkpoint.stem)}-(?!{sha[:12]})[0-9a-f]{{12}}-\d+\.onnx")
    for stale in path.parent.iterdir():
        if other_weights.fullmatch(stale.name):
            stale.unlink(missing_ok=True)
    return path
