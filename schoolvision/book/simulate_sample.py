"""The simulated mapper of a sampled queue, and the true measures a demo knows (the book and the benchmark).

A sampled item asks whether a school's centre lies in its window (:mod:`schoolvision.review.sample`);
the demo's truth answers (:data:`WINDOW_RULE`): ``school`` when the centroid of a true school
footprint lies in the window, else ``not_school``; never unsure, never wrong. The same rule gives
the true value of each measure of :mod:`schoolvision.review.estimate` over the whole frame, which
an estimate from a sample should cover; :func:`top_probability_count` is what the same budget finds
when spent on a ranking instead.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from schoolvision.book.simulate import answer_items
from schoolvision.io.crs import metric_crs
from schoolvision.io.folders import ScanFolder
from schoolvision.io.schools import read_schools
from schoolvision.review.estimate import MEASURES, estimate_measures
from schoolvision.review.queue import collect_items, order_items
from schoolvision.review.sample import Frame, SampleConfig, build_frame, draw_sample, locate

WINDOW_RULE = "school when a true school footprint's centroid lies in the window, else not a school (never unsure)"
"""How the simulated mapper answers a sampled item."""


def school_windows(frame: Frame, truth: gpd.GeoDataFrame) -> np.ndarray:
    """Row label in ``frame.windows`` of the window holding each true school's centroid (-1: outside the frame)."""
    if not len(truth):
        return np.zeros(0, dtype=int)
    centres = truth.to_crs(metric_crs(truth)).geometry.centroid.to_crs("EPSG:4326")
    lon, lat = centres.x.to_numpy(), centres.y.to_numpy()
    if "scene" in truth.columns:
        return locate(frame, truth["scene"].astype(str).to_numpy(), lon, lat)
    out = np.full(len(truth), -1, dtype=int)
    for scene in frame.grids:  # no scene column: the first scene whose windows hold the centroid
        free = out < 0
        out[free] = locate(frame, np.full(int(free.sum()), scene), lon[free], lat[free])
    return out


def answer_sample(frame: Frame, items: pd.DataFrame, truth: gpd.GeoDataFrame) -> dict[str, str]:
    """Item id -> the simulated mapper's answer (:data:`WINDOW_RULE`) for sampled items of ``frame``."""
    held = set(school_windows(frame, truth).tolist()) - {-1}
    at = locate(frame, items["scene"].astype(str).to_numpy(), items["lon"].to_numpy(float),
                items["lat"].to_numpy(float))
    return {str(i): "school" if a in held else "not_school" for i, a in zip(items["id"], at)}


def true_measures(frame: Frame, truth: gpd.GeoDataFrame) -> dict[str, float]:
    """The value of each measure of :data:`~schoolvision.review.estimate.MEASURES` over the whole frame.

    A window holding two schools counts one, as a mapper's answer does; ``unlisted_schools_one_by_one``
    counts them all, and ``schools_outside_the_frame`` the true schools whose centroid no window holds.
    """
    w = frame.windows
    holds = np.zeros(len(w), dtype=bool)
    at = school_windows(frame, truth)
    at = at[at >= 0]
    holds[at] = True
    per_window = np.bincount(at, minlength=len(w))
    listed = (w["registry_rows"] > 0).to_numpy()
    cand = (w["kind"] == "candidate").to_numpy()
    schools = int(per_window.sum())
    return {
        "unlisted_schools": int(holds[~listed].sum()),
        "unlisted_schools_one_by_one": int(per_window[~listed].sum()),  # two schools in a window count two
        "registry_not_at_school": int(w["registry_rows"].to_numpy()[listed & ~holds].sum()),
        "schools": schools,
        "recall": float(holds[cand].sum() / holds.sum()) if holds.any() else 0.0,
        "precision": float(holds[cand].sum() / cand.sum()) if cand.any() else 0.0,
        "schools_outside_the_frame": int(len(truth) - len(at)),
    }


def top_probability_count(frame: Frame, truth: gpd.GeoDataFrame, budget: int, match_distance: float = 50.0,
                          floor: float = 0.05) -> dict[str, int]:
    """What a review of the ``budget`` most likely items (``review build --order probability``) finds.

    The simulated mapper of the ranked queue (:func:`~schoolvision.book.simulate.answer_items`)
    answers the first ``budget`` items of the scan's ranked queue; the naive count of unlisted
    schools is the distinct true schools it accepted whose window holds no registry row (the
    definition of the estimate's ``unlisted_schools``).
    """
    info, items = collect_items(ScanFolder(frame.scan_dir), floor)
    ranked = pd.DataFrame(order_items(items, "probability", float(info["threshold"]))[:budget])
    answers = answer_items(ranked, truth, match_distance)
    found = set(answers.loc[answers["decision"] == "school", "school"])
    at = school_windows(frame, truth)
    listed = frame.windows["registry_rows"].to_numpy() > 0
    unlisted = {str(n) for n, a in zip(truth["name"], at) if a >= 0 and not listed[a]}
    return {"reviewed": int(len(answers)), "unlisted_schools_found": len(found & unlisted),
            "schools_found": len(found)}


def sample_vs_ranking(scan_dir: str | Path, truth: gpd.GeoDataFrame | str | Path, budget: int, seed: int = 0,
                      floor: float = 0.05, match_distance: float = 50.0) -> pd.DataFrame:
    """One simulated sampled review of ``budget`` windows, its estimates beside the truth and a ranking's count.

    ``truth``: the true school footprints, or a file ``read_schools`` reads (``schools.geojson``).

    Returns:
        One row per measure of :data:`~schoolvision.review.estimate.MEASURES`: ``estimate``, ``low``,
        ``high`` (95%), ``truth`` (the whole frame), and ``ranking`` for ``unlisted_schools``: the
        unlisted schools a review of the ``budget`` most likely items found (:func:`top_probability_count`).
    """
    truth = truth if isinstance(truth, gpd.GeoDataFrame) else read_schools(truth, point_buffer_m=None)
    frame = build_frame(scan_dir, floor)
    items, design = draw_sample(frame, SampleConfig(size=budget, seed=seed, floor=floor))
    items = pd.DataFrame(items)
    measures = estimate_measures(design, items, answer_sample(frame, items, truth))
    true = true_measures(frame, truth)
    top = top_probability_count(frame, truth, budget, match_distance, floor)
    rows = [{"measure": m, **{k: measures[m][k] for k in ("estimate", "low", "high")}, "truth": true[m],
             "ranking": top["unlisted_schools_found"] if m == "unlisted_schools" else None} for m in MEASURES]
    return pd.DataFrame(rows).set_index("measure")
