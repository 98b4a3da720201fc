"""Grad-CAM on scan results: candidates moved to where the model saw the school, and chips explained.

The blended probability raster resolves a school to about the stride; the grad-CAM of the chip
centred on a candidate says where inside that chip the evidence for "school" is, which can be
sharper. The same chips, with their P(school) and grad-CAM, are what a mapper looks at to judge a
missed school or a false alarm (chapter 6).

For the backbones whose target layer is pooled straight into a linear head (efficientnet_lite0,
resnet), Grad-CAM is the plain CAM: the maps come from the scan's own runtime (ONNX Runtime or
channels_last torch), one forward pass and no backward (:func:`cam_maps`), equal to the gradient
maps to float noise (``tests/test_cam_peaks.py``), in a fraction of the time; other backbones keep the
gradients in torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from rasterio.warp import transform as warp_points
from rasterio.windows import Window
from shapely.geometry import Point

from schoolvision import SCHOOL
from schoolvision.explain.layers import MIN_CAM_CELLS, linear_cam_weights
from schoolvision.explain.maps import cam_from_features, resize_maps
from schoolvision.explain.methods import explainer
from schoolvision.io.imagery import open_source
from schoolvision.model.runtime import Runtime, make_runtime
from schoolvision.scan.windows import pad, predict_windows, to_float, to_input


def read_chips_at(source, meta, xy: Sequence[tuple[float, float]], crs, *, native_resolution: bool = False) -> list:
    """Read the chips centred on map points ``xy`` (in ``crs``) at the run's GSD, opening ``source`` once.

    Returns:
        One (uint8 (3,c,c), CRS, Affine) per point, in order.
    """
    chip = int(meta.chip_size)
    if not len(xy):
        return []
    out = []
    with open_source(source, gsd=None if native_resolution else meta.gsd) as ds:
        xs, ys = warp_points(crs, ds.crs, [p[0] for p in xy], [p[1] for p in xy])
        for x, y in zip(xs, ys):
            row, col = ds.index(x, y)
            r0 = int(np.clip(row - chip // 2, 0, max(ds.height - chip, 0)))
            c0 = int(np.clip(col - chip // 2, 0, max(ds.width - chip, 0)))
            win = Window(c0, r0, min(chip, ds.width - c0), min(chip, ds.height - r0))
            img = ds.read((1, 2, 3), window=win)
            img[:, ds.dataset_mask(window=win) == 0] = 0  # masked pixels are nodata, as in chips and scan windows
            img = pad(img, chip, chip)
            out.append((img, ds.crs, ds.window_transform(Window(c0, r0, chip, chip))))
    return out


def chips_at(points, scenes: Sequence[str], sources: dict, meta, crs, native_resolution: bool = False) -> list:
    """:func:`read_chips_at` for points in several scenes (``scenes[i]`` holds ``points[i]``), each opened once."""
    out: list = [None] * len(points)
    by_scene: dict[str, list[int]] = {}
    for i, scene in enumerate(scenes):
        by_scene.setdefault(scene, []).append(i)
    for scene, idx in by_scene.items():
        xy = [(points[i].x, points[i].y) for i in idx]
        for i, chip in zip(idx, read_chips_at(sources[scene], meta, xy, crs, native_resolution=native_resolution)):
            out[i] = chip
    return out


def cam_maps(model: torch.nn.Module, images: np.ndarray, image_size: int, device, batch_size: int = 32,
             runtime: Runtime | None = None) -> np.ndarray:
    """Grad-CAM of the school class for uint8 (N,3,H,W) chips, returned at (N,H,W) in [0,1].

    With a ``runtime`` and a model whose Grad-CAM is the plain CAM
    (:func:`~schoolvision.explain.layers.linear_cam_weights`), the maps are the runtime's feature
    maps times the head's school weights: a forward pass only. Otherwise
    :func:`schoolvision.explain.methods.explainer` (the model's own target layer; gradients in torch,
    channels_last). Both give the same maps to float noise.
    """
    return _cams(model, images, image_size, device, batch_size, runtime)[0]


def _cams(model: torch.nn.Module, images: np.ndarray, image_size: int, device, batch_size: int = 32,
          runtime: Runtime | None = None) -> tuple[np.ndarray, int | None]:
    """:func:`cam_maps`, and the side of the feature map they localise on (None: no batch, or no ``target_layer``)."""
    h, w = images.shape[-2:]
    if not len(images):
        return np.zeros((0, h, w), np.float32), None
    weights = None if runtime is None else linear_cam_weights(getattr(model, "module", model))
    out = []
    if weights is None:
        with cam_cells(model) as cells, explainer(model, "gradcam") as explain:
            for i in range(0, len(images), batch_size):
                x = to_input(to_float(images[i : i + batch_size]), image_size, device)
                out.append(resize_maps(explain(x), h, w))
        return np.concatenate(out), min(cells) if cells else None
    school = weights[SCHOOL].cpu().numpy()
    for i in range(0, len(images), batch_size):
        x = to_input(to_float(images[i : i + batch_size]), image_size, runtime.device)
        features, _ = runtime.feature_maps(x)
        fh, fw = features.shape[-2:]
        # Grad-CAM's channel weights: the mean gradient of the school logit, W[school] / (h w) at every cell
        maps = cam_from_features(features, school / np.float32(fh * fw), image_size, image_size)
        out.append(resize_maps(maps, h, w))
    return np.concatenate(out), int(min(fh, fw))


@contextlib.contextmanager
def cam_cells(model: torch.nn.Module) -> Iterator[list[int]]:
    """A list that fills with the side of the target layer's map at each forward pass while open.

    The grid grad-CAM can localise on, seen during the CAM's own pass (no extra forward pass); stays
    empty for a model without ``target_layer``.
    """
    sides: list[int] = []
    layer = getattr(model, "target_layer", None)
    handle = None if layer is None else layer.register_forward_hook(
        lambda module, inputs, output: sides.append(int(min(output.shape[-2:]))))
    try:
        yield sides
    finally:
        if handle is not None:
            handle.remove()


def explain_points(model, meta, points, sources: dict, device="cpu", native_resolution: bool = False,
                   runtime: Runtime | None = None):
    """Chips centred on ``points`` (GeoDataFrame with a ``scene`` column), their P(school) and grad-CAM.

    Args:
        model: the classifier.
        meta: its ``CheckpointMeta``.
        points: places to look at (points, or polygons: their representative point), any CRS.
        sources: scene name -> :class:`~schoolvision.io.imagery.ImagerySource`.
        device: where the model runs.
        native_resolution: read at the scene's GSD, not the run's.
        runtime: what computes P(school) (default: float32 torch); grad-CAM always runs in torch.

    Returns:
        (chips uint8 (N,3,c,c), probabilities (N,), cams (N,c,c)): what a mapper looks at to judge a
        missed school or a false alarm.
    """
    chip = int(meta.chip_size)
    if not len(points):
        return np.zeros((0, 3, chip, chip), np.uint8), np.zeros(0, np.float32), np.zeros((0, chip, chip), np.float32)
    geoms = [g if g.geom_type == "Point" else g.representative_point() for g in points.geometry]
    chips = np.stack([c[0] for c in chips_at(geoms, list(points["scene"]), sources, meta, points.crs,
                                             native_resolution)])
    device = torch.device(device) if isinstance(device, str) else device
    runtime = runtime or make_runtime("torch", model.to(device).eval(), meta, device)
    probs = predict_windows(runtime, to_float(chips), meta.image_size)
    return chips, probs, cam_maps(model, chips, meta.image_size, device, runtime=runtime)


def place_at_cam_peaks(model, meta, cands, sources: dict, device, regions=None, native_resolution: bool = False,
                       runtime: Runtime | None = None):
    """Move each candidate point to the grad-CAM peak of the chip centred on its probability peak.

    Only when the feature map has at least ``MIN_CAM_CELLS`` cells a side (at 64 px, efficientnet's
    2 x 2 map would snap every point to a cell centre 45 m from the school). A CAM peak outside the
    candidate's region (when ``regions`` is given) or a flat CAM keeps the probability peak. The
    ``peak`` column says which one each point is. The CAMs' forward pass runs in ``runtime`` (the
    scan's; default: float32 channels_last torch) where the model allows (:func:`cam_maps`).
    """
    cands = cands.copy()
    if not len(cands):
        return cands
    chips = chips_at(list(cands.geometry), list(cands["scene"]), sources, meta, cands.crs, native_resolution)
    device = torch.device(device) if isinstance(device, str) else device
    runtime = runtime or make_runtime("torch", model.to(device).eval(), meta, device)
    heats, cells = _cams(model, np.stack([c[0] for c in chips]), meta.image_size, device, runtime=runtime)
    if cells is not None and cells < MIN_CAM_CELLS:
        return cands
    shapes = {}
    if regions is not None and len(regions) and "label" in cands.columns:
        geoms = regions.to_crs(cands.crs).geometry
        shapes = {(sc, int(lb)): g for sc, lb, g in zip(regions["scene"], regions["label"], geoms)}
    points, kinds = [], []
    labels = cands.get("label", [None] * len(cands))
    for geom, scene, label, (_, ccrs, ctf), heat in zip(cands.geometry, cands["scene"], labels, chips, heats):
        point, kind = geom, "probability"
        if np.isfinite(heat).all() and heat.max() > heat.min():
            r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
            px, py = ctf @ (c + 0.5, r + 0.5)
            xs, ys = warp_points(ccrs, cands.crs, [px], [py])
            cam_point = Point(xs[0], ys[0])
            region = shapes.get((scene, int(label))) if label is not None else None
            if region is None or region.contains(cam_point):
                point, kind = cam_point, "cam"
        points.append(point)
        kinds.append(kind)
    cands["geometry"] = points
    cands["peak"] = kinds
    return cands


def has_heat(cams: np.ndarray) -> np.ndarray:
    """Whether each (H,W) map of (N,H,W) shows something: finite and not flat (an all-zero grad-CAM says nothing)."""
    cams = np.asarray(cams, np.float64)
    if not len(cams):
        return np.zeros(0, bool)
    flat = cams.reshape(len(cams), -1)
    return np.isfinite(flat).all(1) & (np.nan_to_num(flat).max(1) > np.nan_to_num(flat).min(1))


def explain_lookalikes(model, meta, points, sources: dict, device="cpu", n: int = 6,
                       runtime: Runtime | None = None):
    """:func:`explain_points` for look-alikes, keeping the first ``n`` whose grad-CAM shows where the model looked.

    A look-alike's blended peak can come from windows centred elsewhere; when the chip centred on it
    holds no evidence for "school" its grad-CAM is all zero, a blank panel that tells a mapper nothing.
    Pass more places than ``n`` (e.g. 3n from :func:`~schoolvision.scan.evaluation.rejected_lookalikes`).

    Returns:
        (points kept, chips, probabilities, cams), in the order of ``points``.
    """
    chips, probs, cams = explain_points(model, meta, points, sources, device, runtime=runtime)
    keep = np.flatnonzero(has_heat(cams))[:n]
    return points.iloc[keep].reset_index(drop=True), chips[keep], probs[keep], cams[keep]
