"""The trust map of a scan: its novelty raster read back, at candidates and as a map overlay.

The raster is written beside the probability raster by :class:`~schoolvision.scan.scene.SceneScanner`
(the run's summary: :mod:`schoolvision.train.novelty`): float32 on the same grid, the percentile of
the held-out home chips a window's embedding exceeds (blended over its pixels as P(school) is),
nodata where nothing was scanned.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps

from schoolvision.io.folders import open_probability
from schoolvision.scan.probability import NODATA
from schoolvision.train.novelty import FLAG_PERCENTILE

SHOWN_FROM = 90.0
"""Percentiles below this are transparent on the map: only the unusual parts of a scene are painted."""


def sample_novelty(path: str | Path, points) -> np.ndarray:
    """Novelty percentile (N,) float64 of the novelty raster at each point of a GeoDataFrame; NaN on nodata."""
    if len(points) == 0:
        return np.zeros(0)
    with open_probability(path) as src:
        pts = points if points.crs == src.crs else points.to_crs(src.crs)
        values = np.array([v[0] for v in src.sample(zip(pts.geometry.x, pts.geometry.y), indexes=1)], np.float64)
    values[values == NODATA] = np.nan
    return values


def novelty_rgba(percentile: np.ndarray, mask: np.ndarray, cmap: str = "Reds") -> np.ndarray:
    """RGBA uint8 overlay: transparent below :data:`SHOWN_FROM`, opaque red above the flag percentile."""
    p = np.nan_to_num(np.asarray(percentile, np.float64), nan=0.0)
    level = np.clip((p - SHOWN_FROM) / (FLAG_PERCENTILE - SHOWN_FROM), 0, 1)
    rgba = (colormaps[cmap](0.4 + 0.6 * level) * 255).astype(np.uint8)
    rgba[..., 3] = np.where(mask & (p >= SHOWN_FROM), 60 + 170 * level, 0).astype(np.uint8)
    return rgba
