"""Chapter 8's measures of a review round: both models at both thresholds, on towns nobody reviewed.

A round changes two things at once: the weights (fine-tuned on the reviewed places) and the decision
threshold (tuned again on the home validation town). Scanning every unreviewed town with each model at
each threshold separates the two. Pooled recall and precision come with intervals that resample towns,
so that the interval says how much the numbers move from one town to the next, not only within one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from schoolvision.book.simulate import MapperRound, scan_town
from schoolvision.io.atomic import write_json

LEVEL = 0.95
"""Coverage of the intervals across towns."""

N_BOOT = 2000
"""Resamples of the towns for each interval."""


def threshold_grid(runs: Mapping[str, str | Path], thresholds: Mapping[str, float], scenes: Mapping[str, str | Path],
                   truth: str | Path | gpd.GeoDataFrame, out: str | Path, match_distance: float = 50.0,
                   device: str = "auto") -> pd.DataFrame:
    """Scan each town with each model at each threshold, measured against ``truth``.

    Args:
        runs: model name -> run folder (e.g. ``{"home model": ..., "fine-tuned": ...}``).
        thresholds: threshold name -> P(school) value (each model's own tuned threshold, by name).
        scenes: town name -> its GeoTIFF; each town is scanned alone (its own metric CRS for the matching).
        truth: the towns' true schools.
        out: a folder for the scans (one sub-folder per model, threshold and town).
        match_distance: metres between a candidate and a school footprint for a match (the scan's).
        device: the scans' device.

    Returns:
        One row per (model, threshold, town): ``model``, ``threshold``, ``value``, ``town``, ``schools``,
        ``candidates``, ``found``, ``recall``, ``precision`` and ``novelty`` (the share of the town's
        windows the model's trust map flags as unlike its training data; empty without a trust map).
    """
    rows = []
    for m, (model, run) in enumerate(runs.items()):
        for t, (name, value) in enumerate(thresholds.items()):
            for town, scene in scenes.items():
                summary = scan_town(run, scene, Path(out) / f"m{m}_t{t}_{town}", truth,
                                    match_distance=match_distance, device=device, threshold=float(value))
                ev = summary.evaluation
                rows.append({"model": model, "threshold": name, "value": round(float(value), 4), "town": town,
                             "schools": int(ev["schools"]), "candidates": int(ev["candidates"]),
                             "found": int(ev["true_positives"]), "recall": float(ev["recall"]),
                             "precision": float(ev["precision"]), "novelty": _novelty(summary)})
    return pd.DataFrame(rows)


def _novelty(summary) -> float | None:
    shares = [s.novelty_share for s in getattr(summary, "scenes", []) if s.novelty_share is not None]
    return round(float(np.mean(shares)), 4) if shares else None


def town_interval(found: Sequence[int], total: Sequence[int], seed: int = 0, n_boot: int = N_BOOT,
                  level: float = LEVEL) -> tuple[float, float]:
    """Interval of a pooled ratio (sum of ``found`` over sum of ``total``) when whole towns are resampled.

    With few towns the interval is coarse (three towns have ten distinct resamples), and says so by its width.
    """
    found, total = np.asarray(found, float), np.asarray(total, float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(found), size=(n_boot, len(found)))
    num, den = found[picks].sum(axis=1), total[picks].sum(axis=1)
    ratios = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(ratios, tail)), float(np.percentile(ratios, 100 - tail))


def pooled(grid: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Recall and precision over all towns, per model and threshold, with intervals that resample towns.

    Returns:
        One row per (model, threshold), in the grid's order: ``towns``, ``schools``, ``found``,
        ``candidates``, ``recall`` with ``recall_low``/``recall_high``, ``precision`` with its interval.
    """
    rows = []
    for (model, name), part in grid.groupby(["model", "threshold"], sort=False):
        found, schools, cands = (part[c].to_numpy() for c in ("found", "schools", "candidates"))
        recall = found.sum() / schools.sum() if schools.sum() else 0.0
        precision = found.sum() / cands.sum() if cands.sum() else 0.0
        r_low, r_high = town_interval(found, schools, seed)
        p_low, p_high = town_interval(found, cands, seed)
        rows.append({"model": model, "threshold": name, "value": float(part["value"].iloc[0]),
                     "towns": len(part), "schools": int(schools.sum()), "found": int(found.sum()),
                     "candidates": int(cands.sum()), "recall": round(float(recall), 4),
                     "recall_low": round(r_low, 4), "recall_high": round(r_high, 4),
                     "precision": round(float(precision), 4), "precision_low": round(p_low, 4),
                     "precision_high": round(p_high, 4)})
    return pd.DataFrame(rows)


def budget_sweep(curve: pd.DataFrame, budgets: Sequence[int]) -> pd.DataFrame:
    """Distinct schools found by each order after each review budget (items reviewed, capped at the queue).

    ``curve``: :func:`~schoolvision.book.simulate.discovery`. One row per budget, one column per order.
    """
    queue = int(curve["reviewed"].max()) if len(curve) else 0
    rows = []
    for budget in sorted({min(int(b), queue) for b in budgets if b > 0}):
        row = {"items reviewed": budget}
        for order, part in curve.groupby("order", sort=False):
            row[order] = int(part.loc[part["reviewed"] <= budget, "schools_found"].max())
        rows.append(row)
    return pd.DataFrame(rows).set_index("items reviewed")


OWN = (("home model", "home threshold"), ("fine-tuned", "fine-tuned threshold"))
"""(model, threshold) of each model at its own threshold: the before and the after of a round."""


def _row(table: pd.DataFrame, model: str, threshold: str) -> pd.Series:
    hit = table[(table["model"] == model) & (table["threshold"] == threshold)]
    if hit.empty:
        raise KeyError(f"no row for {model} at the {threshold}")
    return hit.iloc[0]


def glue_values(table: pd.DataFrame) -> dict[str, float]:
    """The round's numbers a chapter glues.

    The fine-tuned model at its threshold (``*_after``, with the interval across towns), and each model at
    the other's threshold (``recall_weights``: fine-tuned weights at the home threshold;
    ``recall_threshold``: home weights at the fine-tuned threshold).
    """
    after = _row(table, *OWN[1])
    weights, threshold = _row(table, OWN[1][0], OWN[0][1]), _row(table, OWN[0][0], OWN[1][1])
    values = {f"{m}_after{s}": float(after[f"{m}{s}"]) for m in ("recall", "precision") for s in ("", "_low", "_high")}
    values |= {"recall_weights": float(weights["recall"]), "precision_weights": float(weights["precision"]),
               "recall_threshold": float(threshold["recall"]), "precision_threshold": float(threshold["precision"])}
    return values


def _change(n: int, what: str) -> str:
    return f"{abs(n)} {what} {'more' if n > 0 else 'fewer'}" if n else f"as many {what}"


def round_verdict(table: pd.DataFrame) -> str:
    """One or two sentences on what the weights and what the threshold did, in schools found (pooled)."""
    before = _row(table, *OWN[0])
    weights, threshold = _row(table, OWN[1][0], OWN[0][1]), _row(table, OWN[0][0], OWN[1][1])
    dw, dt = int(weights["found"] - before["found"]), int(threshold["found"] - before["found"])
    first = (f"At the home threshold the fine-tuned weights find {_change(dw, 'schools')} than the home model "
             f"(precision {before['precision']:.2f} to {weights['precision']:.2f}); the home model at the "
             f"fine-tuned threshold finds {_change(dt, 'schools')} (precision {threshold['precision']:.2f}).")
    if dw > 0 and dt <= 0:
        second = "The gain in recall comes from the weights, not from the new threshold."
    elif dt > 0 and dw <= 0:
        second = "The gain in recall comes from the new threshold, not from the weights."
    elif dw > 0 and dt > 0:
        second = "The weights and the new threshold each account for part of the change."
    else:
        second = "Neither the weights nor the threshold alone finds more schools here."
    return f"{first} {second}"


def home_test_table(record: dict) -> pd.DataFrame:
    """The home test town before and after a round (``round.json``): the same chips as chapter 2's test."""
    rows = {}
    for when in ("before", "after"):
        m = record["home_test"][when]
        boot = m.get("bootstrap", {})
        row = {"threshold": m.get("threshold")}
        for key in ("auprc", "f1", "precision", "recall"):
            low, high = boot.get(key, (None, None))
            row |= {key: m.get(key), f"{key} interval": None if low is None else f"{low:.2f} to {high:.2f}"}
        rows[when] = row
    return pd.DataFrame(rows).T.rename_axis("home test town")


def round_counts(record: dict) -> str:
    """One line: what the mapper decided and which chips the round trained on (``round.json``)."""
    d, c = record["decided"], record["chips"]
    replayed = sum(c["replayed"].values())
    home = sum(c["home_train"].values())
    return (f"decided: {d['school']} school, {d['not_school']} not a school, {d['unsure']} unsure; chips: "
            f"{c['reviewed_school']} school and {c['reviewed_not_school']} not_school from the reviewed places "
            f"({c['hard_negatives']} hard negatives), {replayed} of {home} home training chips replayed; "
            f"{record['epochs']} epochs at lr {record['lr']:g}")


def write_round(out: str | Path, table: pd.DataFrame, grid: pd.DataFrame, record: dict, mapper: MapperRound,
                home_recall: float, **context) -> Path:
    """``review_round.json``: the figures of a round for the results page.

    Before and after are each model at its own threshold, pooled over the towns nobody reviewed (with
    the intervals across towns); the whole grid, the home test town before and after and ``context``
    (region, order, budget, town names) come with them.
    """
    before, after = _row(table, *OWN[0]), _row(table, *OWN[1])
    values = {f"{m}_{w}{s}": float(r[f"{m}{s}"]) for w, r in (("before", before), ("after", after))
              for m in ("recall", "precision") for s in ("", "_low", "_high")}
    result = {
        **values, "home_recall": float(home_recall), "towns": int(after["towns"]), "schools": int(after["schools"]),
        "items_reviewed": mapper.reviewed, "accepted": mapper.schools, "rejected": mapper.not_schools,
        "schools_found_by_review": mapper.schools_found,
        "thresholds": record["thresholds"], "home_test": {w: {k: v for k, v in record["home_test"][w].items()
                                                              if k != "bootstrap"} for w in ("before", "after")},
        "table": table.to_dict(orient="records"), "grid": grid.to_dict(orient="records"), **context,
    }
    return write_json(out, result)
