"""Candidates of every scene of a scan, read from the per-scene files and merged into one ranked set.

Each scene's unit (:mod:`schoolvision.scan.unit`) has written its own candidates and regions;
the driver brings them into one CRS (the scenes' own when they share one, else EPSG:4326) and merges
the candidates that two overlapping scenes both found (:func:`~schoolvision.scan.candidates.merge_duplicates`,
a spatial index, so a country's hundreds of thousands of candidates merge in seconds). Scenes are
taken in the order given, so ties rank as the scan's scene order has them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
from pyproj import CRS

from schoolvision.io.folders import ScanFolder, open_probability
from schoolvision.scan.candidates import common_crs, empty_candidates, merge_duplicates, rank


def merge_candidates(parts: Sequence[gpd.GeoDataFrame], merge_distance: float, crs=None) -> gpd.GeoDataFrame:
    """One ranked set of the scenes' candidate points: duplicates across scenes merged.

    Args:
        parts: each scene's candidates (any CRS; empty ones are skipped).
        merge_distance: metres within which two scenes' candidates are one; within a scene, half of it.
        crs: the CRS of the result (default: the parts' common CRS, see :func:`common_crs`).

    Returns:
        The merged candidates, ranked 1..N by probability.
    """
    crs = CRS.from_user_input(crs or common_crs([p.crs for p in parts] or ["EPSG:4326"]))
    parts = [p if p.crs == crs else p.to_crs(crs) for p in parts if len(p)]  # to_crs copies: only where needed
    if not parts:
        return empty_candidates(crs)
    points = gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), geometry="geometry", crs=crs)
    return merge_duplicates(rank(points), merge_distance, merge_distance / 2)


def read_scene_candidates(folder: ScanFolder, scenes: Sequence,
                          merge_distance: float) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """(merged candidates, every scene's regions) of the scanned ``scenes`` (``SceneScan`` items) of ``folder``.

    Raises:
        UserError: a scene's candidates file is missing or unreadable.
    """
    crs = CRS.from_user_input(common_crs([s.crs for s in scenes] or ["EPSG:4326"]))
    points, regions = [], []
    for s in scenes:
        p, r = folder.read_scene_candidates(s.scene)
        points.append(p)
        if len(r):
            regions.append(r if r.crs == crs else r.to_crs(crs))
    merged = merge_candidates(points, merge_distance, crs)
    regions = (gpd.GeoDataFrame(pd.concat(regions, ignore_index=True), geometry="geometry", crs=crs) if regions
               else gpd.GeoDataFrame({"scene": [], "label": []}, geometry=[], crs=crs))
    return merged, regions


def same_outputs(a: str | Path, b: str | Path) -> dict[str, bool]:
    """Whether two scan folders hold the same per-scene files: probability rasters (grid and values) and candidates.

    For checking that engines agree (``--engine local`` against ``--engine ray``) or that a resumed scan
    ended where an uninterrupted one does. Returns ``{"scenes": ..., "probability": ..., "candidates": ...}``.
    """
    fa, fb = ScanFolder(a), ScanFolder(b)
    names = list(fa.probability_paths())
    out = {"scenes": names == list(fb.probability_paths()), "probability": True, "candidates": True}
    for name in names if out["scenes"] else []:
        with open_probability(fa.probability_path(name)) as x, open_probability(fb.probability_path(name)) as y:
            same_grid = (x.crs, x.transform, x.shape) == (y.crs, y.transform, y.shape)
            out["probability"] &= same_grid and np.array_equal(x.read(1), y.read(1), equal_nan=True)
        for left, right in zip(fa.read_scene_candidates(name), fb.read_scene_candidates(name)):
            out["candidates"] &= left.to_wkb().equals(right.to_wkb())
    return out
