"""``schoolvision review retrain``: a mapper's decisions to a fine-tuned run, in one command that cannot mislabel.

What becomes a label (the rules; nothing else is cut):

- **where a person looked only.** Each decided place (``school`` or ``not_school``) stands for its
  neighbourhood: the surroundings image of the page, ``context`` chip sides around the place
  (``queue.json``, 4 by default). Imagery nobody reviewed is never read.
- **accepted places are schools**: the school chips of their own neighbourhood (grid and centred
  views) as :func:`~schoolvision.data.chips.make_chips` labels them, the place standing for a school
  of ``point_buffer_m`` (the home chips' rule).
- **rejected places are hard negatives**: one ``not_school`` chip centred on each.
- **not_school grid chips** come only from the neighbourhoods of rejected places in which every queue
  item was rejected: no accepted, unsure or undecided item (a school nobody ruled out) touches them.
  They are under-sampled (seeded) to the home chips' ``negative_ratio``: the round's not_school chips
  are at most that many per reviewed school chip, hard negatives always kept. A few rejections would
  otherwise give hundreds of grid chips against a dozen school chips, teach the model that the new
  region is not a school, and carry more of the schools nobody queued (a mapper judged the place, not
  every roof of its surroundings). Unsure decisions give no chip.

The round's chips are all in the train split. The home run's training chips are replayed (a seeded
share, :data:`REPLAY_SHARE` by default, per class) so the model does not forget the home region, and
the home validation and test splits are kept whole: the model is still chosen and its threshold tuned
on them, and the home test metrics before and after are comparable. Training starts from the home
run's weights (``train --init-from``) for :data:`EPOCHS` epochs at :data:`LR`.

``--out`` is the round folder: ``labels.geojson`` (the decisions as labels, ``review import``),
``crops/`` (the reviewed neighbourhoods as GeoTIFFs), ``reviewed_chips/`` (their chips),
``chips/`` (the training set: ``chips.csv`` names the reviewed and the home chips by relative path,
so the home chips folder must stay where it is), and ``run/``, the new run, with ``round.json``: the
queue, the decisions file, the counts, the parent run, thresholds and the before/after metrics.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
from rasterio.warp import transform as warp_points
from rasterio.windows import Window

from schoolvision.data.chips import HARD_NEGATIVE, SPLITS, ChipConfig, make_chips
from schoolvision.errors import UserError, check_range
from schoolvision.io import manifest
from schoolvision.io.folders import ChipsFolder, ReviewFolder, RunFolder, ScanFolder, prepare_output, sha256
from schoolvision.io.imagery import open_source
from schoolvision.io.rasters import write_geotiff
from schoolvision.model.checkpoint import CheckpointMeta, load_classifier
from schoolvision.model.device import resolve_device
from schoolvision.model.runtime import make_runtime
from schoolvision.review.decisions import check_queue, import_decisions, latest, read_decisions, resolve_merged
from schoolvision.review.queue import scan_sources
from schoolvision.scan.peaks import read_chips_at
from schoolvision.scan.scene import SceneScan
from schoolvision.scan.windows import predict_windows, to_float
from schoolvision.train import tblog
from schoolvision.train.fit import TrainConfig, fit

REPLAY_SHARE = 0.5
"""Share of the home run's training chips (per class, seeded) trained on again beside the reviewed ones."""

EPOCHS = 3
"""Fine-tuning epochs: the reviewed chips are few, and more epochs on them overfit the reviewed places."""

LR = 3e-4
"""Fine-tuning learning rate: a third of a fresh run's, the model starts from trained weights."""

CONTEXT = 4
"""Chip sides of a neighbourhood when ``queue.json`` does not record the page's surroundings image."""

RULES = ("accepted places: school chips; rejected places: one hard-negative chip each; not_school grid chips only "
         "from the neighbourhoods (the page's surroundings image) of rejected places in which every queue item was "
         "rejected, under-sampled to the home chips' negative_ratio per reviewed school chip; unsure and undecided "
         "places: none; imagery nobody reviewed: never read")
"""What becomes a label, as ``round.json`` records it (the module docstring says it at length)."""

ROUND_FILES = ("labels.geojson", "crops", "reviewed_chips", "chips", "run")
"""What ``review retrain`` writes into ``--out``."""


@dataclass(frozen=True)
class RetrainConfig:
    """Everything ``schoolvision review retrain`` needs."""

    queue: Path
    decisions: Path
    run: Path
    out: Path
    epochs: int = EPOCHS
    replay: float = REPLAY_SHARE
    lr: float = LR
    batch_size: int = 32
    device: str = "auto"
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_range("--epochs", self.epochs, minimum=1)
        check_range("--replay", self.replay, minimum=0, maximum=1)
        check_range("--lr", self.lr, above=0)
        check_range("--batch-size", self.batch_size, minimum=1)


@dataclass
class RoundSummary:
    """What a round did: ``round.json``."""

    out: str
    run: str
    record: dict[str, Any] = field(default_factory=dict)


def _home(run: Path, queue: dict) -> tuple[dict, ChipsFolder]:
    """The run's ``config.json`` and its chips folder, after checking the run against the queue's."""
    config = RunFolder(run).read_config(required=True)
    scored_by = Path(str(queue.get("run", "")))
    theirs = RunFolder(scored_by).read_config() if str(scored_by) and scored_by.is_dir() else {}
    if theirs.get("backbone") and theirs["backbone"] != config.get("backbone"):
        raise UserError(f"--run is a {config.get('backbone')} model, the queue was scored by a {theirs['backbone']} "
                        f"model ({scored_by}): retrain the run that made the scan", run)
    chips = ChipsFolder(config.get("chips_dir", ""))
    if not chips.has_index():
        raise UserError(f"the home chips of --run are gone ({chips.root}): they give the replayed chips and the "
                        "validation and test splits", run)
    return config, chips


def neighbourhoods(items: pd.DataFrame, decided: dict[str, dict], side_m: float) -> tuple[pd.DataFrame, set[str]]:
    """(decided school / not_school items, ids of those whose neighbourhood gives not_school grid chips)."""
    decision = items["id"].map(lambda i: decided[i]["decision"] if i in decided else "")
    looked = items[decision.isin(("school", "not_school"))].copy()
    looked["decision"] = decision[looked.index]
    pts = gpd.GeoSeries(gpd.points_from_xy(items["lon"].astype(float), items["lat"].astype(float)), crs="EPSG:4326")
    xy = pts.to_crs(pts.estimate_utm_crs()) if len(pts) else pts
    x, y = xy.x.to_numpy(), xy.y.to_numpy()
    not_rejected = (decision != "not_school").to_numpy()
    clean = set()
    for i in np.flatnonzero((decision == "not_school").to_numpy()):
        inside = (np.abs(x - x[i]) <= side_m / 2) & (np.abs(y - y[i]) <= side_m / 2)
        if not (inside & not_rejected).any():
            clean.add(str(items["id"].iloc[i]))
    return looked, clean


def _write_crops(looked: pd.DataFrame, queue: dict, meta: CheckpointMeta, context: int,
                 out: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """Write each decided place's neighbourhood as a GeoTIFF named by the item id, read as the scan read it.

    The neighbourhood is the square of ``context`` chip sides centred on the place, cut at the scene's
    edge (never shifted inwards, so it holds nothing farther from the place).

    Returns:
        (the chip centred on each place (the page's chip), uint8 (N,3,c,c) in ``looked``'s order; the places by
        item id: ``decision`` and ``x``, ``y`` in their crop's CRS).
    """
    info = ScanFolder(queue["scan"]).read_summary()
    scenes = {s["scene"]: SceneScan(**s) for s in info["scenes"]}
    sources = scan_sources(info, [scenes[s] for s in sorted(set(looked["scene"]))])
    half = int(meta.chip_size) * context // 2
    centres, where = {}, {}
    for scene, group in looked.groupby("scene"):
        crs = scenes[scene].crs
        xs, ys = warp_points("EPSG:4326", crs, group["lon"].astype(float).tolist(), group["lat"].astype(float).tolist())
        with open_source(sources[scene], gsd=meta.gsd) as ds:
            for item_id, x, y in zip(group["id"], *warp_points(crs, ds.crs, xs, ys)):
                row, col = ds.index(x, y)
                where[item_id] = (x, y)
                r0, c0 = max(0, row - half), max(0, col - half)
                win = Window(c0, r0, min(ds.width, col + half) - c0, min(ds.height, row + half) - r0)
                img = ds.read((1, 2, 3), window=win)
                img[:, ds.dataset_mask(window=win) == 0] = 0
                write_geotiff(out / f"{item_id}.tif", img, ds.crs, ds.window_transform(win))
        chips = read_chips_at(sources[scene], meta, list(zip(xs, ys)), crs)
        centres.update({item_id: chip[0] for item_id, chip in zip(group["id"], chips)})
    places = looked.set_index("id")[["decision"]].assign(x=[where[i][0] for i in looked["id"]],
                                                         y=[where[i][1] for i in looked["id"]])
    return np.stack([centres[i] for i in looked["id"]]).astype(np.uint8), places


def _chip_config(home: dict) -> ChipConfig:
    """The home chips' labelling and sampling rule, for crops that are 8-bit RGB scenes of their own, all train."""
    known = {f.name for f in fields(ChipConfig)}
    config = {k: v for k, v in (home.get("config") or {}).items() if k in known}
    for key in ("block_fractions", "centred_splits"):
        if isinstance(config.get(key), list):
            config[key] = tuple(config[key])
    config.update(gsd=home["gsd"], chip_size=int(home["chip_size"]), bands=None, scale=None, crs=None,
                  schools_layer=None, schools_where="label=school", lonlat_columns=None, val_scenes=(), test_scenes=(),
                  separate_scenes=True, tile_scheme=None, tile_pattern=None, zoom=None)
    return ChipConfig(**config)


def _training_set(out: Path, home: ChipsFolder, reviewed: ChipsFolder, places: pd.DataFrame, clean: set[str],
                  ratio: float | None, replay: float, seed: int) -> dict[str, Any]:
    """Write the round's chips folder: reviewed chips by the rules, replayed home train chips, home val and test.

    ``places``: the decided places by item id (``decision``, ``x``, ``y`` in the crops' CRS); ``ratio``: the
    home chips' ``negative_ratio``.
    """
    rows = reviewed.read_index()
    scene = rows["scene"].astype(str)
    own = (((rows["minx"] + rows["maxx"]) / 2 - scene.map(places["x"])).abs() < rows["maxx"] - rows["minx"]) & (
        ((rows["miny"] + rows["maxy"]) / 2 - scene.map(places["y"])).abs() < rows["maxy"] - rows["miny"])
    # each place's chips from its own crop only (crops overlap): its school chips, or its hard negative (the one
    # centred on it), and grid negatives from the clean neighbourhoods
    keep = ((rows["label"] == "school") & scene.map(places["decision"]).eq("school")) | (
        (rows["view"] == HARD_NEGATIVE) & own) | ((rows["view"] != HARD_NEGATIVE) & scene.isin(clean))
    rows = rows[keep].assign(split="train", origin="review", chip_id=lambda f: "review-" + f["chip_id"].astype(str))
    rng = np.random.default_rng(seed)
    meta = home.read_meta()
    rows, dropped = balance_grid_negatives(rows, ratio, rng)
    rows["path"] = [os.path.relpath(reviewed.root / p, out) for p in rows["path"]]
    base = home.read_index()
    train = base[base["split"] == "train"]
    picked = [g.iloc[np.sort(rng.choice(len(g), math.ceil(replay * len(g)), replace=False))]
              for _, g in train.groupby("label", sort=True) if replay > 0]
    kept = pd.concat([*picked, base[base["split"] != "train"]], ignore_index=True).assign(origin="home")
    kept["path"] = [os.path.relpath(home.root / p, out) for p in kept["path"]]
    index = pd.concat([kept, rows], ignore_index=True)
    folder = ChipsFolder(out)
    buf = io.StringIO()
    index.to_csv(buf, index=False, lineterminator="\n")
    folder.write_index(buf.getvalue())
    counts = {s: {c: int(((index["split"] == s) & (index["label"] == c)).sum()) for c in meta["classes"]}
              for s in SPLITS}
    review = rows["label"].value_counts().to_dict()
    record = {"reviewed_school": int(review.get("school", 0)), "reviewed_not_school": int(review.get("not_school", 0)),
              "hard_negatives": int((rows["view"] == HARD_NEGATIVE).sum()), "undersampled_grid_negatives": dropped,
              "replayed": {c: int((kept["split"].eq("train") & kept["label"].eq(c)).sum()) for c in meta["classes"]},
              "home_train": {c: int(train["label"].eq(c).sum()) for c in meta["classes"]}}
    folder.write_meta({**{k: v for k, v in meta.items() if k not in ("fingerprint", "schools", "scenes")},
                       "counts": counts, "home_chips": str(home.root.resolve()),
                       "reviewed_chips": str(reviewed.root.resolve()), "round": record,
                       "rule": "reviewed chips (train) + a replayed share of the home train chips + the home val and "
                               "test chips; chips.csv paths are relative to this folder"})
    return record


def balance_grid_negatives(rows: pd.DataFrame, ratio: float | None, rng: np.random.Generator
                           ) -> tuple[pd.DataFrame, int]:
    """Keep at most ``ratio`` not_school chips per school chip of the round (hard negatives always kept).

    Grid negatives fill what the hard negatives leave of that budget, drawn without replacement (seeded)
    and kept in their order. ``ratio`` None keeps every chip (the home chips' ``negative_ratio`` rule).

    Returns:
        (the kept rows, how many grid negatives were left out).
    """
    if ratio is None:
        return rows, 0
    hard = rows["view"] == HARD_NEGATIVE
    room = max(0, math.ceil(ratio * int((rows["label"] == "school").sum())) - int(hard.sum()))
    where = np.flatnonzero(((rows["label"] == "not_school") & ~hard).to_numpy())
    if len(where) <= room:
        return rows, 0
    drop = np.setdiff1d(where, rng.choice(where, room, replace=False))
    return rows.drop(rows.index[drop]), int(len(drop))


def place_probabilities(run: Path, chips: np.ndarray, device) -> tuple[np.ndarray, float]:
    """(P(school) of uint8 (N,3,c,c) chips by the run's best model, the run's threshold)."""
    model, meta = load_classifier(run, device)
    if not len(chips):
        return np.zeros(0, np.float32), float(meta.threshold)
    runtime = make_runtime("torch", model.to(device).eval(), meta, device)
    return predict_windows(runtime, to_float(chips), meta.image_size), float(meta.threshold)


def _place_scores(p: np.ndarray, threshold: float, accepted: np.ndarray) -> dict[str, Any]:
    """How a model sees the reviewed places: schools at or above its threshold, rejected places above it."""
    flagged = p >= threshold
    return {"threshold": threshold, "schools": int(accepted.sum()), "schools_found": int((flagged & accepted).sum()),
            "rejected": int((~accepted).sum()), "rejected_flagged": int((flagged & ~accepted).sum()),
            "mean_p_school": float(p[accepted].mean()) if accepted.any() else None,
            "mean_p_rejected": float(p[~accepted].mean()) if (~accepted).any() else None}


HOME_KEYS = ("auprc", "f1", "recall", "precision", "threshold")
"""The home test metrics ``round.json`` keeps before and after (with their bootstrap intervals)."""


def _home_metrics(metrics: dict) -> dict[str, Any]:
    return {**{k: metrics.get(k) for k in HOME_KEYS}, "bootstrap": metrics.get("bootstrap"),
            "school_chips": (metrics.get("n_chips") or {}).get("school")}


def retrain(config: RetrainConfig, figures: tblog.FigureMaker | None = None) -> RoundSummary:
    """Turn a queue's decisions into chips by the module's rules and fine-tune the run on them.

    Args:
        config: the queue, its decisions export, the run that made the scan, the round folder.
        figures: the run's end-of-run TensorBoard figures (see :func:`schoolvision.train.fit.fit`).

    Returns:
        The round folder, the new run and ``round.json``'s record.

    Raises:
        UserError: (one line, before anything is written) decisions from another queue, a run of another
            backbone than the queue's, a run without its home chips, no place accepted as a school, or
            ``out`` not empty (without ``overwrite``) or in an input.
    """
    folder = ReviewFolder(config.queue)
    queue, items = folder.read_queue(), folder.read_items()
    decided = resolve_merged(latest(read_decisions(config.decisions))[0], items)
    check_queue(decided, queue["queue_id"], set(items["id"]), Path(config.decisions))
    home_config, home_chips = _home(Path(config.run), queue)
    home_meta = home_chips.read_meta(required=True)
    context = int(queue.get("context") or CONTEXT)
    side_m = float(home_meta["chip_size"]) * float(home_meta["gsd"]) * context
    looked, clean = neighbourhoods(items, decided, side_m)
    accepted = (looked["decision"] == "school").to_numpy()
    if not accepted.any():
        raise UserError("no place was accepted as a school: a round needs at least one school to learn from "
                        "(decide more items, then Export again)", config.decisions)
    out = Path(config.out)
    prepare_output(out, config.overwrite, own_files=ROUND_FILES,
                   inputs={"--queue": config.queue, "--decisions": config.decisions, "--run": config.run,
                           "the home chips": home_chips.root})
    labels = out / "labels.geojson"
    import_decisions(config.decisions, config.queue, labels, overwrite=True)
    manifest.add(out, ["crops", "reviewed_chips", "chips", "run"])  # sub-folders --overwrite may clear
    crops = out / "crops"
    _, meta = load_classifier(config.run, "cpu")
    place_chips, places = _write_crops(looked, queue, meta, context, crops)
    reviewed = out / "reviewed_chips"
    rule = _chip_config(home_meta)
    with warnings.catch_warnings():  # the crops are all train: the "no school in val / test" notes do not apply
        warnings.simplefilter("ignore", UserWarning)
        make_chips([crops], labels, reviewed, rule, overwrite=True, negatives=labels,
                   negatives_where="label=not_school")
    chips = out / "chips"
    prepare_output(chips, True)
    counts = _training_set(chips, home_chips, ChipsFolder(reviewed), places, clean, rule.negative_ratio,
                           config.replay, config.seed)

    device = resolve_device(config.device)
    before_p, before_t = place_probabilities(Path(config.run), place_chips, device)
    new_run = out / "run"
    metrics = fit(TrainConfig(chips_dir=chips, out_dir=new_run, backbone=home_config["backbone"],
                              epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, device=config.device,
                              seed=config.seed, init_from=Path(config.run), overwrite=True), figures=figures)
    after_p, after_t = place_probabilities(new_run, place_chips, device)
    decisions = pd.Series([d["decision"] for d in decided.values()]).value_counts().to_dict()
    record = {
        "queue": str(Path(config.queue).resolve()), "queue_id": queue["queue_id"], "scan": queue.get("scan", ""),
        "decisions": str(Path(config.decisions).resolve()), "decisions_sha256": sha256(config.decisions),
        "parent_run": str(Path(config.run).resolve()), "run": str(new_run.resolve()),
        "decided": {k: int(decisions.get(k, 0)) for k in ("school", "not_school", "unsure")},
        "places": len(looked), "neighbourhood_m": side_m, "neighbourhoods_with_grid_negatives": len(clean),
        "chips": counts, "epochs": config.epochs, "lr": config.lr, "replay": config.replay, "seed": config.seed,
        "thresholds": {"before": before_t, "after": after_t},
        "home_test": {"before": _home_metrics(RunFolder(config.run).read_metrics("test", required=False)),
                      "after": _home_metrics(metrics)},
        "reviewed_places": {"before": _place_scores(before_p, before_t, accepted),
                            "after": _place_scores(after_p, after_t, accepted),
                            "note": "the after model trained on these places: a check that it learnt them, not a "
                                    "held-out measure"},
        "rules": RULES,
    }
    RunFolder(new_run).write_round(record)
    return RoundSummary(out=str(out), run=str(new_run), record=record)


def rounds_table(runs: list[str | Path]) -> pd.DataFrame:
    """The review rounds that made ``runs`` side by side: one row per run with a ``round.json``.

    Columns: the run, its parent, the queue, the decisions (school / not_school / unsure), the reviewed chips,
    and the home test AUPRC, F1, recall and the threshold before and after.
    """
    rows = []
    for run in runs:
        r = RunFolder(run).read_round()
        if not r:
            continue
        row = {"run": str(run), "parent_run": r["parent_run"], "queue_id": r["queue_id"],
               **{f"decided_{k}": v for k, v in r["decided"].items()},
               "reviewed_school_chips": r["chips"]["reviewed_school"],
               "reviewed_not_school_chips": r["chips"]["reviewed_not_school"]}
        for when in ("before", "after"):
            home = r["home_test"][when]
            row.update({f"home_{k}_{when}": home.get(k) for k in ("auprc", "f1", "recall", "threshold")})
        rows.append(row)
    return pd.DataFrame(rows)
