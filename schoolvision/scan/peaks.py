"""Grad-CAM on scan results: candidates moved to where the model saw the school, and chips explained.

The blended probability raster resolves a school to about the stride; the grad-CAM of the chip
centred on a candidate says where inside that chip the evidence for "school" is, which can be
sharper. The same chips, with their P(school) and grad-CAM, are what a mapper looks at to judge a
missed school or a false alarm (chapter 6).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.warp import transform as warp_points
from rasterio.windows import Window
from shapely.geometry import Point

from schoolvision.explain.layers import MIN_CAM_CELLS
from schoolvision.explain.maps import resize_maps
from schoolvision.explain.methods import explainer
from schoolvision.io.imagery import open_source
from schoolvision.scan.windows import pad, predict_windows, to_float


def read_chip_at(source, meta, x: float, y: float, crs, *, native_resolution: bool = False):
    """Read the chip centred on map point (x, y in ``crs``) at the run's GSD: (uint8 (3,c,c), CRS, Affine)."""
    chip = int(meta.chip_size)
    with open_source(source, gsd=None if native_resolution else meta.gsd) as ds:
        xs, ys = warp_points(crs, ds.crs, [x], [y])
        row, col = ds.index(xs[0], ys[0])
        r0 = int(np.clip(row - chip // 2, 0, max(ds.height - chip, 0)))
        c0 = int(np.clip(col - chip // 2, 0, max(ds.width - chip, 0)))
        win = Window(c0, r0, min(chip, ds.width - c0), min(chip, ds.height - r0))
        img = pad(ds.read((1, 2, 3), window=win), chip, chip)
        return img, ds.crs, ds.window_transform(Window(c0, r0, chip, chip))


def cam_maps(model: torch.nn.Module, images: np.ndarray, image_size: int, device, batch_size: int = 16) -> np.ndarray:
    """Grad-CAM of the school class for uint8 (N,3,H,W) chips, returned at (N,H,W) in [0,1].

    Uses :func:`schoolvision.explain.methods.explainer` (log-odds target, the model's own target layer).
    """
    out = []
    h, w = images.shape[-2:]
    with explainer(model, "gradcam") as explain:
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(to_float(images[i : i + batch_size])).to(device)
            if (h, w) != (image_size, image_size):
                x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                                  antialias=True)
            out.append(resize_maps(explain(x), h, w))
    return np.concatenate(out) if out else np.zeros((0, h, w), np.float32)


def cam_cells(model: torch.nn.Module, image_size: int, device) -> int:
    """Side of the model's last feature map at ``image_size``: the grid grad-CAM can localise on."""
    try:
        with torch.no_grad():
            fm = model.feature_map(torch.zeros(1, 3, image_size, image_size, device=device))
        return int(min(fm.shape[-2:]))
    except (AttributeError, RuntimeError):
        return image_size


def explain_points(model, meta, points, sources: dict, device="cpu", native_resolution: bool = False):
    """Chips centred on ``points`` (GeoDataFrame with a ``scene`` column), their P(school) and grad-CAM.

    Args:
        model: the classifier.
        meta: its ``CheckpointMeta``.
        points: places to look at (points, or polygons: their representative point), any CRS.
        sources: scene name -> :class:`~schoolvision.io.imagery.ImagerySource`.
        device: where the model runs.
        native_resolution: read at the scene's GSD, not the run's.

    Returns:
        (chips uint8 (N,3,c,c), probabilities (N,), cams (N,c,c)): what a mapper looks at to judge a
        missed school or a false alarm.
    """
    chip = int(meta.chip_size)
    if not len(points):
        return np.zeros((0, 3, chip, chip), np.uint8), np.zeros(0, np.float32), np.zeros((0, chip, chip), np.float32)
    geoms = [g if g.geom_type == "Point" else g.representative_point() for g in points.geometry]
    chips = np.stack([read_chip_at(sources[scene], meta, g.x, g.y, points.crs, native_resolution=native_resolution)[0]
                      for g, scene in zip(geoms, points["scene"])])
    device = torch.device(device) if isinstance(device, str) else device
    probs = predict_windows(model.to(device).eval(), to_float(chips), meta.image_size, meta.temperature, device)
    return chips, probs, cam_maps(model, chips, meta.image_size, device)


def place_at_cam_peaks(model, meta, cands, sources: dict, device, regions=None, native_resolution: bool = False):
    """Move each candidate point to the grad-CAM peak of the chip centred on its probability peak.

    Only when the feature map has at least ``MIN_CAM_CELLS`` cells a side (at 64 px, efficientnet's
    2 x 2 map would snap every point to a cell centre 45 m from the school). A CAM peak outside the
    candidate's region (when ``regions`` is given) or a flat CAM keeps the probability peak. The
    ``peak`` column says which one each point is.
    """
    cands = cands.copy()
    if not len(cands) or cam_cells(model, meta.image_size, device) < MIN_CAM_CELLS:
        return cands
    chips = [read_chip_at(sources[scene], meta, g.x, g.y, cands.crs, native_resolution=native_resolution)
             for g, scene in zip(cands.geometry, cands["scene"])]
    heats = cam_maps(model, np.stack([c[0] for c in chips]), meta.image_size, device)
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
