"""Registry audit: which schools of an official list the scan confirms, and which candidates are new.

School registries miss schools, keep closed ones and put many hundreds of metres off. ``scan
--registry FILE`` (any file :func:`~schoolvision.io.schools.read_schools` reads) classifies

- every registry school inside the scanned scenes: **confirmed** (a candidate lies within the match
  distance; one-to-one and greedy as in :func:`schoolvision.scan.evaluation.match`) or **not seen**;
- every candidate: **registry** (it matches a registry school) or **new**.

A not-seen school with a new candidate within :data:`DISPLACED_SEARCH_M` is counted as possibly
misplaced (``not_seen_near_new``): the list may have the school, at the wrong place. The result is
four layers of ``candidates.gpkg`` (:data:`LAYERS`), the table ``registry_audit.csv`` (one row per
registry school and per candidate) and the counts under ``registry`` in ``scan.json``.

Registry schools keep the registry's own ids (``registry_id``): the column ``scan --registry-id-column``
names, else the first of :data:`ID_COLUMNS` the file has; only a file with none of them gets row
numbers (0, 1, ...), and ``scan.json`` says so (``id_column`` is null).
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

from schoolvision.io.crs import metric_crs
from schoolvision.io.folders import ScanFolder, probability_bounds
from schoolvision.io.schools import read_schools
from schoolvision.scan.evaluation import match

DISPLACED_SEARCH_M = 500.0
"""A not-seen registry school with a new candidate this close may be misplaced (registries are off by 100-500 m)."""

ID_COLUMNS = ("registry_id", "school_id", "id", "school_code", "code", "emis", "emis_code", "uid", "ref")
"""Columns that hold a registry's own ids, case-insensitive, first found wins."""

LAYERS = ("registry_confirmed", "registry_not_seen", "candidates_registry", "candidates_new")
"""Layers of ``candidates.gpkg`` written by the audit (empty ones are left out, as for every layer)."""

TABLE_COLUMNS = ["kind", "status", "name", "registry_id", "candidate_rank", "scene", "max_prob", "distance_m",
                 "nearest_m", "lon", "lat"]
"""Columns of ``registry_audit.csv``: ``kind`` registry|candidate, ``status`` confirmed|not_seen|registry|new;
``distance_m`` to the match, ``nearest_m`` to the nearest new candidate (registry rows) or registry school
(candidate rows)."""


def read_registry(path: str | Path, *, layer: str | None = None, where: str | None = None,
                  lonlat_columns=None, id_column: str | None = None) -> gpd.GeoDataFrame:
    """The registry's schools in EPSG:4326, points kept as points (read before anything is scanned).

    ``registry_id`` is the registry's own id (``id_column``, else the first of :data:`ID_COLUMNS`), or
    the row number when the file has no id column; ``attrs["source"]["id_column"]`` names the column.

    Raises:
        UserError: the file cannot be read as school labels, or has no column ``id_column`` (one line naming it).
    """
    registry = read_schools(path, point_buffer_m=None, layer=layer, where=where, lonlat_columns=lonlat_columns,
                            id_column=id_column if id_column is not None else ID_COLUMNS)
    ids = registry["source_id"] if "source_id" in registry.columns else registry["school_id"].astype(str)
    return registry.assign(registry_id=ids.to_numpy())


def _points(gdf: gpd.GeoDataFrame) -> gpd.GeoSeries:
    return gdf.geometry.apply(lambda g: g if g.geom_type == "Point" else g.representative_point())


def _scene_of(registry: gpd.GeoDataFrame, scenes: Sequence) -> list[str]:
    """Name of the first scanned scene whose footprint holds each registry school ("" if none)."""
    names = [""] * len(registry)
    for s in scenes:
        fp = shape(transform_geom(s.crs, "EPSG:4326", mapping(box(*probability_bounds(s.probability)))))
        inside = registry.geometry.intersects(fp).to_numpy()
        for i in np.flatnonzero(inside):
            names[i] = names[i] or s.scene
    return names


def audit_registry(cands: gpd.GeoDataFrame, scenes: Sequence, registry: gpd.GeoDataFrame,
                   distance: float = 50.0) -> tuple[dict, dict[str, gpd.GeoDataFrame], pd.DataFrame]:
    """Classify registry schools and candidates.

    Args:
        cands: the scan's ranked candidates (``rank``, ``scene``, ``max_prob``), any CRS.
        scenes: the scanned scenes (``SceneScan``); registry schools outside them are only counted.
        registry: what :func:`read_registry` returned.
        distance: the match distance in metres (``scan --match-distance``).

    Returns:
        (counts for ``scan.json``, layers by name (:data:`LAYERS`), the ``registry_audit.csv`` table).
    """
    registry = registry.to_crs("EPSG:4326").reset_index(drop=True)
    scene = _scene_of(registry, scenes)
    keep = np.array([bool(s) for s in scene], bool)
    inside = registry[keep].reset_index(drop=True)
    inside["scene"] = [s for s in scene if s]
    c4326 = cands.to_crs("EPSG:4326").reset_index(drop=True) if len(cands) else cands
    pairs = match(c4326, inside, distance)
    by_school = {j: (i, d) for i, j, d in pairs}
    by_cand = {i: (j, d) for i, j, d in pairs}
    utm = metric_crs(inside if len(inside) else c4326) if len(inside) or len(c4326) else None
    reg_xy = _points(inside).to_crs(utm).to_numpy() if len(inside) else np.zeros(0, object)
    cand_xy = c4326.geometry.to_crs(utm).to_numpy() if len(c4326) else np.zeros(0, object)
    new = np.array([i not in by_cand for i in range(len(c4326))], bool)
    d = (shapely.distance(reg_xy[:, None], cand_xy[None, :]).reshape(len(reg_xy), len(cand_xy))
         if len(reg_xy) and len(cand_xy) else np.zeros((len(reg_xy), len(cand_xy))))
    nearest_new = [float(d[j, new].min()) if new.any() else np.nan for j in range(len(inside))]
    nearest_reg = [float(d[:, i].min()) if len(inside) else np.nan for i in range(len(c4326))]

    rpts = _points(inside) if len(inside) else gpd.GeoSeries([], crs="EPSG:4326")
    reg = gpd.GeoDataFrame({
        "name": inside["name"].astype(str).to_list() if len(inside) else [],
        "registry_id": [str(v) for v in _ids(inside)] if len(inside) else [],
        "scene": inside["scene"].to_list() if len(inside) else [],
        "status": ["confirmed" if j in by_school else "not_seen" for j in range(len(inside))],
        "candidate_rank": [int(c4326["rank"].iloc[by_school[j][0]]) if j in by_school else -1
                           for j in range(len(inside))],
        "distance_m": [round(by_school[j][1], 2) if j in by_school else np.nan for j in range(len(inside))],
        "nearest_new_m": [round(v, 2) for v in nearest_new],
    }, geometry=list(rpts), crs="EPSG:4326")
    cand = c4326.copy() if len(c4326) else gpd.GeoDataFrame(
        {"rank": [], "scene": [], "max_prob": []}, geometry=[], crs="EPSG:4326")
    cand = cand[[c for c in cand.columns if c != "label"]]
    cand["registry_status"] = ["registry" if i in by_cand else "new" for i in range(len(c4326))]
    cand["registry_name"] = [str(inside["name"].iloc[by_cand[i][0]]) if i in by_cand else ""
                             for i in range(len(c4326))]
    cand["registry_id"] = [str(reg["registry_id"].iloc[by_cand[i][0]]) if i in by_cand else ""
                           for i in range(len(c4326))]
    cand["nearest_registry_m"] = [round(v, 2) for v in nearest_reg]

    confirmed = reg["status"] == "confirmed"
    near_new = (~confirmed) & (reg["nearest_new_m"] <= DISPLACED_SEARCH_M)
    counts = {
        "path": registry.attrs.get("source", {}).get("path", ""),
        "id_column": registry.attrs.get("source", {}).get("id_column"),  # None: row numbers stand for ids
        "match_distance_m": distance,
        "registry_schools": len(registry),
        "outside_scenes": int(len(registry) - len(inside)),
        "in_scenes": len(inside),
        "confirmed": int(confirmed.sum()),
        "not_seen": int((~confirmed).sum()),
        "not_seen_near_new": int(near_new.sum()),
        "displaced_search_m": DISPLACED_SEARCH_M,
        "candidates": len(c4326),
        "candidates_registry": int((~new).sum()),
        "candidates_new": int(new.sum()),
    }
    layers = {"registry_confirmed": reg[confirmed.to_numpy()], "registry_not_seen": reg[(~confirmed).to_numpy()],
              "candidates_registry": cand[~new], "candidates_new": cand[new]}
    table = _table(reg, cand)
    return counts, layers, table


def _table(reg: gpd.GeoDataFrame, cand: gpd.GeoDataFrame) -> pd.DataFrame:
    """One row per registry school, then one per candidate (:data:`TABLE_COLUMNS`)."""
    rows = [{"kind": "registry", "status": r["status"], "name": r["name"], "registry_id": r["registry_id"],
             "candidate_rank": r["candidate_rank"], "scene": r["scene"], "max_prob": np.nan,
             "distance_m": r["distance_m"], "nearest_m": r["nearest_new_m"],
             "lon": round(r.geometry.x, 7), "lat": round(r.geometry.y, 7)} for _, r in reg.iterrows()]
    rows += [{"kind": "candidate", "status": r["registry_status"], "name": r["registry_name"],
              "registry_id": r["registry_id"],
              "candidate_rank": int(r["rank"]), "scene": r["scene"], "max_prob": round(float(r["max_prob"]), 4),
              "distance_m": np.nan, "nearest_m": r["nearest_registry_m"],
              "lon": round(r.geometry.x, 7), "lat": round(r.geometry.y, 7)} for _, r in cand.iterrows()]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _ids(registry: gpd.GeoDataFrame) -> pd.Series:
    """``registry_id`` of :func:`read_registry`; row numbers for a frame made otherwise."""
    return registry["registry_id"] if "registry_id" in registry.columns else registry["school_id"]


def write_audit(folder: ScanFolder, cands: gpd.GeoDataFrame, scenes: Sequence, registry: gpd.GeoDataFrame,
                distance: float, layers: dict) -> dict:
    """Run :func:`audit_registry`, add its layers to ``layers`` (for ``candidates.gpkg``), write the table.

    Returns:
        ``{"registry": counts}`` for ``scan.json`` (empty when nothing was scanned).
    """
    if not scenes:
        return {}
    counts, audit_layers, table = audit_registry(cands, scenes, registry, distance)
    layers.update(audit_layers)
    counts["table"] = str(folder.write_registry_audit(table))
    return {"registry": counts}
