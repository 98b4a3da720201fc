"""Evaluate a scan against known schools: which schools were found, which candidates are false alarms.

A school is found when a candidate point lies within ``distance`` metres (default 50) of its
footprint (its point, for point labels); matching is one-to-one and greedy, most probable
candidate first, nearest school first. Only schools inside the scanned scenes' data count.
The precision-recall curve re-extracts candidates from the probability rasters at each
threshold (probability peaks), so it also covers thresholds below the tuned one; each raster's
log-odds peaks are computed once for all thresholds (:class:`~schoolvision.scan.candidates.ProbabilityField`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from rasterio.warp import transform_geom
from shapely.geometry import box, mapping, shape
from tqdm.auto import tqdm

from schoolvision.io.crs import metric_crs
from schoolvision.io.folders import probability_bounds, read_probability
from schoolvision.io.schools import read_schools
from schoolvision.scan.candidates import (
    FIELD_PER_STRIDE,
    MIN_AREA_M2,
    SWEEP_THRESHOLDS,
    PeakSweep,
    ProbabilityField,
    extract_candidates,
    merged_rows,
    read_fields,
)


def load_schools(path: str | Path | gpd.GeoDataFrame, scenes: Sequence) -> gpd.GeoDataFrame:
    """Known schools that fall inside the scanned scenes, in EPSG:4326 (points stay points).

    ``path`` is a file read by :func:`~schoolvision.io.schools.read_schools` (so ``scan --schools``
    accepts exactly the files ``chips --schools`` accepts), or what it returned.
    """
    gdf = path if isinstance(path, gpd.GeoDataFrame) else read_schools(path, point_buffer_m=None)
    footprints = [shape(transform_geom(s.crs, "EPSG:4326", mapping(box(*probability_bounds(s.probability)))))
                  for s in scenes]
    inside = np.zeros(len(gdf), bool)
    for fp in footprints:
        inside |= gdf.geometry.intersects(fp).to_numpy()
    return gdf[inside].reset_index(drop=True)


def match(cands: gpd.GeoDataFrame, schools: gpd.GeoDataFrame, distance: float,
          crs=None) -> list[tuple[int, int, float]]:
    """One-to-one (candidate index, school index, metres) pairs within ``distance``, greedy by probability.

    Distances are measured in ``crs`` (default: :func:`metric_crs` of the schools).
    """
    if not len(cands) or not len(schools):
        return []
    utm = crs or metric_crs(schools)
    c = cands.to_crs(utm).geometry.reset_index(drop=True)
    s = schools.to_crs(utm).geometry.reset_index(drop=True)
    return _greedy(c.to_numpy(), s.to_numpy(), cands["max_prob"].to_numpy(), distance)


def _greedy(c: np.ndarray, s: np.ndarray, probs: np.ndarray, distance: float) -> list[tuple[int, int, float]]:
    """:func:`match` on metric geometries: candidates ``c`` (with ``probs``) against schools ``s``."""
    d = shapely.distance(c[:, None], s[None, :]).reshape(len(c), len(s))
    order = np.argsort(-probs, kind="stable")
    pairs, taken = [], set()
    for i in order:
        for j in np.argsort(d[i], kind="stable"):
            if d[i, j] > distance:
                break
            if j not in taken:
                taken.add(int(j))
                pairs.append((int(i), int(j), float(d[i, j])))
                break
    return pairs


def scores(n_cands: int, n_schools: int, tp: int) -> dict[str, float]:
    """Recall, precision and F1 (0 when undefined)."""
    recall = tp / n_schools if n_schools else 0.0
    precision = tp / n_cands if n_cands else 0.0
    f1 = 2 * recall * precision / (recall + precision) if recall + precision else 0.0
    return {"recall": round(recall, 4), "precision": round(precision, 4), "f1": round(f1, 4)}


def pr_curve(scenes: Sequence, schools: gpd.GeoDataFrame, distance: float,
             thresholds: Sequence[float] = SWEEP_THRESHOLDS,
             merge_distance: float = 64.0, fields: Sequence[ProbabilityField | PeakSweep] | None = None,
             progress: bool = False, min_area_m2: float = MIN_AREA_M2, min_separation: float = 0.0) -> list[dict]:
    """Recall/precision/F1 of probability-peak candidates re-extracted (and merged) at each threshold.

    ``fields``: the scenes' rasters from :func:`~schoolvision.scan.candidates.read_fields` when the
    caller has them already; ``progress`` shows a bar over the thresholds; ``min_area_m2`` and
    ``min_separation``: the scan's, so the curve counts the candidates the scan would report.
    """
    fields = read_fields(scenes, min_separation=min_separation) if fields is None else fields
    utm = metric_crs(schools) if len(schools) else None
    known = schools.to_crs(utm).geometry.to_numpy() if len(schools) else None
    curve = []
    for t in tqdm(thresholds, desc="precision-recall", unit="threshold", leave=False, disable=not progress):
        n, tp = _sweep_counts(fields, float(t), min_area_m2, merge_distance, known, utm, distance)
        curve.append({"threshold": float(t), "candidates": n, "true_positives": tp, **scores(n, len(schools), tp)})
    return curve


def _sweep_counts(fields: Sequence[ProbabilityField | PeakSweep], threshold: float, min_area_m2: float,
                  merge_distance: float, known: np.ndarray | None, utm, distance: float) -> tuple[int, int]:
    """(candidates, true positives) at ``threshold``: the numbers of :func:`extract_all` and :func:`match`.

    The same steps on arrays instead of frames (rank each scene, to EPSG:4326, rank all, merge, match),
    the same sorts (stable, ties in the same order) and the same coordinate transforms, so the same
    counts at a fraction of the cost of a frame per threshold.
    """
    maxs, means, scenes, geoms = [], [], [], []
    for f in fields:
        _, mx, mn, _, xs, ys = f.peak_arrays(threshold, min_area_m2, reuse=True)
        if not len(mx):
            continue
        order = np.lexsort((-mn, -mx))  # rank(): max, then mean, descending; stable
        maxs.append(mx[order].astype(float))
        means.append(mn[order].astype(float))
        scenes.append(np.full(len(order), f.scene, dtype=object))
        geoms.append(gpd.GeoSeries(shapely.points(xs[order], ys[order]), crs=f.crs).to_crs("EPSG:4326").to_numpy())
    if not maxs:
        return 0, 0
    mx, mn, scene, geom = (np.concatenate(a) for a in (maxs, means, scenes, geoms))
    codes = np.unique(scene.astype(str), return_inverse=True)[1]
    order = np.lexsort((codes, -mn, -mx))
    mx, scene, geom = mx[order], scene[order], gpd.GeoSeries(geom[order], crs="EPSG:4326")
    if len(geom) >= 2 and (merge_distance > 0 or len(set(scene)) > 1):  # merge_duplicates' own early return
        metric = geom.to_crs(metric_crs(geom)).to_numpy()
        keep = merged_rows(metric, scene, mx, merge_distance, merge_distance / 2)
        mx, geom = mx[keep], geom.iloc[keep]
    if known is None or not len(known):
        return len(mx), 0
    return len(mx), len(_greedy(geom.to_crs(utm).to_numpy(), known, mx, distance))


def operating_points(curve: Sequence[dict], min_precision: float = 0.8) -> dict:
    """The curve's best-F1 threshold, its recall ceiling, and the highest recall with precision >= ``min_precision``.

    The recall ceiling is the highest recall at any swept threshold (the highest such threshold on ties): a
    school missed there is missed at every threshold, so it is a miss of the candidates' placement or of
    the model's map, not of the threshold.
    """
    if not curve:
        return {}
    best = max(curve, key=lambda p: (p["f1"], p["threshold"]))
    ceiling = max(curve, key=lambda p: (p["recall"], p["threshold"]))
    ok = [p for p in curve if p["precision"] >= min_precision]
    top = max(ok, key=lambda p: (p["recall"], p["precision"])) if ok else None
    return {
        "best_f1": best["f1"], "best_f1_threshold": best["threshold"],
        "best_f1_recall": best["recall"], "best_f1_precision": best["precision"],
        "recall_ceiling": ceiling["recall"], "recall_ceiling_threshold": ceiling["threshold"],
        f"recall_at_precision_{min_precision:g}": top["recall"] if top else 0.0,
        f"threshold_for_recall_at_precision_{min_precision:g}": top["threshold"] if top else None,
    }


def evaluate_scan(cands: gpd.GeoDataFrame, scenes: Sequence, schools_path: str | Path | gpd.GeoDataFrame,
                  distance: float = 50.0, threshold: float | None = None, merge_distance: float = 64.0,
                  fields: Sequence[ProbabilityField | PeakSweep] | None = None, progress: bool = False,
                  min_area_m2: float = MIN_AREA_M2,
                  min_separation: float = 0.0) -> tuple[dict, dict[str, gpd.GeoDataFrame]]:
    """(evaluation dict for ``evaluation.json``, GeoPackage layers: known_schools, missed_schools, false_alarms).

    ``schools_path``: a schools file, or the schools :func:`~schoolvision.io.schools.read_schools` read from one.
    ``fields`` (the scenes' rasters, read once by the caller), ``progress``, ``min_area_m2`` and
    ``min_separation`` go to :func:`pr_curve`.
    """
    schools = load_schools(schools_path, scenes)
    pairs = match(cands, schools, distance)
    matched_c = {i: (j, d) for i, j, d in pairs}
    matched_s = {j: (i, d) for i, j, d in pairs}
    s4326 = schools.copy()
    s4326["found"] = [j in matched_s for j in range(len(schools))]
    s4326["candidate_rank"] = [int(cands["rank"].iloc[matched_s[j][0]]) if j in matched_s else -1
                               for j in range(len(schools))]
    s4326["distance_m"] = [round(matched_s[j][1], 2) if j in matched_s else np.nan for j in range(len(schools))]
    missed = s4326[~s4326["found"].astype(bool)]  # astype: an empty column is object, and ~ of it drops the columns
    c = cands.copy()
    c["matched_school"] = [str(schools["name"].iloc[matched_c[i][0]]) if i in matched_c else "" for i in range(len(c))]
    false_alarms = c[c["matched_school"] == ""]
    cpts = c.to_crs("EPSG:4326")

    def pt(g):
        g = g if g.geom_type == "Point" else g.representative_point()
        return round(g.x, 7), round(g.y, 7)

    evaluation = {
        "match_distance_m": distance,
        "threshold": threshold,
        "schools": len(schools),
        "candidates": len(cands),
        "true_positives": len(pairs),
        **scores(len(cands), len(schools), len(pairs)),
        "min_area_m2": min_area_m2,
        "min_separation_m": min_separation,
        "pr_curve": (curve := pr_curve(scenes, schools, distance, merge_distance=merge_distance, fields=fields,
                                       progress=progress, min_area_m2=min_area_m2, min_separation=min_separation)),
        **operating_points(curve),
        "missed_schools": [{"name": str(r["name"]), "scene": str(r.get("scene", "")), "lon_lat": pt(r.geometry)}
                           for _, r in missed.iterrows()],
        "unmatched_candidates": [{"rank": int(r["rank"]), "scene": str(r["scene"]),
                                  "max_prob": round(float(r["max_prob"]), 4), "lon_lat": pt(cpts.geometry.iloc[i])}
                                 for i, (_, r) in enumerate(c.iterrows()) if r["matched_school"] == ""],
        "matches": [{"rank": int(cands["rank"].iloc[i]), "school": str(schools["name"].iloc[j]),
                     "distance_m": round(d, 2)}
                    for i, j, d in sorted(pairs)],
    }
    columns = ("name", "scene", "found", "candidate_rank", "distance_m", "geometry")
    keep = [col for col in s4326.columns if col in columns]
    layers = {"known_schools": s4326[keep], "missed_schools": missed[keep],
              "false_alarms": false_alarms[[col for col in false_alarms.columns if col != "label"]]}
    return evaluation, layers


def weakest_finds(cands: gpd.GeoDataFrame, known: gpd.GeoDataFrame, n: int = 3) -> gpd.GeoDataFrame:
    """The ``n`` found schools with the least probable candidates: where a higher threshold starts missing schools.

    ``cands`` and ``known`` are the ``candidates`` and ``known_schools`` layers of a scan.
    """
    found = known[known["found"].astype(bool)] if "found" in known.columns else known.iloc[:0]
    names = dict(zip(found["candidate_rank"].astype(int), found["name"].astype(str)))
    out = cands[cands["rank"].astype(int).isin(names)].copy()
    out["school"] = [names[int(r)] for r in out["rank"]]
    return out.nsmallest(n, "max_prob").reset_index(drop=True)


def rejected_lookalikes(scenes: Sequence, schools: gpd.GeoDataFrame, threshold: float, distance: float = 50.0,
                        floor: float = 0.05, n: int = 6, separation: float = 0.0,
                        min_area_m2: float = MIN_AREA_M2) -> gpd.GeoDataFrame:
    """The ``n`` strongest regions the threshold turned down that are not known schools (EPSG:4326 points).

    Regions above ``floor`` whose peak stays below ``threshold`` and lies more than ``distance`` metres
    from every known school: the next false alarms should the threshold be lowered, so the places to
    look at when a scan reports none (and, in real imagery, where unmapped schools may hide).

    Args:
        scenes: the scanned scenes (``SceneScan`` items).
        schools: known schools (any CRS).
        threshold: the scan's threshold; regions whose peak reaches it are candidates, not look-alikes.
        distance: metres from a known school within which a region is that school, not a look-alike.
        floor: lowest peak that counts.
        n: how many to return, strongest first.
        separation: metres between any two returned places, strongest kept first (a chip's ground width,
            ``chip_size x GSD``, shows each place once: the low shoulders of one blob are several small
            regions, which would otherwise fill the list with the same chip).
        min_area_m2: smallest region kept (the scan's ``min_area_m2``; specks are no look-alike).

    Returns:
        Points with ``scene``, ``max_prob`` and ``area_m2``, in EPSG:4326.
    """
    parts = []
    for s in scenes:
        prob, transform, crs = read_probability(s.probability, per_stride=FIELD_PER_STRIDE)
        cands = extract_candidates(prob, transform, crs, floor, s.scene, min_area_m2=min_area_m2)[0]
        if len(cands):
            parts.append(cands[cands["max_prob"] < threshold].to_crs("EPSG:4326"))
    parts = [p for p in parts if len(p)]
    if not parts:
        return gpd.GeoDataFrame({"scene": [], "max_prob": [], "area_m2": []}, geometry=[], crs="EPSG:4326")
    out = gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), crs="EPSG:4326")
    utm = metric_crs(schools if len(schools) else out)
    if len(schools):
        known = schools.to_crs(utm).geometry
        near = out.to_crs(utm).geometry.apply(lambda g: known.distance(g).min() <= distance)
        out = out[~near.to_numpy()]
    out = out.sort_values("max_prob", ascending=False, kind="stable").reset_index(drop=True)
    return out.iloc[_spread(out.to_crs(utm).geometry, separation, n)].reset_index(drop=True)


def _spread(points: gpd.GeoSeries, separation: float, n: int) -> list[int]:
    """Indices of the first ``n`` points (in order) farther than ``separation`` from every one kept before."""
    xy = np.column_stack([points.x, points.y]) if len(points) else np.zeros((0, 2))
    keep: list[int] = []
    for i, p in enumerate(xy):
        if len(keep) == n:
            break
        if separation <= 0 or not keep or np.hypot(*(xy[keep] - p).T).min() > separation:
            keep.append(i)
    return keep
