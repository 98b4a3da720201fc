"""``schoolvision review build --sample N``: a stratified random sample of a scan's places, for an estimate.

A ranked queue says where the schools probably are; it cannot say how many the map lacks, because
what was not ranked was never looked at. A probability sample can (:mod:`schoolvision.review.estimate`).

**The places** (the frame). The scanned area (every window of the probability rasters with data) is
cut into square *windows* one chip wide (``chip_size`` x GSD, the chip the model scored), aligned on
each scene's probability raster; a window at a scene's edge is the part inside it. Every school of
the area lies in exactly one window (the one holding its centre), so the windows count each school
once, and a school the scan missed entirely is still in some window.

**The strata**. A window's kind is ``candidate`` (it holds a candidate of the scan), else
``below_threshold`` (it holds a probability peak between ``floor`` and the threshold, a near miss,
as ``review build --floor`` finds them), else ``window`` (the rest of the area); its registry status
is ``registry`` (a registry row lies in it: scan ``--registry``) or ``new``. Kind x status makes up
to six strata.

**The allocation** (Neyman): the sample size ``n_h`` of stratum ``h`` is proportional to
``N_h S_h``, its number of windows times the standard deviation of "holds a school" that the
documented prior (:data:`PRIOR`) expects there, ``S_h = sqrt(p_h (1 - p_h))``; no stratum gets more
than it holds, and every stratum that holds windows gets at least :data:`MIN_PER_STRATUM` of them
when the budget allows (a stratum's variance needs two). Rounding: largest remainders.

**The draw**: within each stratum, ``n_h`` windows by simple random sampling without replacement
(numpy's ``default_rng(seed)``), so each item's inclusion probability is ``n_h / N_h``; the queue
lists the sample in a random order, so that the first ``k`` items decided are still a random
sample of each stratum.

**The question** a mapper answers for each item: is there a school whose centre lies in the chip
(the window, outlined in the surroundings image)?
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from rasterio.warp import transform as warp_points

from schoolvision.errors import UserError, check_range
from schoolvision.io.folders import ScanFolder, read_probability
from schoolvision.review.queue import collect_items, item_id, scan_key
from schoolvision.scan.scene import SceneScan

KINDS = ("candidate", "below_threshold", "window")
"""Kinds of window, by P(school): holds a candidate, holds a near miss, the rest of the area."""

STATUSES = ("registry", "new")
"""Registry status of a window: a registry row lies in it, or none does (as the review page names them)."""

PRIOR = {"candidate": 0.5, "below_threshold": 0.2, "window": 0.01}
"""Prior share of windows holding a school, per kind, for the Neyman allocation only (the estimate
never uses it): a candidate window is a coin toss before review (the most uncertain stratum, S = 0.5),
one near miss in five is a school, one window in a hundred of the rest holds a school the scan missed."""

MIN_PER_STRATUM = 2
"""Windows drawn at least from each stratum that holds some (when the budget allows)."""

RULE = ("stratified random sample of chip-sized windows (strata: kind candidate / below_threshold / window x "
        "registry status); Neyman allocation from the strata's sizes and the prior share of schools "
        "{prior}; simple random sampling without replacement within each stratum (inclusion probability "
        "n_h / N_h); question: is there a school whose centre lies in the chip?")
"""How the sample was drawn, written in ``queue.json``."""


@dataclass(frozen=True)
class SampleConfig:
    """How ``review build --sample`` draws its items."""

    size: int  # items to draw in all (the review budget)
    seed: int = 0  # seeds the draw and the queue's order
    floor: float = 0.05  # lowest P(school) of a near miss (as ``review build --floor``)

    def __post_init__(self) -> None:
        check_range("--sample", self.size, minimum=1)
        check_range("--floor", self.floor, above=0, below=1)


@dataclass(frozen=True)
class SceneGrid:
    """How a scene's probability raster is cut into windows: ``k`` x ``k`` of its pixels each."""

    transform: object  # affine of the raster as read
    crs: object
    k: int

    def cells(self, lon, lat) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) of the windows holding the WGS84 points."""
        xs, ys = warp_points("EPSG:4326", self.crs, list(lon), list(lat))
        col, row = ~self.transform @ (np.asarray(xs), np.asarray(ys))
        return np.floor(np.asarray(row)).astype(int) // self.k, np.floor(np.asarray(col)).astype(int) // self.k


@dataclass
class Frame:
    """Every window of a scan, one row each: what the sample is drawn from.

    ``windows`` columns: ``scene``, ``row``, ``col`` (the window in its scene's grid), ``kind``,
    ``registry_status``, ``stratum`` (``kind/status``), ``registry_rows``, ``probability`` (highest
    P(school) in it), ``candidate_rank`` (best candidate in it, -1 for none), ``name`` (registry names
    in it), ``x``, ``y`` (centre, scene CRS), ``crs``, ``lon``, ``lat`` (centre, WGS84), ``window``
    (left, bottom, right, top in the scene CRS).
    """

    info: dict  # scan.json
    window_m: float  # side of a window in metres
    windows: pd.DataFrame = field(repr=False)
    grids: dict[str, SceneGrid] = field(default_factory=dict, repr=False)  # scene -> its grid of windows
    scan_dir: str = ""  # the scan folder

    def lookup(self) -> dict[tuple[str, int, int], int]:
        """(scene, row, col) -> row label of the window."""
        w = self.windows
        return {(str(s), int(r), int(c)): int(i) for i, s, r, c in zip(w.index, w["scene"], w["row"], w["col"])}

    def sizes(self) -> dict[str, int]:
        """Stratum -> number of windows, for every stratum (empty ones too), in a fixed order."""
        counts = self.windows["stratum"].value_counts()
        return {s: int(counts.get(s, 0)) for s in strata_names()}


def strata_names() -> list[str]:
    """Every stratum's name (``kind/status``), in a fixed order."""
    return [f"{k}/{s}" for k in KINDS for s in STATUSES]


def _pixel_metres(transform, crs, lat: float) -> float:
    """Side of a raster pixel in metres (geographic rasters: at latitude ``lat``)."""
    size = abs(transform.a) or 1.0
    if crs is not None and crs.is_geographic:
        return size * 111_320.0 * max(math.cos(math.radians(lat)), 1e-6)
    return size * (crs.linear_units_factor[1] if crs is not None and crs.is_projected else 1.0)


def _scene_windows(scene: SceneScan, window_m: float) -> tuple[SceneGrid, pd.DataFrame]:
    """The grid of one scene and its windows that hold data: highest P(school), centre and bounds."""
    prob, transform, crs = read_probability(scene.probability, max_side=16384)
    h, w = prob.shape
    lat = warp_points(crs, "EPSG:4326", [transform.c + transform.a * w / 2], [transform.f + transform.e * h / 2])[1][0]
    k = max(1, int(round(window_m / _pixel_metres(transform, crs, lat))))
    rows, cols = math.ceil(h / k), math.ceil(w / k)
    padded = np.full((rows * k, cols * k), np.nan, dtype=np.float32)
    padded[:h, :w] = prob
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows: no data, dropped below
        best = np.nanmax(padded.reshape(rows, k, cols, k), axis=(1, 3))
    r, c = np.nonzero(np.isfinite(best))
    c0, c1 = c * k, np.minimum((c + 1) * k, w)
    r0, r1 = r * k, np.minimum((r + 1) * k, h)
    x, y = transform @ ((c0 + c1) / 2, (r0 + r1) / 2)
    x0, y0 = transform @ (c0, r0)
    x1, y1 = transform @ (c1, r1)
    lon, lat = warp_points(crs, "EPSG:4326", list(x), list(y)) if len(r) else ([], [])
    bounds = np.stack([np.minimum(x0, x1), np.minimum(y0, y1), np.maximum(x0, x1), np.maximum(y0, y1)], axis=1)
    return SceneGrid(transform, crs, k), pd.DataFrame({
        "scene": scene.scene, "row": r, "col": c, "probability": best[r, c].astype(float), "x": np.round(x, 3),
        "y": np.round(y, 3), "crs": str(crs), "lon": np.round(lon, 7), "lat": np.round(lat, 7),
        "window": [[round(float(v), 3) for v in b] for b in bounds]})


def locate(frame: Frame, scenes, lon, lat) -> np.ndarray:
    """Row labels in ``frame.windows`` of the windows holding the points (-1: outside every window)."""
    scenes, lon, lat = np.asarray(scenes, dtype=str), np.asarray(lon, float), np.asarray(lat, float)
    out = np.full(len(scenes), -1, dtype=int)
    lookup = frame.lookup()
    for name in np.unique(scenes):
        grid = frame.grids.get(str(name))
        if grid is None:
            continue
        at = np.nonzero(scenes == name)[0]
        rows, cols = grid.cells(lon[at], lat[at])
        out[at] = [lookup.get((str(name), int(r), int(c)), -1) for r, c in zip(rows, cols)]
    return out


def build_frame(scan_dir: str | Path, floor: float = 0.05) -> Frame:
    """The windows of a finished scan, each with its kind, registry status and stratum (see the module docstring).

    Raises:
        UserError: the scan folder is incomplete (as ``review build``).
    """
    folder = ScanFolder(scan_dir)
    info, items = collect_items(folder, floor)
    scenes = [SceneScan(**s) for s in info["scenes"]]
    window_m = float(info.get("chip_size", 64)) * float(info.get("gsd") or scenes[0].scan_gsd or 1.0)
    parts = [_scene_windows(s, window_m) for s in scenes]
    frame = Frame(info=info, window_m=window_m, windows=pd.concat([p[1] for p in parts], ignore_index=True),
                  grids={s.scene: p[0] for s, p in zip(scenes, parts)}, scan_dir=str(scan_dir))
    windows = frame.windows
    for column, value in (("candidates", 0), ("near_misses", 0), ("registry_rows", 0), ("candidate_rank", -1),
                          ("name", "")):
        windows[column] = value
    points = pd.DataFrame([it for it in items if it["source"] != "registry"],
                          columns=["source", "scene", "lon", "lat", "candidate_rank"])
    points["at"] = locate(frame, points["scene"], points["lon"], points["lat"])
    points = points[points["at"] >= 0]
    cands = points[points["source"] == "candidate"]
    windows.loc[cands["at"].unique(), "candidate_rank"] = cands.groupby("at")["candidate_rank"].min()
    windows["candidates"] = cands["at"].value_counts().reindex(windows.index, fill_value=0)
    near = points[points["source"] != "candidate"]
    windows["near_misses"] = near["at"].value_counts().reindex(windows.index, fill_value=0)
    if info.get("registry"):  # every registry row in the scenes, confirmed or not seen
        audit = folder.read_registry_audit()
        rows = audit[(audit["kind"] == "registry") & (audit["scene"].astype(str) != "")].copy()
        rows["at"] = locate(frame, rows["scene"].astype(str), rows["lon"], rows["lat"])
        rows = rows[rows["at"] >= 0]
        windows["registry_rows"] = rows["at"].value_counts().reindex(windows.index, fill_value=0)
        names = rows.groupby("at")["name"].agg(lambda v: "; ".join(sorted(map(str, v))))
        windows.loc[names.index, "name"] = names
    windows["kind"] = np.where(windows["candidates"] > 0, "candidate",
                               np.where(windows["near_misses"] > 0, "below_threshold", "window"))
    windows["registry_status"] = np.where(windows["registry_rows"] > 0, "registry", "new")
    windows["stratum"] = windows["kind"] + "/" + windows["registry_status"]
    return frame


def neyman_allocation(sizes: dict[str, int], sds: dict[str, float], n: int,
                      minimum: int = MIN_PER_STRATUM) -> dict[str, int]:
    """Sample size per stratum: ``n`` shared in proportion to ``N_h * S_h``, capped at ``N_h``.

    A stratum whose share exceeds what it holds takes all of it, and the others share the rest
    again; shares are rounded by largest remainders. Then every stratum holding windows is raised to
    ``min(minimum, N_h)`` (while the budget allows), taken from the largest allocations. ``n`` above
    the frame's size takes every window (a census).
    """
    names = list(sizes)
    cap = np.array([sizes[s] for s in names], dtype=int)
    weight = cap * np.array([sds.get(s, 0.0) for s in names], dtype=float)
    weight = np.where(weight > 0, weight, cap * 1e-9)  # a stratum with S = 0 still takes what others cannot
    n = int(min(n, cap.sum()))
    alloc = np.zeros(len(names), dtype=int)
    while alloc.sum() < n:
        left, room = n - alloc.sum(), cap - alloc
        w = np.where(room > 0, weight, 0.0)
        share = left * w / w.sum()
        full = (share >= room) & (room > 0)
        if full.any():
            alloc[full] = cap[full]
            continue
        whole = np.floor(share).astype(int)
        alloc += whole
        for i in np.argsort(-(share - whole), kind="stable")[: n - alloc.sum()]:
            alloc[i] += 1
    floor = np.minimum(minimum, cap)
    for i in np.argsort(-weight, kind="stable"):
        while alloc[i] < floor[i]:
            donor = int(np.argmax(alloc - floor))
            if alloc[donor] <= floor[donor]:
                break  # the budget cannot give every stratum its minimum
            alloc[donor] -= 1
            alloc[i] += 1
    return {s: int(a) for s, a in zip(names, alloc)}


def draw_sample(frame: Frame, config: SampleConfig) -> tuple[list[dict], dict]:
    """(items in review order, the design for ``queue.json``) of a stratified sample of ``frame``.

    Items are queue items (as :func:`~schoolvision.review.queue.collect_items` makes them, images
    not yet made) with ``stratum``, ``inclusion_probability``, ``registry_rows`` and ``window``.
    """
    sizes = frame.sizes()
    sds = {s: math.sqrt(PRIOR[s.split("/")[0]] * (1 - PRIOR[s.split("/")[0]])) for s in sizes}
    alloc = neyman_allocation(sizes, sds, config.size)
    rng = np.random.default_rng(config.seed)
    key = scan_key(frame.info)
    windows = frame.windows
    picked = []
    for name in strata_names():
        members = windows.index[windows["stratum"] == name].to_numpy()
        if alloc[name]:
            picked.extend(rng.choice(members, size=alloc[name], replace=False).tolist())
    picked = [picked[i] for i in rng.permutation(len(picked))]
    items = []
    for at in picked:
        w = windows.loc[at]
        n_h, big_n = alloc[w["stratum"]], sizes[w["stratum"]]
        items.append({"id": item_id(key, float(w["lon"]), float(w["lat"])), "source": w["kind"],
                      "registry_status": w["registry_status"], "probability": round(float(w["probability"]), 4),
                      "candidate_rank": int(w["candidate_rank"]), "scene": str(w["scene"]), "name": str(w["name"]),
                      "lon": float(w["lon"]), "lat": float(w["lat"]), "stratum": w["stratum"],
                      "inclusion_probability": n_h / big_n, "registry_rows": int(w["registry_rows"]),
                      "window": [round(v, 3) for v in w["window"]]})
    design = {"size": sum(alloc.values()), "requested": config.size, "seed": config.seed, "floor": config.floor,
              "window_m": frame.window_m, "frame_windows": int(len(windows)),
              "rule": RULE.format(prior=json.dumps(PRIOR)), "prior": dict(PRIOR),
              "strata": {s: {"N": sizes[s], "n": alloc[s], "prior_share": PRIOR[s.split("/")[0]],
                             "registry_rows": int(windows.loc[windows["stratum"] == s, "registry_rows"].sum()),
                             "inclusion_probability": alloc[s] / sizes[s] if sizes[s] else 0.0}
                         for s in strata_names()},
              "config": asdict(config)}
    return items, design


def sample_items(scan_dir: str | Path, config: SampleConfig) -> tuple[dict, list[dict], dict]:
    """(scan.json, sampled items in review order, design): :func:`build_frame` then :func:`draw_sample`."""
    frame = build_frame(scan_dir, config.floor)
    if not len(frame.windows):
        raise UserError("the scan's probability rasters hold no data: nothing to sample", scan_dir)
    items, design = draw_sample(frame, config)
    return frame.info, items, design
