"""School candidates: regions of a probability raster above the run's tuned threshold.

Regions with several peaks (neighbouring schools blurred together) are split at the valleys
between the peaks. Each region becomes one ranked candidate (a point at its peak; grad-CAM peaks
are placed by :func:`schoolvision.scan.peaks.place_at_cam_peaks`) with its maximum and mean
probability and its area. Regions are labelled on a decimated read (at most ``max_side`` pixels a
side, through the raster's overviews) so a country-size raster never has to fit in memory; a
2048 px side is still finer than the scan stride for scenes up to 2048 x stride pixels (131 km at
1 m, stride 64). Scenes that overlap give the same school twice: points from different scenes
closer than ``merge_distance`` are merged, keeping the most probable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from rasterio.features import shapes
from scipy import ndimage
from shapely.geometry import Point, shape
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from schoolvision.io.crs import metric_crs
from schoolvision.io.folders import ScanFolder, read_probability
from schoolvision.io.vectors import write_vectors

SPLIT_DIP = 0.5
"""Log-odds dip between two peaks that makes them two candidates (see :func:`split_regions`)."""

SATURATION = 0.999
"""P(school) above which log-odds are capped (one plateau, not many peaks)."""

COLUMNS = ["rank", "scene", "max_prob", "mean_prob", "area_m2", "peak", "geometry"]


def split_regions(prob: np.ndarray, threshold: float, dip: float = SPLIT_DIP) -> tuple[np.ndarray, int]:
    """Label regions where ``prob >= threshold``; a region with several peaks is split between them.

    Two schools a street apart blur into one region above the threshold, and where the model is
    confident the probability saturates near 1, hiding the valley between them. In log-odds the valley
    shows: peaks are the h-maxima of the log-odds with a dip of at least ``dip`` (0.5 = odds drop by
    1.65x between the peaks), and the region is split along the watershed between them. Above
    ``SATURATION`` the log-odds are flat: differences between 0.99999 and 0.999995 are noise.
    """
    finite = np.isfinite(prob)
    p = np.clip(np.where(finite, prob, 0.0), 1 - SATURATION, SATURATION)
    above = finite & (p >= threshold)
    if not above.any():
        return np.zeros(prob.shape, np.int32), 0
    logit = np.log(p / (1 - p)).astype(np.float64)
    eight = np.ones((3, 3), bool)
    markers, n = ndimage.label(h_maxima(logit, dip).astype(bool) & above, structure=eight)
    labels = watershed(-logit, markers, mask=above, connectivity=2).astype(np.int32)
    rest, m = ndimage.label(above & (labels == 0), structure=eight)  # regions whose peak sits below the threshold
    labels[rest > 0] = rest[rest > 0] + n
    return labels, n + m


def extract_candidates(prob: np.ndarray, transform, crs, threshold: float, scene: str = "",
                       min_area_m2: float = 0.0, dip: float = SPLIT_DIP) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """(points, region polygons) of regions where ``prob >= threshold`` (see :func:`split_regions`), ranked."""
    labels, n = split_regions(prob, threshold, dip)
    px_area = abs(transform.a * transform.e - transform.b * transform.d)
    if n == 0:
        return _empty(crs), gpd.GeoDataFrame({"scene": [], "label": []}, geometry=[], crs=crs)
    idx = np.arange(1, n + 1)
    vals = np.nan_to_num(prob, nan=0.0)
    maxs = ndimage.maximum(vals, labels, idx)
    means = ndimage.mean(vals, labels, idx)
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    peaks = ndimage.maximum_position(vals, labels, idx)
    rows = []
    for i, (mx, mn, cnt, (r, c)) in enumerate(zip(maxs, means, counts, peaks), start=1):
        area = float(cnt * px_area)
        if cnt == 0 or area < min_area_m2:
            continue
        x, y = transform @ (c + 0.5, r + 0.5)
        rows.append({"label": i, "scene": scene, "max_prob": float(mx), "mean_prob": float(mn), "area_m2": area,
                     "peak": "probability", "geometry": Point(x, y)})
    points = gpd.GeoDataFrame(rows, geometry="geometry", crs=crs) if rows else _empty(crs)
    keep = set(points["label"]) if rows else set()
    polys = [{"scene": scene, "label": int(v), "geometry": shape(g)}
             for g, v in shapes(labels, mask=labels > 0, transform=transform) if int(v) in keep]
    regions = gpd.GeoDataFrame(polys, geometry="geometry", crs=crs) if polys else gpd.GeoDataFrame(
        {"scene": [], "label": []}, geometry=[], crs=crs)
    if len(regions):
        regions = regions.dissolve(by=["scene", "label"], as_index=False)
    return rank(points), regions


def _empty(crs) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({c: pd.Series(dtype="float64" if "prob" in c or c == "area_m2" else "object")
                             for c in COLUMNS if c != "geometry"}, geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def rank(cands: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Sort by max then mean probability (descending) and number them 1..N."""
    if not len(cands):
        return cands
    out = cands.sort_values(["max_prob", "mean_prob", "scene"], ascending=[False, False, True], kind="stable")
    out = out.reset_index(drop=True)
    out["rank"] = np.arange(1, len(out) + 1)
    return out[[c for c in COLUMNS if c in out.columns] + [c for c in out.columns if c not in COLUMNS]]


def merge_duplicates(cands: gpd.GeoDataFrame, distance: float, same_scene: float = 0.0) -> gpd.GeoDataFrame:
    """Merge candidates closer than ``distance`` metres from different scenes, keeping the most probable.

    One school seen by two overlapping scenes is one candidate; within a scene, ``same_scene`` metres
    (0: never) merge.
    """
    if len(cands) < 2 or (cands["scene"].nunique() < 2 and same_scene <= 0):
        return cands
    metric = cands if cands.crs.is_projected else cands.to_crs(metric_crs(cands))
    xy = np.column_stack([metric.geometry.x, metric.geometry.y])
    scenes = cands["scene"].to_numpy()
    parent = list(range(len(cands)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    d = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1])
    for i, j in zip(*np.nonzero(np.triu(d <= distance, 1))):
        if scenes[i] != scenes[j] or d[i, j] <= same_scene:
            parent[find(i)] = find(j)
    roots = np.array([find(i) for i in range(len(cands))])
    probs = cands["max_prob"].to_numpy()
    keep = [int(np.flatnonzero(roots == r)[np.argmax(probs[roots == r])]) for r in np.unique(roots)]
    return rank(cands.iloc[sorted(keep)].copy())


def common_crs(crss: Sequence):
    """The scenes' CRS when they share one, else EPSG:4326 (metric work reprojects to local UTM)."""
    unique = {rasterio.crs.CRS.from_user_input(c).to_string() for c in crss}
    return next(iter(unique)) if len(unique) == 1 else "EPSG:4326"


def extract_all(scenes: Sequence, threshold: float, merge_distance: float = 64.0,
                min_area_m2: float = 0.0) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """Candidates and regions of every scanned scene (``SceneScan`` items), in one CRS, merged and ranked.

    Points closer than ``merge_distance`` from different scenes, or half that within one scene (a
    school split at a scene edge), are one candidate.
    """
    if not scenes:
        return _empty("EPSG:4326"), gpd.GeoDataFrame({"scene": [], "label": []}, geometry=[], crs="EPSG:4326")
    crs = common_crs([s.crs for s in scenes])
    pts, regs = [], []
    for s in scenes:
        prob, transform, scrs = read_probability(s.probability)
        p, r = extract_candidates(prob, transform, scrs, threshold, s.scene, min_area_m2)
        pts.append(p.to_crs(crs))
        regs.append(r.to_crs(crs))
    points = gpd.GeoDataFrame(pd.concat(pts, ignore_index=True), geometry="geometry", crs=crs)
    regions = gpd.GeoDataFrame(pd.concat(regs, ignore_index=True), geometry="geometry", crs=crs)
    points = merge_duplicates(rank(points), merge_distance, merge_distance / 2) if len(points) else _empty(crs)
    return points, regions


def write_candidates(cands: gpd.GeoDataFrame, out_dir: str | Path,
                     extra_layers: Mapping[str, object] | None = None) -> dict[str, Path]:
    """Write ``candidates.gpkg`` (layer ``candidates`` plus ``extra_layers``) and ``candidates.geojson`` (EPSG:4326)."""
    folder = ScanFolder(out_dir)
    paths = {"gpkg": folder.candidates_path, "geojson": folder.root / ScanFolder.CANDIDATES_GEOJSON}
    cols = [c for c in cands.columns if c != "label"]
    write_vectors(cands[cols], gpkg=paths["gpkg"], geojson=paths["geojson"], layer="candidates",
                  extra_layers=extra_layers)
    return paths
