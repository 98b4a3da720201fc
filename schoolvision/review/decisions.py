"""``schoolvision review import``: a mapper's decisions (``decisions.geojson`` from ``review.html``) as labels.

Accepted items become school points (``label`` = ``school``), rejected ones hard-negative points
(``label`` = ``not_school``), at the item's place in the queue; unsure ones are dropped and counted.
Each label keeps its provenance: the item id, the queue id, the scan, the decision's timestamp, the
item's kind and P(school). The output is GeoJSON (EPSG:4326) that
:func:`~schoolvision.io.schools.read_schools` reads: ``--schools-where label=school`` gives the
schools, ``label=not_school`` the hard negatives.

Refused (one line, nothing written): a file that is not a GeoJSON FeatureCollection of decisions, an
empty export, decisions whose ids are not items of the queue (a file from another scan; with their
count), an unknown decision. One item decided twice (files merged) keeps the latest decision by
timestamp.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from schoolvision.errors import UserError
from schoolvision.io.atomic import write_json
from schoolvision.io.folders import ReviewFolder
from schoolvision.review.page import DECISIONS

LABELS = {"school": "school", "not_school": "not_school"}
"""Decision -> label written; ``unsure`` has none (dropped)."""


@dataclass
class ImportSummary:
    """What ``review import`` read and wrote."""

    out: str
    queue_id: str
    decisions: int  # distinct items decided
    counts: dict[str, int] = field(default_factory=dict)  # per decision
    duplicates: int = 0  # decisions replaced by a later one for the same item
    labels: int = 0  # points written (school + not_school)


def _timestamp(value, path: Path) -> datetime:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"decision timestamp {value!r} is not ISO 8601 (e.g. 2026-01-31T12:00:00Z)", path) from None


def read_decisions(path: str | Path) -> list[dict]:
    """The decisions of an export, each a dict with ``id``, ``decision``, ``timestamp`` (datetime), in file order.

    Raises:
        UserError: the file is missing, not JSON, not a FeatureCollection, empty, or a decision lacks
            an id, has an unknown value or an unreadable timestamp.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("decisions file does not exist", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"decisions file is not readable JSON ({type(exc).__name__})", path) from None
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection" or not isinstance(
            data.get("features"), list):
        raise UserError("decisions file is not a GeoJSON FeatureCollection (export it from review.html)", path)
    if not data["features"]:
        raise UserError("decisions file holds no decision: decide some items in review.html, then Export", path)
    out = []
    for n, feature in enumerate(data["features"], start=1):
        props = (feature or {}).get("properties") if isinstance(feature, dict) else None
        if not isinstance(props, dict) or not props.get("id"):
            raise UserError(f"decision {n} has no item id", path)
        decision = props.get("decision")
        if decision not in DECISIONS:
            raise UserError(f"decision {n} ({props['id']}) is {decision!r}, not one of {', '.join(DECISIONS)}", path)
        out.append({"id": str(props["id"]), "decision": decision,
                    "timestamp": _timestamp(props.get("timestamp"), path), "queue_id": props.get("queue_id")})
    return out


def latest(decisions: list[dict]) -> tuple[dict[str, dict], int]:
    """(item id -> its latest decision by timestamp (a tie: the later in the file), number replaced)."""
    kept: dict[str, dict] = {}
    for d in decisions:
        old = kept.get(d["id"])
        if old is None or _comparable(d["timestamp"]) >= _comparable(old["timestamp"]):
            kept[d["id"]] = d
    return kept, len(decisions) - len(kept)


def resolve_merged(decided: dict[str, dict], items) -> dict[str, dict]:
    """``decided`` with the ids of merged items (``merged_ids`` of the queue) replaced by the item they merged into.

    The kept item's own decision wins over one made on a merged id (an export of an older page).
    """
    alias = {str(m): str(i) for i, ms in zip(items["id"], items["merged_ids"]) if isinstance(ms, list) for m in ms}
    out = {alias.get(k, k): v for k, v in decided.items() if k in alias}
    out.update({k: v for k, v in decided.items() if k not in alias})
    return out


def check_queue(decided: Mapping[str, dict], queue_id: str, item_ids: set[str], path: Path) -> None:
    """Refuse decisions made on another queue: a ``queue_id`` that is not ``queue_id``, or ids not in the queue.

    Raises:
        UserError: one line naming the decisions file, the two queues or the count of unknown ids.
    """
    other = sorted({str(d["queue_id"]) for d in decided.values() if d.get("queue_id") not in (None, "", queue_id)})
    if other:
        raise UserError(f"the decisions are from queue {other[0]}, not from --queue {queue_id}: export them from "
                        "this queue's review.html", path)
    unknown = [i for i in decided if i not in item_ids]
    if unknown:
        raise UserError(f"{len(unknown)} of {len(decided)} decided items are not in the queue {queue_id} "
                        f"(e.g. {unknown[0]}): a decisions file from another scan or queue?", path)


def _comparable(t: datetime) -> float:
    return t.timestamp() if t.tzinfo is not None else t.replace(tzinfo=None).timestamp()


def write_decisions(path: str | Path, queue_dir: str | Path, decisions: Mapping[str, str],
                    timestamp: str | Sequence[str] | None = None, mapper: str | None = None) -> Path:
    """Write ``decisions`` (item id -> decision) as ``review.html``'s Export would (``decisions.geojson``).

    The one writer of the export format, for scripted reviews (the book's simulated mapper) and tests.

    Args:
        path: the ``decisions.geojson`` to write.
        queue_dir: the review queue the decisions are about.
        decisions: item id -> decision, in the order to write.
        timestamp: ISO 8601 time of every decision, or one per decision; None: now.
        mapper: who decided, kept as each decision's ``mapper`` property (None: not written).

    Raises:
        UserError: an id is not in the queue, or a decision is not one of :data:`DECISIONS`.
    """
    folder = ReviewFolder(queue_dir)
    queue_id = folder.read_queue()["queue_id"]
    items = folder.read_items().set_index("id", drop=False)
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    stamps = [timestamp or now] * len(decisions) if timestamp is None or isinstance(timestamp, str) else timestamp
    if len(stamps) != len(decisions):
        raise ValueError(f"{len(stamps)} timestamps for {len(decisions)} decisions")
    features = []
    for (item_id, decision), stamp in zip(decisions.items(), stamps):
        if item_id not in items.index:
            raise UserError(f"item {item_id} is not in the queue {queue_id}", folder.items_path)
        if decision not in DECISIONS:
            raise UserError(f"decision {decision!r} for {item_id} is not one of {', '.join(DECISIONS)}")
        it = items.loc[item_id]
        lon, lat = float(it["lon"]), float(it["lat"])
        features.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]},
                         "properties": {"id": item_id, "queue_id": queue_id, "decision": decision,
                                        "timestamp": stamp, "lon": lon, "lat": lat,
                                        "merged_ids": m if isinstance(m := it["merged_ids"], list) else [],
                                        **({"mapper": mapper} if mapper else {})}})
    return write_json(path, {"type": "FeatureCollection", "queue_id": queue_id, "features": features})


def import_decisions(decisions_path: str | Path, queue_dir: str | Path, out: str | Path,
                     overwrite: bool = False) -> ImportSummary:
    """Turn a decisions export into labels with provenance, written to ``out`` (GeoJSON).

    Args:
        decisions_path: ``decisions.geojson`` exported by ``review.html``.
        queue_dir: the review queue it was made from (``review build --out``).
        out: the labels file to write.
        overwrite: replace an existing ``out``.

    Returns:
        Counts per decision, duplicates replaced, labels written.

    Raises:
        UserError: bad decisions (see :func:`read_decisions`), ids not in the queue (with their count),
            or ``out`` exists (without ``overwrite``) or is an input.
    """
    decisions_path, out = Path(decisions_path), Path(out)
    folder = ReviewFolder(queue_dir)
    queue = folder.read_queue()
    items = folder.read_items().set_index("id", drop=False)
    decided, duplicates = latest(read_decisions(decisions_path))
    decided = resolve_merged(decided, items)
    check_queue(decided, queue["queue_id"], set(items.index), decisions_path)
    for p in (decisions_path, folder.root):
        if out.resolve() == p.resolve() or p.resolve() in out.resolve().parents:
            raise UserError(f"--out must not be the decisions file nor lie in the queue folder ({p})", out)
    if out.exists() and not overwrite:
        raise UserError("labels file exists; pass --overwrite or choose another --out", out)
    counts = dict.fromkeys(DECISIONS, 0)
    features = []
    for item_id in items.index:  # queue order
        d = decided.get(item_id)
        if d is None:
            continue
        counts[d["decision"]] += 1
        if d["decision"] not in LABELS:
            continue
        it = items.loc[item_id]
        name = str(it["name"]) if isinstance(it["name"], str) and it["name"] else f"review {item_id}"
        features.append({"type": "Feature",
                         "geometry": {"type": "Point", "coordinates": [float(it["lon"]), float(it["lat"])]},
                         "properties": {"name": name, "label": LABELS[d["decision"]], "decision": d["decision"],
                                        "item_id": item_id, "queue_id": queue["queue_id"],
                                        "merged_ids": ",".join(m) if isinstance(m := it["merged_ids"], list)
                                        else "",
                                        "scan": queue.get("scan", ""), "source": it["source"],
                                        "registry_status": it["registry_status"] or "",
                                        "probability": float(it["probability"]),
                                        "decided_at": d["timestamp"].isoformat(), "provenance": "review"}})
    write_json(out, {"type": "FeatureCollection", "name": out.stem, "features": features})
    return ImportSummary(out=str(out), queue_id=queue["queue_id"], decisions=len(decided), counts=counts,
                         duplicates=duplicates, labels=len(features))
