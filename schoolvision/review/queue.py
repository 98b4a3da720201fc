"""``schoolvision review build``: a scan's candidates, near misses and unseen registry schools as a ranked queue.

What is queued (each place once):

- **candidate**: every candidate of the scan (P(school) at or above the scan's threshold);
- **below_threshold**: probability peaks between ``floor`` and the threshold (the places where the
  model hesitated: missed schools hide there), further than half a chip from every candidate;
- **registry**: registry schools the scan did not see (scan with ``--registry``), at their listed
  place, with the highest P(school) of the raster within the match distance.

Ranking rule (``order``), the same for every kind of item, ties broken by the item id:

- ``uncertainty``: ``|P - threshold|`` ascending, higher P first on a tie: the items the model is least
  sure of first, which are what teaches it most;
- ``probability``: P descending: the most likely schools first, which maps fastest.
- ``novelty``: the trust map's novelty descending (a scan with a run's novelty summary): the places
  least like the training data first, so a mapper's first answers teach the model what it has not seen;
- ``uncertainty-novelty``: uncertainty weighted by novelty, ``(1 - |P - threshold| / max(threshold,
  1 - threshold)) * (1 + novelty / 100)`` descending: of two equally uncertain items the unfamiliar one
  first, a fully unfamiliar one counting twice a fully familiar one.

Every item carries its ``novelty`` (the percentile of home imagery its place exceeds, from the
scene's novelty raster; None without one).

One item per place: items within the match distance of each other (a school seen as a candidate and
as a near miss, or listed by the registry 35 m from its candidate) are merged into the first by kind
(candidate, registry, near miss), then by P(school); the item keeps the others' ids (``merged_ids``)
and a line on each (``merged``), and one decision covers them all.

``limit`` keeps the first N. ``review build --sample N`` queues a stratified random sample of the
scanned area's windows instead, for an estimate (:mod:`schoolvision.review.sample`). Every item
carries a stable id (a hash of the scan and the place, so a
decisions file from another scan matches no item), its chip, the chip's grad-CAM overlay (the run
recorded in ``scan.json``, or ``run``), a wider view of its surroundings, its probability and
registry status. The queue is a :class:`~schoolvision.io.folders.ReviewFolder`, with the offline
page ``review.html`` (:mod:`schoolvision.review.page`).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from rasterio.warp import transform as warp_points
from shapely.geometry import Point

from schoolvision.errors import UserError, check_range
from schoolvision.explain.maps import overlay_rgb
from schoolvision.io.folders import ReviewFolder, RunFolder, ScanFolder, prepare_output, read_probability
from schoolvision.io.imagery import ImageryOptions, list_sources
from schoolvision.model.checkpoint import load_classifier
from schoolvision.model.device import resolve_device
from schoolvision.review.page import write_page
from schoolvision.scan.candidates import MIN_AREA_M2, ProbabilityField, merge_duplicates, rank
from schoolvision.scan.novelty import sample_novelty
from schoolvision.scan.peaks import explain_points, read_chips_at
from schoolvision.scan.scene import SceneScan

ORDERS = ("uncertainty", "probability", "novelty", "uncertainty-novelty")
"""Ranking rules of ``review build --order`` (see the module docstring)."""

SOURCES = ("candidate", "below_threshold", "registry")
"""Kinds of queued items (``source`` of each item)."""

MERGE_PRIORITY = ("candidate", "registry", "below_threshold")
"""Which item of a place stays when items within the match distance are merged (the others' ids are kept)."""

MATCH_DISTANCE_M = 50.0
"""Merge distance of a scan whose ``scan.json`` records none (``scan --match-distance``'s default)."""

RULES = {
    "uncertainty": "|P(school) - threshold| ascending (ties: higher P first, then id): least certain first",
    "probability": "P(school) descending (ties: id): most likely schools first",
    "novelty": "novelty descending (ties: id): least like the training data first",
    "uncertainty-novelty": "(1 - |P(school) - threshold| / max(threshold, 1 - threshold)) x (1 + novelty / 100) "
                           "descending (ties: id): uncertain and unfamiliar first",
}


@dataclass
class ReviewConfig:
    """Everything ``schoolvision review build`` needs."""

    scan_dir: Path
    out_dir: Path
    order: str = "uncertainty"
    limit: int | None = None  # keep the first N items; None = all
    floor: float = 0.05  # lowest P(school) of a below-threshold peak; >= the threshold: candidates only
    run: Path | None = None  # the run for chips' P(school) and grad-CAM; None = the run in scan.json
    device: str = "auto"
    context: int = 4  # the surroundings image covers this many chip sides
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise UserError(f"--order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        check_range("--limit", self.limit, minimum=1)
        check_range("--floor", self.floor, above=0, below=1)
        check_range("--context", self.context, minimum=2)


@dataclass
class ReviewSummary:
    """What ``review build`` wrote."""

    out_dir: str
    queue_id: str
    order: str
    items: int
    counts: dict[str, int] = field(default_factory=dict)  # items per source
    page: str = ""


def scan_key(info: dict) -> str:
    """A short hash of what identifies a scan: its run, threshold and scenes (name, CRS, size)."""
    scenes = sorted([s["scene"], str(s["crs"]), int(s["width"]), int(s["height"])] for s in info.get("scenes", []))
    text = json.dumps({"run": str(info.get("run", "")), "threshold": round(float(info["threshold"]), 6),
                       "scenes": scenes}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def item_id(key: str, lon: float, lat: float) -> str:
    """The stable id of the item at (lon, lat) in the scan ``key``: 12 hex digits."""
    return hashlib.sha256(f"{key}|{lon:.6f}|{lat:.6f}".encode()).hexdigest()[:12]


def order_items(items: list[dict], order: str, threshold: float) -> list[dict]:
    """``items`` (dicts with ``id`` and ``probability``) sorted by the rule ``order`` (:data:`RULES`)."""
    if order == "uncertainty":
        # rounded: 0.45 and 0.55 are equally far from 0.5, whatever the floats say
        return sorted(items, key=lambda it: (round(abs(it["probability"] - threshold), 9), -it["probability"],
                                             it["id"]))
    if order == "probability":
        return sorted(items, key=lambda it: (-it["probability"], it["id"]))
    if order in ("novelty", "uncertainty-novelty"):
        if items and all(it.get("novelty") is None for it in items):
            raise UserError(f"--order {order} needs the scan's trust map: give the run a novelty summary "
                            "(schoolvision novelty --run RUN --chips DIR) and scan again")
        familiar = max(threshold, 1 - threshold)

        def novelty(it) -> float:
            return 0.0 if it.get("novelty") is None else float(it["novelty"])

        if order == "novelty":
            return sorted(items, key=lambda it: (-round(novelty(it), 6), it["id"]))
        return sorted(items, key=lambda it: (-round((1 - abs(it["probability"] - threshold) / familiar)
                                                    * (1 + novelty(it) / 100), 9), it["id"]))
    raise UserError(f"--order must be one of {', '.join(ORDERS)}, got {order!r}")


def scan_sources(info: dict, scenes: list[SceneScan]) -> dict:
    """Scene name -> imagery source, read with the bands, CRS option and scale rule ``scan.json`` recorded."""
    read = info.get("imagery") or {}
    options = ImageryOptions(bands=read.get("bands"), crs=read.get("crs"), scale=read.get("scale"))
    sources = {}
    for s in scenes:
        if not Path(s.source).exists():
            raise UserError(f"the imagery of scene {s.scene} is gone (scan.json names it)", s.source)
        for src in list_sources([s.source]):
            if src.name == s.scene or len(scenes) == 1:
                sources[s.scene] = src.with_options(options)
        if s.scene not in sources:
            raise UserError(f"scene {s.scene} of scan.json is no longer in its imagery", s.source)
    return sources


def _below_threshold(scenes: list[SceneScan], cands: gpd.GeoDataFrame, threshold: float, floor: float,
                     merge_distance: float, scan: dict) -> gpd.GeoDataFrame:
    """Probability peaks in [floor, threshold) further than ``merge_distance`` from every candidate (EPSG:4326).

    They are drawn by the scan's own rules (its ``min_area_m2`` and ``min_separation`` in ``scan.json``; a scan
    that did not record them made its candidates with the defaults).
    """
    min_area = float(scan.get("min_area_m2", MIN_AREA_M2))
    separation = float(scan.get("min_separation") or 0.0)
    parts = []
    for s in scenes:
        pts = ProbabilityField.read(s.probability, s.scene, min_separation=separation).candidates(floor, min_area)[0]
        pts = pts[pts["max_prob"] < threshold] if len(pts) else pts
        if len(pts):
            parts.append(pts.to_crs("EPSG:4326"))
    if not parts:
        return gpd.GeoDataFrame({"scene": [], "max_prob": []}, geometry=[], crs="EPSG:4326")
    low = gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), crs="EPSG:4326")
    low = merge_duplicates(rank(low), merge_distance, merge_distance / 2)
    if len(cands) and len(low):
        utm = low.estimate_utm_crs()
        near = cands.to_crs(utm).geometry.union_all()
        low = low[low.to_crs(utm).geometry.distance(near).to_numpy() > merge_distance]
    return low.reset_index(drop=True)


def _raster_max_near(scene: SceneScan, lon: float, lat: float, radius: float) -> float:
    """Highest P(school) of a scene's raster within ``radius`` metres of (lon, lat); 0 where there is none."""
    prob, transform, crs = read_probability(scene.probability)
    xs, ys = warp_points("EPSG:4326", crs, [lon], [lat])
    cols, rows = ~transform @ (xs[0], ys[0])
    px = abs(transform.a) or 1.0
    r = max(1, int(np.ceil(radius / px)))
    r0, c0 = int(np.floor(rows)), int(np.floor(cols))
    window = prob[max(0, r0 - r) : max(0, r0 + r + 1), max(0, c0 - r) : max(0, c0 + r + 1)]
    return float(np.nanmax(window)) if window.size and np.isfinite(window).any() else 0.0


def collect_items(folder: ScanFolder, floor: float) -> tuple[dict, list[dict]]:
    """(scan.json, unordered items without images) of a finished scan."""
    info = folder.read_summary()
    if "threshold" not in info or "scenes" not in info:
        raise UserError("scan.json lacks threshold or scenes; scan again with this version", folder.root)
    scenes = [SceneScan(**s) for s in info["scenes"]]
    if not scenes:
        raise UserError("the scan holds no scanned scene: nothing to review", folder.root)
    threshold = float(info["threshold"])
    key = scan_key(info)
    merge_distance = float(info.get("chip_size", 64)) * float(info.get("gsd") or 1.0) / 2
    cands = folder.read_layer("candidates")
    cands = cands.to_crs("EPSG:4326") if len(cands) else cands
    status: dict[int, str] = {}
    listed: dict[int, str] = {}
    registry_rows = []
    if info.get("registry"):
        audit = folder.read_registry_audit()
        for _, row in audit.iterrows():
            if row["kind"] == "candidate":
                status[int(row["candidate_rank"])] = str(row["status"])
                listed[int(row["candidate_rank"])] = str(row.get("registry_id") or "")
            elif row["status"] == "not_seen" and row["scene"]:
                registry_rows.append(row)
    items = []
    for _, c in cands.iterrows():
        items.append({"source": "candidate", "registry_status": status.get(int(c["rank"]), ""),
                      "registry_id": listed.get(int(c["rank"]), ""),
                      "probability": float(c["max_prob"]), "candidate_rank": int(c["rank"]),
                      "scene": str(c["scene"]), "name": "", "lon": c.geometry.x, "lat": c.geometry.y})
    if floor < threshold:
        for _, c in _below_threshold(scenes, cands, threshold, floor, merge_distance, info).iterrows():
            items.append({"source": "below_threshold", "registry_status": "new" if info.get("registry") else "",
                          "probability": float(c["max_prob"]), "candidate_rank": -1, "scene": str(c["scene"]),
                          "name": "", "lon": c.geometry.x, "lat": c.geometry.y})
    by_name = {s.scene: s for s in scenes}
    radius = float((info.get("registry") or {}).get("match_distance_m", merge_distance))
    for row in registry_rows:
        scene = by_name.get(str(row["scene"]))
        if scene is None:
            continue
        lon, lat = float(row["lon"]), float(row["lat"])
        near = float(row["nearest_m"]) if pd.notna(row.get("nearest_m")) else None
        items.append({"source": "registry", "registry_status": "not_seen", "registry_id": str(row["registry_id"]),
                      "nearest_new_m": near,
                      "probability": _raster_max_near(scene, lon, lat, radius), "candidate_rank": -1,
                      "scene": scene.scene, "name": str(row["name"]), "lon": lon, "lat": lat})
    seen: set[str] = set()
    for it in items:
        it["lon"], it["lat"] = round(float(it["lon"]), 7), round(float(it["lat"]), 7)
        it["probability"] = round(float(it["probability"]), 4)
        base = item_id(key, it["lon"], it["lat"])
        uid, n = base, 1
        while uid in seen:  # two items at one place (a registry school on a candidate): still two ids
            uid, n = f"{base}-{n}", n + 1
        seen.add(uid)
        it["id"] = uid
    _add_novelty(items, scenes)
    return info, merge_places(items, match_distance(info))


def match_distance(info: dict) -> float:
    """The scan's match distance in metres (``scan.json``; :data:`MATCH_DISTANCE_M` when it records none)."""
    for part in (info.get("registry") or {}, info.get("evaluation") or {}):
        if part.get("match_distance_m"):
            return float(part["match_distance_m"])
    return MATCH_DISTANCE_M


def merge_places(items: list[dict], distance: float) -> list[dict]:
    """One item per place: items within ``distance`` m of a kept item are merged into it (module docstring).

    Items are kept in :data:`MERGE_PRIORITY` order of kind, then by P(school) descending; each kept
    item gets ``merged_ids`` and ``merged`` (one line per merged item: its kind, name, P, distance).
    """
    if not items:
        return items
    pts = gpd.GeoSeries([Point(it["lon"], it["lat"]) for it in items], crs="EPSG:4326")
    xy = pts.to_crs(pts.estimate_utm_crs())
    x, y = xy.x.to_numpy(), xy.y.to_numpy()
    order = sorted(range(len(items)), key=lambda i: (MERGE_PRIORITY.index(items[i]["source"]),
                                                     -items[i]["probability"], items[i]["id"]))
    taken = np.zeros(len(items), bool)
    kept = []
    for i in order:
        if taken[i]:
            continue
        d = np.hypot(x - x[i], y - y[i])
        group = [j for j in order if not taken[j] and j != i and d[j] <= distance]
        taken[[i, *group]] = True
        kept.append({**items[i], "merged_ids": [items[j]["id"] for j in group],
                     "merged": [_merged_line(items[j], d[j]) for j in group]})
    return kept


def _merged_line(it: dict, metres: float) -> str:
    what = {"candidate": "candidate", "below_threshold": "near miss", "registry": "registry school"}[it["source"]]
    name = f" {it['name']}" if it.get("name") else ""
    listed = f" (registry id {it['registry_id']})" if it.get("registry_id") else ""
    return f"{what}{name}{listed}, P(school) {it['probability']:.3f}, {metres:.0f} m away"


def _add_novelty(items: list[dict], scenes: list[SceneScan]) -> None:
    """Each item's ``novelty``: its scene's novelty raster at its place (None where the scene has none)."""
    for s in scenes:
        mine = [it for it in items if it["scene"] == s.scene]
        if not mine:
            continue
        if s.novelty is None or not Path(s.novelty).is_file():
            for it in mine:
                it["novelty"] = None
            continue
        points = gpd.GeoDataFrame(geometry=[Point(it["lon"], it["lat"]) for it in mine], crs="EPSG:4326")
        for it, value in zip(mine, sample_novelty(s.novelty, points)):
            it["novelty"] = None if np.isnan(value) else round(float(value), 2)


JPEG_QUALITY = 90
"""Quality of the queue's JPEG images."""


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _context(source, meta, point_xy, crs, context: int, side: int = 256) -> np.ndarray:
    """RGB (side, side, 3) of ``context`` chip sides around the point, the chip outlined in yellow."""
    chip = int(meta.chip_size)
    wide = replace(meta, chip_size=chip * context)
    img, ccrs, ctf = read_chips_at(source, wide, [point_xy], crs)[0]
    xs, ys = warp_points(crs, ccrs, [point_xy[0]], [point_xy[1]])
    col, row = ~ctf @ (xs[0], ys[0])
    pil = Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0))).resize((side, side), Image.BILINEAR)
    f = side / (chip * context)
    half = chip / 2 * f
    draw = ImageDraw.Draw(pil)
    draw.rectangle([col * f - half, row * f - half, col * f + half, row * f + half], outline=(255, 230, 0), width=2)
    return np.asarray(pil)


def _round_of(run: str | Path) -> dict | None:
    """Which review round made the run (its ``round.json``: queue id, parent run); None for a run trained otherwise."""
    record = RunFolder(run).read_round() if Path(run).is_dir() else {}
    return {k: record.get(k) for k in ("queue_id", "parent_run", "decided")} if record else None


def build_queue(config: ReviewConfig, model=None, meta=None, selection: tuple | None = None) -> ReviewSummary:
    """Rank a scan's items for review and write them, with their images and ``review.html``, to ``out_dir``.

    Args:
        config: the scan, the output folder, the ranking rule.
        model: a classifier to use instead of the run's checkpoint (tests, notebooks holding a model).
        meta: its ``CheckpointMeta``; both or neither.
        selection: (scan.json, items in review order, design) drawn elsewhere, queued as they are instead
            of ranked (``review build --sample``: :func:`schoolvision.review.sample.sample_items`).

    Returns:
        What was written (queue id, items per source, the page's path).

    Raises:
        UserError: the scan folder is incomplete, its imagery or run is gone, or ``out_dir`` is not empty
            (without ``overwrite``) or lies in an input.
    """
    scan = ScanFolder(config.scan_dir)
    design = None
    if selection is not None:
        info, items, design = selection
    else:
        info, items = collect_items(scan, config.floor)  # a bad scan folder costs nothing
        items = order_items(items, config.order, float(info["threshold"]))
        if config.limit is not None:
            items = items[: config.limit]
    order = config.order if design is None else "sample"
    run = config.run if config.run is not None else Path(info.get("run", ""))
    loaded = model is None or meta is None
    if loaded and not Path(run).exists():
        raise UserError("the run that made this scan is gone; pass --run RUN", run)
    device = resolve_device(config.device) if loaded else next(model.parameters()).device
    scenes = [SceneScan(**s) for s in info["scenes"]]
    sources = scan_sources(info, scenes)
    out = ReviewFolder(config.out_dir)
    prepare_output(out.root, config.overwrite, inputs={"--scan": config.scan_dir, "--run": run if loaded else None})
    if loaded:
        model, meta = load_classifier(run, device)
    key = scan_key(info)
    queue_id = hashlib.sha256(("|".join([key, order] + [it["id"] for it in items])).encode()).hexdigest()[:16]
    if items:
        points = gpd.GeoDataFrame({"scene": [it["scene"] for it in items]},
                                  geometry=[Point(it["lon"], it["lat"]) for it in items], crs="EPSG:4326")
        crs_of = {s.scene: s.crs for s in scenes}
        chips, probs, cams = explain_points(model, meta, points, sources, device)
        for it, chip, p, cam in zip(items, chips, probs, cams):
            scene_crs = crs_of[it["scene"]]
            xs, ys = warp_points("EPSG:4326", scene_crs, [it["lon"]], [it["lat"]])
            it.update(x=round(xs[0], 3), y=round(ys[0], 3), crs=str(scene_crs), chip_probability=round(float(p), 4))
            out.write_image(it["id"], "chip", _jpeg(chip.transpose(1, 2, 0)))
            out.write_image(it["id"], "cam", _jpeg(overlay_rgb(chip, cam)))
            ctx = _context(sources[it["scene"]], meta, (xs[0], ys[0]), scene_crs, config.context)
            out.write_image(it["id"], "context", _jpeg(ctx))
            for kind in ReviewFolder.IMAGE_KINDS:
                it[kind] = out.image_name(it["id"], kind)
    for position, it in enumerate(items, start=1):
        it["position"] = position
    kinds = [*SOURCES, *sorted({it["source"] for it in items} - set(SOURCES))]
    counts = {s: sum(it["source"] == s for it in items) for s in kinds}
    queue = {"queue_id": queue_id, "scan_key": key, "scan": str(Path(config.scan_dir).resolve()),
             "run": str(run), "threshold": float(info["threshold"]), "order": order,
             "rule": RULES[config.order] if design is None else design["rule"], "limit": config.limit,
             "floor": config.floor, "context": config.context,
             "match_distance_m": match_distance(info),
             "displaced_search_m": (info.get("registry") or {}).get("displaced_search_m"),
             "model_round": _round_of(run),
             "items": len(items), "counts": counts, "registry": bool(info.get("registry")),
             "page": ReviewFolder.PAGE, "items_file": ReviewFolder.ITEMS}
    if design is not None:
        queue["sample"] = design
    out.write_items(items)
    page = write_page(out, queue, items)
    out.write_queue(queue)
    return ReviewSummary(out_dir=str(out.root), queue_id=queue_id, order=order, items=len(items),
                         counts=counts, page=str(page))
