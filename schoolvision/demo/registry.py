"""An imperfect school registry for the demo: the official list a mapper starts a new area from.

Real registries miss schools, list closed or wrong places, and put many schools hundreds of metres
off; a scan is how they get corrected. :func:`make_registry` derives such a list from the demo's
true schools by seeded rules, and records what each row really is, so that an audit
(``scan --registry``) and the book can be checked against the truth. In each town, with ``n``
schools (counts rounded half up):

1. **missing**: ``round(missing * n)`` schools, drawn at random, are not listed;
2. **displaced**: of the ``listed`` others, ``round(displaced * listed)``, drawn at random, are
   listed 100-500 m (``displacement_m``, uniform) from their footprint's centroid in a uniform
   random direction, kept inside the scene when one of 50 directions allows it;
3. **false**: ``false`` hard negatives (the region's closest look-alike first, then the others in
   random order) are listed as schools at their centroid;
4. the remaining schools (**correct**) are listed at their footprint's centroid.

Rows are shuffled within each town and named by town and row, so neither order nor name tells a
false or displaced row apart. Each town draws from its own stream ``(seed, town, 7919, stream)``,
independent of the imagery.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
from shapely.geometry import Point, box

from schoolvision.errors import check_range

REGISTRY_COLUMNS = ("registry_id", "name", "scene", "lon", "lat")
"""Columns of ``registry.csv`` (WGS84 degrees; readable by :func:`schoolvision.io.schools.read_schools`)."""

TRUTH_COLUMNS = ("registry_id", "status", "school", "kind", "scene", "offset_m", "lon", "lat", "true_lon",
                 "true_lat")
"""Columns of ``registry_truth.csv``: one row per school and per falsely listed look-alike.

``status`` is ``correct``, ``displaced``, ``missing`` (no ``registry_id``, ``lon``, ``lat``) or
``false``; ``school`` is the name in ``schools.geojson`` (empty for ``false``); ``kind`` is
``school`` or the look-alike's kind; ``offset_m`` the distance from the listed point to the true
centroid; ``true_lon``/``true_lat`` the true centroid."""

STATUSES = ("correct", "displaced", "missing", "false")


@dataclass(frozen=True)
class RegistryRules:
    """How wrong the demo registry is (see the module docstring for the rules)."""

    missing: float = 0.4
    displaced: float = 0.3
    false: int = 2
    displacement_m: tuple[float, float] = (100.0, 500.0)

    def __post_init__(self):
        check_range("--registry-missing", self.missing, minimum=0, maximum=1)
        check_range("--registry-displaced", self.displaced, minimum=0, maximum=1)
        check_range("--registry-false", self.false, minimum=0)


def _half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def make_registry(schools: gpd.GeoDataFrame, landmarks: gpd.GeoDataFrame, towns: list[dict], *, seed: int,
                  rules: RegistryRules | None = None, closest: str | None = None,
                  stream: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The registry rows and the truth about them, by the module's seeded rules.

    Args:
        schools: true footprints (EPSG:4326) with ``name`` and ``scene``.
        landmarks: hard negatives (EPSG:4326) with ``kind`` and ``scene``.
        towns: one dict per scene with ``name``, ``crs`` and ``bounds`` (left, bottom, right, top in
            that CRS), in town order.
        seed: the demo's seed.
        rules: shares and counts (default :class:`RegistryRules`).
        closest: the look-alike kind listed falsely first (the region's closest).
        stream: the region's extra seed word, so regions draw different registries.

    Returns:
        ``registry`` (columns :data:`REGISTRY_COLUMNS`) and ``truth`` (:data:`TRUTH_COLUMNS`).
    """
    rules = rules or RegistryRules()
    listed_rows, truth_rows = [], []
    for index, town in enumerate(towns):
        rng = np.random.default_rng([seed, index, 7919, stream])
        local = schools[schools["scene"] == town["name"]].to_crs(town["crs"])
        marks = landmarks[landmarks["scene"] == town["name"]].to_crs(town["crs"])
        entries = _school_entries(local, box(*town["bounds"]), rules, rng) + _false_entries(marks, rules, closest, rng)
        _rows(entries, town, rng, listed_rows, truth_rows)
    listed_rows.sort()
    registry = pd.DataFrame([r[2:] for r in listed_rows], columns=list(REGISTRY_COLUMNS))
    truth = pd.DataFrame(truth_rows, columns=list(TRUTH_COLUMNS))
    return registry, truth


def _school_entries(local: gpd.GeoDataFrame, frame, rules: RegistryRules, rng: np.random.Generator) -> list[tuple]:
    """(status, school, kind, true point, listed point or None) of a town's schools, in the town's CRS."""
    n = len(local)
    order = rng.permutation(n)
    n_missing = min(_half_up(rules.missing * n), n)
    missing = set(order[:n_missing].tolist())
    listed = order[n_missing:]
    displaced = set(listed[rng.permutation(len(listed))[: _half_up(rules.displaced * len(listed))]].tolist())
    entries = []
    for k in range(n):
        true = local.geometry.iloc[k].centroid
        name = local["name"].iloc[k]
        if k in missing:
            entries.append(("missing", name, "school", true, None))
        elif k in displaced:
            entries.append(("displaced", name, "school", true, _displaced(true, frame, rules, rng)))
        else:
            entries.append(("correct", name, "school", true, true))
    return entries


def _displaced(true: Point, frame, rules: RegistryRules, rng: np.random.Generator) -> Point:
    """``true`` moved a random distance in a random direction, inside ``frame`` when one of 50 tries allows it."""
    lo, hi = rules.displacement_m
    dist = rng.uniform(lo, hi)
    for _ in range(50):
        a = rng.uniform(0, 2 * math.pi)
        moved = Point(true.x + dist * math.cos(a), true.y + dist * math.sin(a))
        if frame.contains(moved):
            break
    return moved


def _false_entries(marks: gpd.GeoDataFrame, rules: RegistryRules, closest: str | None,
                   rng: np.random.Generator) -> list[tuple]:
    """The look-alikes listed as schools: the closest kind first, then the others in random order."""
    if not (rules.false and len(marks)):
        return []
    rank = np.lexsort((rng.random(len(marks)), (marks["kind"] != closest).to_numpy()))
    entries = []
    for j in rank[: rules.false]:
        point = marks.geometry.iloc[j].centroid
        entries.append(("false", "", marks["kind"].iloc[j], point, point))
    return entries


def _rows(entries: list[tuple], town: dict, rng: np.random.Generator, listed_rows: list, truth_rows: list) -> None:
    """Append the town's registry rows (shuffled row numbers) and truth rows, in WGS84."""
    scene = town["name"]
    shown = [i for i, e in enumerate(entries) if e[4] is not None]
    rows = dict(zip(shown, rng.permutation(len(shown)).tolist()))  # shuffled row numbers
    to_wgs = gpd.GeoSeries([e[3] for e in entries] + [e[4] or e[3] for e in entries], crs=town["crs"]).to_crs(
        "EPSG:4326")
    for i, e in enumerate(entries):
        status, school, kind, true, at = e
        tl, ll = to_wgs.iloc[i], to_wgs.iloc[len(entries) + i]
        rid = name = ""
        if at is not None:
            row = rows[i]
            rid = f"{scene}-{row + 1:03d}"
            name = f"{scene} school {row + 1}"
            listed_rows.append((scene, row, rid, name, scene, round(ll.x, 7), round(ll.y, 7)))
        truth_rows.append({
            "registry_id": rid, "status": status, "school": school, "kind": kind, "scene": scene,
            "offset_m": round(float(true.distance(at)), 1) if at is not None else None,
            "lon": round(ll.x, 7) if at is not None else None, "lat": round(ll.y, 7) if at is not None else None,
            "true_lon": round(tl.x, 7), "true_lat": round(tl.y, 7),
        })
