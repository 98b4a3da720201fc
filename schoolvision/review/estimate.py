"""``schoolvision estimate``: how many schools the registry lacks, with a 95% interval, from a reviewed sample.

The queue is a stratified random sample of the scanned area's windows (``review build --sample``,
:mod:`schoolvision.review.sample`); each decided item says whether a school's centre lies in its
window. For each stratum ``h`` (``N_h`` windows, ``n_h`` of them decided, ``y`` the item's value)
the total ``N_h * mean(y)`` is estimated and summed (the stratified expansion estimator), with the
variance ``N_h^2 (1 - n_h / N_h) s_h^2 / n_h`` (finite-population correction: a stratum reviewed in
full adds none). The 95% interval is the estimate +- 1.96 standard errors, clipped to what the
review proves (at least the schools seen, at most every undecided window a school).

**Small counts** (:data:`SMALL`): where a stratum's decided items hold fewer than 5 schools or fewer
than 5 non-schools, ``s_h^2`` is the add-two share's ``p~(1 - p~)``, ``p~ = (schools + 1) / (n_h + 2)``
(Agresti-Coull), instead of the sample variance: a stratum where no school was seen is not taken as
free of schools, and a stratum with no decided item is flagged and bounded by ``N_h`` above.

**Measures** (:data:`MEASURES`), over the scanned area:

- ``unlisted_schools``: schools whose window holds no registry row (missing from the registry, or
  listed more than a window away: misplaced);
- ``registry_not_at_school``: registry rows whose window holds no school (misplaced, closed or wrong);
- ``schools``: every school;
- ``recall``: the share of the schools whose window holds a candidate of the scan (a ratio of two
  estimated totals, its variance by linearisation);
- ``precision``: the share of the candidate windows that hold a school.

**Unsure answers** (:data:`UNSURE_RULE`): an item answered unsure (or left undecided, or a tie of
mappers) counts as not reviewed: its stratum's share comes from the stratum's decided items. The
estimate with every unsure answered "school", and with every unsure answered "not a school", is
reported beside it (``unsure_sensitivity``).

**Several decisions files** (:data:`COMBINE_RULE`): each file's latest decision per item is one
mapper's vote; an item's decision is the majority of its school / not-school votes, a tie counts
as unsure; an item with two or more such votes that are not all the same is a disagreement, and
the disagreement rate is disagreements over items with two or more votes.

The interval covers the sampling error of the review and nothing else: a school that cannot be seen
in the imagery (a school in a house, under trees, a tent school), or that a mapper misjudges, is
outside it, as is any place outside the scanned area.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from schoolvision.errors import UserError
from schoolvision.io.atomic import write_json
from schoolvision.io.folders import ReviewFolder
from schoolvision.review.decisions import latest, read_decisions

Z95 = 1.959964
"""Normal quantile of a two-sided 95% interval."""

SMALL = 5
"""Fewer schools, or fewer non-schools, than this among a stratum's decided items: the add-two variance."""

UNSURE_RULE = ("unsure answers, undecided items and ties between mappers count as not reviewed: each stratum's share "
               "comes from its decided items; unsure_sensitivity gives the estimates with every unsure item a school "
               "and with none")
COMBINE_RULE = ("each file's latest decision per item is one vote; the majority of the school / not_school votes "
                "decides, a tie is unsure; an item with two or more votes not all alike is a disagreement")
INTERVAL_RULE = ("stratified expansion estimator, variance with finite-population correction; where a stratum's "
                 f"decided items hold fewer than {SMALL} schools or non-schools, the add-two share "
                 "(schools + 1) / (n + 2) gives its variance; 95% interval = estimate +- 1.96 SE, clipped to "
                 "[seen, seen + undecided windows]")
COVERS = ("the interval covers the sampling error of the reviewed windows only: not schools invisible in the "
          "imagery, not a mapper's mistakes, not places outside the scanned area")

MEASURES = {
    "unlisted_schools": "schools whose window holds no registry row (missing from the registry, or misplaced)",
    "registry_not_at_school": "registry rows whose window holds no school (misplaced, closed or wrong)",
    "schools": "schools in the scanned area",
    "recall": "share of the schools whose window holds a candidate of the scan",
    "precision": "share of the candidate windows holding a school",
}


@dataclass
class Combined:
    """The decisions of one or more files, one per item."""

    decisions: dict[str, str]  # item id -> school / not_school / unsure
    votes: int  # items with at least one school / not_school vote
    multiple: int  # items with two or more such votes
    disagreements: int  # of those, items whose votes differ

    @property
    def disagreement_rate(self) -> float:
        """Disagreements over items with two or more votes (0 when none has)."""
        return self.disagreements / self.multiple if self.multiple else 0.0


def combine(files: Sequence[Mapping[str, str]]) -> Combined:
    """One decision per item from several mappers' decisions (:data:`COMBINE_RULE`)."""
    ids = list(dict.fromkeys(i for f in files for i in f))
    out, votes, multiple, disagree = {}, 0, 0, 0
    for i in ids:
        said = [f[i] for f in files if f.get(i) in ("school", "not_school")]
        yes, no = said.count("school"), said.count("not_school")
        votes += bool(said)
        multiple += len(said) >= 2
        disagree += yes > 0 and no > 0
        out[i] = "school" if yes > no else "not_school" if no > yes else "unsure"
    return Combined(decisions=out, votes=votes, multiple=multiple, disagreements=disagree)


def read_combined(paths: Sequence[str | Path], queue_dir: str | Path) -> Combined:
    """The decisions files of a sampled queue, combined; refused when one belongs to another queue.

    Raises:
        UserError: the queue is not a sample, a file is unreadable (see ``read_decisions``), or holds
            decisions of another queue (one line naming the file).
    """
    folder = ReviewFolder(queue_dir)
    queue = folder.read_queue()
    if not isinstance(queue.get("sample"), dict):
        raise UserError("the queue is not a sample; build it with schoolvision review build --sample N",
                        folder.queue_path)
    ids = set(folder.read_items()["id"])
    files = []
    for path in paths:
        decided, _ = latest(read_decisions(path))
        other = {d["queue_id"] for d in decided.values() if d.get("queue_id") not in (None, queue["queue_id"])}
        unknown = [i for i in decided if i not in ids]
        if other or unknown:
            whence = f"queue {sorted(other)[0]}" if other else f"{len(unknown)} item(s) not in it, e.g. {unknown[0]}"
            raise UserError(f"decisions of another queue ({whence}), not of queue {queue['queue_id']} "
                            f"({folder.root})", path)
        files.append({i: d["decision"] for i, d in decided.items()})
    return combine(files)


def _stratum_variance(y: np.ndarray) -> float:
    """``s_h^2`` of a stratum's decided values (:data:`SMALL`: the add-two share for few 0/1 values)."""
    n = len(y)
    if np.isin(y, (0, 1)).all():
        k = float(y.sum())
        if min(k, n - k) < SMALL:
            p = (k + 1) / (n + 2)
            return p * (1 - p)
    if n < 2:
        top = float(np.max(np.abs(y))) if n else 1.0
        return top * top / 4  # the largest variance of a value in [0, top]
    return float(np.var(y, ddof=1))


def _totals(strata: dict, frame: pd.DataFrame, value: np.ndarray, room: np.ndarray, capacity: dict) -> dict:
    """Estimate, variance and bounds of the total of ``value`` over ``strata``, stratum by stratum.

    ``frame`` rows are the decided items (``stratum``); ``room`` the largest value each could have held,
    ``capacity`` the largest total of each stratum (bounds: the undecided windows hold the rest at most).
    """
    est = var = seen = undecided = unreviewed = 0.0
    per = {}
    for name, s in strata.items():
        big_n = int(s["N"])
        if not big_n:
            continue
        mask = (frame["stratum"] == name).to_numpy()
        y = value[mask]
        n = len(y)
        seen += float(y.sum())
        undecided += max(float(capacity[name]) - float(room[mask].sum()), 0.0)
        if n == 0:
            unreviewed += float(capacity[name])
            per[name] = {"N": big_n, "n": 0, "estimate": None}
            continue
        total = big_n * float(y.mean())
        v = big_n * big_n * (1 - n / big_n) * _stratum_variance(y) / n
        est, var = est + total, var + v
        per[name] = {"N": big_n, "n": n, "estimate": round(total, 3), "se": math.sqrt(v)}
    return {"estimate": est, "var": var, "seen": seen, "max": seen + undecided, "unreviewed": unreviewed,
            "strata": per}


def _interval(t: dict) -> dict:
    """The 95% interval of a total: Wald, widened by unreviewed strata, clipped to [seen, max]."""
    half = Z95 * math.sqrt(t["var"])
    low = min(max(t["estimate"] - half, t["seen"]), t["estimate"])
    high = max(min(t["estimate"] + half + t["unreviewed"], t["max"]), t["estimate"])
    return {"estimate": round(t["estimate"], 3), "low": round(low, 3), "high": round(high, 3),
            "se": round(math.sqrt(t["var"]), 3), "seen": t["seen"]}


def estimate_measures(design: dict, items: pd.DataFrame, decisions: Mapping[str, str]) -> dict:
    """The measures of :data:`MEASURES` with their 95% intervals, from a sample's design and decisions.

    Args:
        design: ``queue.json``'s ``sample`` (strata with ``N``).
        items: the queue's items (``stratum``, ``registry_rows``, ``source``, ``id``).
        decisions: item id -> school / not_school / unsure; unsure and absent items are not reviewed.

    Returns:
        Measure -> ``estimate``, ``low``, ``high``, ``se``, ``seen`` (and per stratum for the totals).
    """
    strata = design["strata"]
    dec = items.assign(decision=items["id"].map(decisions))
    dec = dec[dec["decision"].isin(["school", "not_school"])].reset_index(drop=True)
    school = (dec["decision"] == "school").to_numpy(dtype=float)
    rows = pd.to_numeric(dec["registry_rows"], errors="coerce").fillna(0).to_numpy(dtype=float)
    listed = {s for s in strata if s.endswith("/registry")}
    cand = {s for s in strata if s.startswith("candidate/")}
    in_listed = dec["stratum"].isin(listed).to_numpy()

    def only(names):
        return {s: v for s, v in strata.items() if s in names}

    ones = np.ones(len(dec))
    windows = {s: int(v["N"]) for s, v in strata.items()}
    out = {}
    unlisted = _totals(only(set(strata) - listed), dec, school, ones, windows)
    out["unlisted_schools"] = {**_interval(unlisted), "strata": unlisted["strata"]}
    wrong = _totals(only(listed), dec, np.where(in_listed, rows * (1 - school), 0.0), rows,
                    {s: int(v.get("registry_rows", v["N"])) for s, v in strata.items()})
    out["registry_not_at_school"] = {**_interval(wrong), "strata": wrong["strata"]}
    everything = _totals(strata, dec, school, ones, windows)
    out["schools"] = {**_interval(everything), "strata": everything["strata"]}
    found = _totals(only(cand), dec, school, ones, windows)
    n_cand = sum(int(strata[s]["N"]) for s in cand)
    out["precision"] = _ratio(found, float(n_cand), found["var"] / n_cand**2 if n_cand else 0.0)
    r = found["estimate"] / everything["estimate"] if everything["estimate"] else 0.0
    lin = {s: ((1 - r) if s in cand else -r) ** 2 for s in strata}  # z = y_candidate - R y, per stratum
    var_r = sum(lin[s] * (p.get("se", 0.0) ** 2) for s, p in everything["strata"].items())
    out["recall"] = _ratio(found, everything["estimate"], var_r / everything["estimate"] ** 2
                           if everything["estimate"] else 0.0)
    return out


def _ratio(numerator: dict, denominator: float, var: float) -> dict:
    r = numerator["estimate"] / denominator if denominator else 0.0
    half = Z95 * math.sqrt(var)
    return {"estimate": round(r, 4), "low": round(max(0.0, r - half), 4), "high": round(min(1.0, r + half), 4),
            "se": round(math.sqrt(var), 4)}


def estimate(queue_dir: str | Path, decisions: Sequence[str | Path], out: str | Path | None = None,
             overwrite: bool = False) -> dict:
    """Estimate from a sampled queue and its decisions files; write ``estimate.json`` (atomically).

    Args:
        queue_dir: a queue made by ``review build --sample``.
        decisions: one or more ``decisions.geojson`` exported from its ``review.html``.
        out: the JSON to write (default: ``QUEUE/estimate.json``).
        overwrite: replace an existing ``out``.

    Returns:
        What ``estimate.json`` holds.

    Raises:
        UserError: see :func:`read_combined`; ``out`` exists (without ``overwrite``).
    """
    folder = ReviewFolder(queue_dir)
    out = Path(out) if out is not None else folder.root / "estimate.json"
    if out.exists() and not overwrite:
        raise UserError("estimate file exists; pass --overwrite or choose another --out", out)
    combined = read_combined(decisions, queue_dir)
    queue, items = folder.read_queue(), folder.read_items()
    design = queue["sample"]
    measures = estimate_measures(design, items, combined.decisions)
    unsure = [i for i in items["id"] if combined.decisions.get(i) == "unsure"]
    sensitivity = {}
    for answer in ("school", "not_school"):
        filled = {**combined.decisions, **dict.fromkeys(unsure, answer)}
        m = estimate_measures(design, items, filled)
        sensitivity[f"unsure_as_{answer}"] = {k: v["estimate"] for k, v in m.items()}
    counts = {d: sum(v == d for v in combined.decisions.values()) for d in ("school", "not_school", "unsure")}
    missing = [s for s, p in measures["schools"]["strata"].items() if p.get("n") == 0]
    record = {
        "queue_id": queue["queue_id"], "queue": str(folder.root.resolve()), "scan": queue.get("scan", ""),
        "decisions_files": [str(Path(p)) for p in decisions], "items": int(len(items)),
        "decided": counts["school"] + counts["not_school"], "counts": counts,
        "undecided": int(len(items)) - len(combined.decisions),
        "mappers": len(decisions), "items_with_several_votes": combined.multiple,
        "disagreements": combined.disagreements, "disagreement_rate": round(combined.disagreement_rate, 4),
        "measures": measures, "definitions": MEASURES, "unsure_sensitivity": sensitivity,
        "strata_without_decisions": missing,
        "rules": {"interval": INTERVAL_RULE, "unsure": UNSURE_RULE, "combine": COMBINE_RULE, "sample": design["rule"]},
        "covers": COVERS,
    }
    write_json(out, record)
    return {**record, "out": str(out)}


def table(record: dict) -> str:
    """The measures of ``estimate.json`` as a short text table."""
    lines = [f"{'measure':<24} {'estimate':>9}  95% interval"]
    for name, m in record["measures"].items():
        fmt = "{:.3f}" if name in ("recall", "precision") else "{:.1f}"
        lines.append(f"{name:<24} {fmt.format(m['estimate']):>9}  [{fmt.format(m['low'])}, {fmt.format(m['high'])}]")
    return "\n".join(lines)
