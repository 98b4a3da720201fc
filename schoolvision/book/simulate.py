"""A simulated mapper, and the bookkeeping of one review round (chapter 8).

The book cannot ask a person to review its queue, so the demo's ground truth answers instead, by
one rule (:data:`MAPPER_RULE`): an item is a school when its place lies within ``match_distance``
metres of a true school footprint (the scan's own matching distance), else it is not; this mapper
never answers "unsure" and never errs. Its answers are written by the product's one writer of
``review.html``'s export (:func:`~schoolvision.review.decisions.write_decisions`), so ``review import``
reads them like a person's. It is the only simulated mapper of a ranked queue (tests and benchmarks
use it too); :mod:`~schoolvision.book.simulate_sample` answers a sampled queue by its window rule.

Also here, so that the chapter's cells only call the library:

- :func:`discovery`: schools found against items reviewed, for each ranking rule of ``review build``;
- :func:`training_labels`: the schools of a fine-tuning: the review's accepted places beside the
  home region's schools (whose held-out towns keep validating and testing the model);
- :func:`registry_review`: the registry audit of a scan, checked against the demo's registry truth.

The round's own measures (both models at both thresholds, across towns) are in
:mod:`~schoolvision.book.round_study`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from shapely.geometry import Point

from schoolvision.errors import UserError
from schoolvision.io.atomic import write_text
from schoolvision.io.crs import metric_crs
from schoolvision.io.folders import ReviewFolder, ScanFolder
from schoolvision.io.schools import read_schools
from schoolvision.review.decisions import write_decisions
from schoolvision.review.queue import ORDERS, collect_items, order_items
from schoolvision.scan.runner import ScanConfig, ScanSummary, run_scan

MAPPER_RULE = ("school when the item's place lies within the match distance of a true school footprint, "
               "else not a school (never unsure)")
"""How the simulated mapper decides."""

START = datetime(2026, 1, 1, tzinfo=UTC)
"""Timestamp of the simulated mapper's first decision (one second per item after it): fixed, so that
the decisions file, and everything made from it, is the same on every run."""


@dataclass
class MapperRound:
    """What the simulated mapper did with a queue."""

    decisions: Path  # decisions.geojson, as review.html exports it
    reviewed: int  # items decided (the first ``k`` of the queue)
    schools: int  # items answered "school"
    not_schools: int  # items answered "not_school"
    schools_found: int  # distinct true schools among the "school" answers
    answers: pd.DataFrame  # the reviewed items with ``decision``, ``school`` (true name or "") and ``distance_m``

    @property
    def by_item(self) -> dict[str, str]:
        """Item id -> decision, in queue order."""
        return dict(zip(self.answers["id"].astype(str), self.answers["decision"]))


def answer_items(items: pd.DataFrame, truth: gpd.GeoDataFrame, match_distance: float = 50.0) -> pd.DataFrame:
    """The simulated mapper's answer for each item (rows with ``lon``, ``lat`` in WGS84): :data:`MAPPER_RULE`.

    Args:
        items: queue items (``ReviewFolder.read_items()`` or ``collect_items``' items as a frame).
        truth: the true school footprints (``read_schools(schools.geojson)``).
        match_distance: metres from the place to a footprint within which the item is that school.

    Returns:
        A copy of ``items`` with ``decision`` (school / not_school), ``school`` (the nearest true school's
        name when it is one, else "") and ``distance_m`` (to the nearest footprint).
    """
    out = items.copy().reset_index(drop=True)
    if not len(out):
        return out.assign(decision=pd.Series(dtype=str), school=pd.Series(dtype=str),
                          distance_m=pd.Series(dtype=float))
    if not len(truth):
        return out.assign(decision="not_school", school="", distance_m=np.inf)
    utm = metric_crs(truth)
    places = gpd.GeoSeries([Point(x, y) for x, y in zip(out["lon"], out["lat"])], crs="EPSG:4326").to_crs(utm)
    shapes = truth.to_crs(utm).geometry.to_numpy()
    d = shapely.distance(places.to_numpy()[:, None], shapes[None, :]).reshape(len(out), len(shapes))
    nearest = d.argmin(axis=1)
    dist = d[np.arange(len(out)), nearest]
    hit = dist <= match_distance
    names = (truth["name"] if "name" in truth.columns else pd.Series(truth.index)).astype(str).to_numpy()
    out["decision"] = np.where(hit, "school", "not_school")
    out["school"] = np.where(hit, names[nearest], "")
    out["distance_m"] = np.round(dist, 2)
    return out


def simulate_review(queue_dir: str | Path, truth: str | Path | gpd.GeoDataFrame, out: str | Path,
                    k: int | None = None, match_distance: float = 50.0) -> MapperRound:
    """Let the simulated mapper decide the first ``k`` items of a review queue; write its decisions.

    Args:
        queue_dir: a queue made by ``review build`` (:class:`~schoolvision.io.folders.ReviewFolder`).
        truth: the true school footprints: a file ``read_schools`` reads, or what it returned.
        out: the ``decisions.geojson`` to write (what ``review import`` reads).
        k: items to review, in queue order; None: all of them.
        match_distance: see :func:`answer_items`.

    Returns:
        The decisions file and the counts of the round.

    Raises:
        UserError: the queue folder is incomplete, or ``k`` is not positive.
    """
    if k is not None and k < 1:
        raise UserError(f"k must be at least 1, got {k}")
    folder = ReviewFolder(queue_dir)
    items = folder.read_items()
    schools = truth if isinstance(truth, gpd.GeoDataFrame) else read_schools(truth, point_buffer_m=None)
    answers = answer_items(items.head(k) if k is not None else items, schools, match_distance)
    stamps = [(START + timedelta(seconds=n)).isoformat().replace("+00:00", "Z") for n in range(len(answers))]
    path = write_decisions(out, queue_dir, dict(zip(answers["id"].astype(str), answers["decision"])),
                           timestamp=stamps, mapper="simulated: " + MAPPER_RULE)
    said_school = answers["decision"] == "school"
    return MapperRound(decisions=Path(path), reviewed=len(answers), schools=int(said_school.sum()),
                       not_schools=int((~said_school).sum()),
                       schools_found=int(answers.loc[said_school, "school"].nunique()), answers=answers)


def discovery(scan_dir: str | Path, truth: str | Path | gpd.GeoDataFrame, orders: Sequence[str] = ORDERS,
              floor: float = 0.05, match_distance: float = 50.0) -> pd.DataFrame:
    """Distinct true schools found after each item reviewed, for each ranking rule of ``review build``.

    The queue's items (as ``review build --floor`` collects them, without their images) are ranked by
    each rule and answered by the simulated mapper.

    Returns:
        One row per (order, items reviewed): ``order``, ``reviewed`` (1..N), ``schools_found``,
        ``school`` (whether that item was one).
    """
    info, items = collect_items(ScanFolder(scan_dir), floor)
    schools = truth if isinstance(truth, gpd.GeoDataFrame) else read_schools(truth, point_buffer_m=None)
    rows = []
    for order in orders:
        ranked = pd.DataFrame(order_items(items, order, float(info["threshold"])), columns=["id", "lon", "lat"])
        answers = answer_items(ranked, schools, match_distance)
        seen: set[str] = set()
        for n, row in enumerate(answers.itertuples(index=False), start=1):
            if row.decision == "school":
                seen.add(row.school)
            rows.append({"order": order, "reviewed": n, "schools_found": len(seen),
                         "school": row.decision == "school"})
    return pd.DataFrame(rows, columns=["order", "reviewed", "schools_found", "school"])


def training_labels(review_labels: str | Path, home_schools: str | Path, out: str | Path,
                    accepted: int | None = None) -> Path:
    """The school labels of a fine-tuning: the review's accepted places and the home region's schools.

    The review's places are points (``label`` = ``school`` in ``review import``'s labels); the home
    schools keep their footprints. Every row says where it comes from (``provenance``: review or home).

    Args:
        review_labels: the labels ``review import`` wrote.
        home_schools: the school labels of the home region (``CHIPS/schools.geojson``).
        out: the GeoJSON to write.
        accepted: how many places the review accepted (``ImportSummary.counts["school"]``); 0 skips
            reading them (a filter that keeps nothing is an error of ``read_schools``).

    Returns:
        ``out``.
    """
    home = read_schools(home_schools, point_buffer_m=None).assign(provenance="home")
    parts = [home]
    if accepted is None or accepted > 0:
        parts.append(read_schools(review_labels, point_buffer_m=None, where="label=school").assign(provenance="review"))
    both = gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), crs="EPSG:4326")
    both = both[["name", "provenance", "geometry"]].assign(label="school")
    return write_text(out, both.to_json(drop_id=True))


def scan_town(run: str | Path, scene: str | Path, out: str | Path, truth: str | Path,
              registry: str | Path | None = None, match_distance: float = 50.0,
              device: str = "auto", threshold: float | None = None) -> ScanSummary:
    """Scan one town as chapter 8 does: at the run's tuned threshold (or ``threshold``), measured against ``truth``.

    ``registry`` adds the registry audit (``scan --registry``); no web map, no progress bar.
    """
    config = ScanConfig(run=Path(run), imagery=[Path(scene)], out_dir=Path(out), schools=Path(truth),
                        registry=None if registry is None else Path(registry), match_distance=match_distance,
                        device=device, threshold=threshold, overwrite=True, make_map=False, progress=False)
    with warnings.catch_warnings():  # a new region is unlike the training data by design: novelty_lines says it
        warnings.filterwarnings("ignore", message=".*look unlike the training data")
        return run_scan(config)


def novelty_lines(scans: dict[str, ScanSummary]) -> str:
    """One line per scan (name -> summary): the share of its windows the trust map flags as unlike training."""
    return "\n".join(f"{name}: {s.novelty_share:.0%} of its windows look unlike the training data"
                      for name, summary in scans.items() for s in summary.scenes if s.novelty_share is not None)


def scan_table(evaluations: dict[str, dict]) -> pd.DataFrame:
    """One row per scan (name -> ``evaluation.json``): schools, candidates, found, recall, precision."""
    keys = ["schools", "candidates", "true_positives", "recall", "precision"]
    table = pd.DataFrame([{k: ev.get(k) for k in keys} for ev in evaluations.values()], index=list(evaluations))
    return table.rename(columns={"true_positives": "found"})


def registry_review(scan_dir: str | Path, registry_truth: str | Path, answers: pd.DataFrame | None = None,
                    scenes: Sequence[str] | None = None) -> pd.DataFrame:
    """The registry audit of a scan beside the demo's registry truth, and what a review added to it.

    Args:
        scan_dir: a scan made with ``--registry``.
        registry_truth: the demo's ``registry_truth.csv`` (what each registry row really is).
        answers: the reviewed items with their answers (:attr:`MapperRound.answers`), or None.
        scenes: the scenes to count (default: the scan's).

    Returns:
        One row per measure, columns ``measure`` and ``count``: registry rows, confirmed by the scan,
        not seen; the truth (listed at the school, listed 100-500 m off, missing, look-alikes listed);
        after the review: schools added (accepted schools the registry misses), misplaced schools found
        at their true place (accepted schools the registry lists off their place) and registry places
        rejected (a listed place where the mapper saw no school).
    """
    scan = ScanFolder(scan_dir)
    info = scan.read_summary()
    if not info.get("registry"):
        raise UserError("the scan has no registry audit; scan with --registry FILE", scan.root)
    names = set(scenes) if scenes is not None else {s["scene"] for s in info.get("scenes", [])}
    audit = scan.read_registry_audit()
    listed = audit[(audit["kind"] == "registry") & audit["scene"].isin(names)]
    truth = pd.read_csv(registry_truth, dtype={"registry_id": str, "school": str, "status": str, "scene": str},
                        keep_default_na=False)
    truth = truth[truth["scene"].isin(names)]
    rows = {
        "registry rows in the scene": len(listed),
        "confirmed by the scan": int((listed["status"] == "confirmed").sum()),
        "not seen by the scan": int((listed["status"] == "not_seen").sum()),
        "truth: listed at the school": int((truth["status"] == "correct").sum()),
        "truth: listed 100-500 m off": int((truth["status"] == "displaced").sum()),
        "truth: schools missing": int((truth["status"] == "missing").sum()),
        "truth: look-alikes listed": int((truth["status"] == "false").sum()),
    }
    if answers is not None:
        found = set(answers.loc[answers["decision"] == "school", "school"])
        rows["review: schools added"] = len(found & set(truth.loc[truth["status"] == "missing", "school"]))
        rows["review: misplaced schools found at their place"] = len(
            found & set(truth.loc[truth["status"] == "displaced", "school"]))
        rows["review: registry places rejected"] = int(((answers["source"] == "registry")
                                                        & (answers["decision"] == "not_school")).sum())
    return pd.DataFrame({"measure": list(rows), "count": list(rows.values())})


