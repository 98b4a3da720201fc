"""Spatial cross-validation: ``schoolvision train --folds K``.

A test split of a few schools cannot rank models: one school more or less found moves every metric by
a large step. Cross-validation scores every chip once, by a model that never saw it, so that all the
schools of a small area count (Giga evaluates with leave-one-country-out folds for the same reason).

Folds are spatial, never random chips: whole scenes when there are at least K of them, else square
ground blocks of :func:`fold_block_m` metres in each scene. A school's chips (its overlapping and
centred views) stay together in the fold of the school. Fold ``k`` is the test split of model ``k``,
fold ``k + 1`` its validation split (model selection, temperature, threshold), the rest its training
split; training and validation chips whose footprint overlaps a test chip are left out, so that no
test pixel is ever trained on.

The run folder holds one full run per fold (``fold_1`` ...), the index each was trained on
(``chips_fold_1`` ...), the out-of-fold ``predictions.csv`` (every chip once, with its ``fold``) and a
``metrics.json`` whose top level is the pooled out-of-fold report (bootstrap intervals included) and
whose ``folds`` holds one row per fold.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from schoolvision.errors import UserError, check_range
from schoolvision.io import manifest
from schoolvision.io.folders import ChipsFolder, RunFolder, prepare_output
from schoolvision.train import tblog
from schoolvision.train.evaluation import bootstrap_groups, label_array, split_report
from schoolvision.train.fit import TrainConfig, fit

FOLD_KEYS = ("auprc", "f1", "precision", "recall", "roc_auc", "threshold", "temperature")
"""The metrics of a fold's row in ``metrics.json``."""


def count_schools(chips_dir: str | Path, split: str = "test") -> int:
    """The number of distinct schools among the school chips of ``split`` (0 when it holds none)."""
    frame = ChipsFolder(chips_dir).read_index()
    part = frame[(frame["split"] == split) & (label_array(frame) == 1)]
    if "school_name" not in part:
        return int(len(part) > 0)
    named = part["school_name"].astype(str)
    return int(named[named != ""].nunique() + (named == "").any())


def fold_lines(metrics: dict[str, Any]) -> list[str]:
    """A cross-validation's ``metrics.json`` as text: one line per fold, then the pooled out-of-fold metrics."""
    lines = [f"fold {row['fold']}: {row['test_schools']} school(s) in {row['test_chips']} test chips, "
             f"auprc={row['auprc']:.3f} f1={row['f1']:.3f} threshold={row['threshold']:.3f}"
             for row in metrics["folds"]]
    low, high = metrics["bootstrap"]["auprc"]
    cv = metrics["cross_validation"]
    lines.append(f"out-of-fold ({cv['k']} folds of {cv['unit']}, {cv['scored']} chips): "
                 f"{metrics['bootstrap']['level']:.0%} bootstrap auprc [{low:.3f}, {high:.3f}], "
                 f"auprc={metrics['auprc']:.3f} f1={metrics['f1']:.3f} precision={metrics['precision']:.3f} "
                 f"recall={metrics['recall']:.3f}")
    return lines


def fold_block_m(meta: dict[str, Any]) -> float:
    """Side (metres) of the ground blocks that form folds within one scene: two chips' ground extent."""
    return 2.0 * float(meta.get("chip_size") or 128) * float(meta.get("gsd") or 1.0)


def assign_folds(frame: pd.DataFrame, k: int, block_m: float, seed: int = 0) -> tuple[np.ndarray, str]:
    """A fold (0..k-1) per chip of a ``chips.csv`` frame, and the unit the folds are made of.

    Units are whole scenes when the frame holds at least ``k`` of them, else ``block_m`` ground blocks
    of each scene (by chip centre). The chips of one school go to the unit of their mean centre.
    Units are dealt to folds, most schools first, each to the fold with the fewest schools so far (then
    the fewest chips); units without a school then go to the fold with the fewest ``not_school`` chips,
    so that every fold holds both classes. Ties are broken by a seeded shuffle.

    Raises:
        UserError: fewer schools than folds (a fold without a school can neither validate nor test).
    """
    scenes = frame["scene"].astype(str).to_numpy() if "scene" in frame else np.full(len(frame), "scene")
    by_scene = len(set(scenes)) >= k
    if by_scene:
        units = scenes.copy()
    else:
        cx = (frame["minx"].to_numpy(float) + frame["maxx"].to_numpy(float)) / 2
        cy = (frame["miny"].to_numpy(float) + frame["maxy"].to_numpy(float)) / 2
        school = label_array(frame) == 1
        names = frame["school_name"].astype(str).to_numpy() if "school_name" in frame else np.full(len(frame), "")
        keys = pd.Series(list(zip(scenes, names)))
        for key in set(keys[school & (names != "")]):  # a school's views go to the block of their mean centre
            rows = np.flatnonzero((keys == key).to_numpy() & school)
            cx[rows], cy[rows] = cx[rows].mean(), cy[rows].mean()
        units = np.array([f"{s}:{int(np.floor(x / block_m))}:{int(np.floor(y / block_m))}"
                          for s, x, y in zip(scenes, cx, cy)])
    schools_in = _schools_per_unit(frame, units)
    n_schools = sum(schools_in.values())
    if n_schools < k:
        raise UserError(f"{k} folds need at least {k} schools; the chips hold {n_schools}: use fewer --folds")
    names = sorted(set(units))
    rng = np.random.default_rng(seed)
    shuffled = [names[i] for i in rng.permutation(len(names))]
    chips_in = pd.Series(units).value_counts().to_dict()
    order = sorted(shuffled, key=lambda u: (-schools_in.get(u, 0), -chips_in[u]))
    negatives_in = pd.Series(units[label_array(frame) == 0]).value_counts().to_dict()
    load = np.zeros((k, 3))  # schools, chips, not_school chips per fold
    fold_of = {}
    for unit in order:  # units with schools balance the schools, the others the not_school chips
        keys = (load[:, 1], load[:, 0]) if schools_in.get(unit, 0) else (load[:, 1], load[:, 2])
        target = int(np.lexsort(keys)[0])
        fold_of[unit] = target
        load[target] += (schools_in.get(unit, 0), chips_in[unit], negatives_in.get(unit, 0))
    return np.array([fold_of[u] for u in units]), "scenes" if by_scene else f"{block_m:g} m blocks"


def _schools_per_unit(frame: pd.DataFrame, units: np.ndarray) -> dict[str, int]:
    school = label_array(frame) == 1
    names = frame["school_name"].astype(str).to_numpy() if "school_name" in frame else np.full(len(frame), "")
    scenes = frame["scene"].astype(str).to_numpy() if "scene" in frame else np.full(len(frame), "")
    out: dict[str, set] = {}
    for unit, scene, name, i in zip(units[school], scenes[school], names[school], np.flatnonzero(school)):
        out.setdefault(unit, set()).add((scene, name) if name else i)
    return {u: len(s) for u, s in out.items()}


def fold_splits(frame: pd.DataFrame, folds: np.ndarray, fold: int, k: int) -> pd.Series:
    """The split of every chip for model ``fold``: its test and validation folds, the rest training.

    Training and validation chips whose footprint overlaps a test chip of the same scene get no split
    (``""``): they are left out of this model, so that it never trains on a pixel it is tested on.
    """
    split = np.where(folds == fold, "test", np.where(folds == (fold + 1) % k, "val", "train")).astype(object)
    if {"minx", "miny", "maxx", "maxy"} <= set(frame.columns):
        boxes = frame[["minx", "miny", "maxx", "maxy"]].to_numpy(float)
        scenes = frame["scene"].astype(str).to_numpy() if "scene" in frame else np.full(len(frame), "")
        test = np.flatnonzero(split == "test")
        for scene in set(scenes[test]):
            t = boxes[test[scenes[test] == scene]]
            others = np.flatnonzero((split != "test") & (scenes == scene))
            b = boxes[others]
            overlap = ((b[:, None, 0] < t[None, :, 2]) & (b[:, None, 2] > t[None, :, 0])
                       & (b[:, None, 1] < t[None, :, 3]) & (b[:, None, 3] > t[None, :, 1])).any(axis=1)
            split[others[overlap]] = ""
    return pd.Series(split, index=frame.index)


def _write_fold_chips(chips: ChipsFolder, frame: pd.DataFrame, split: pd.Series, out: Path) -> Path:
    """A chips folder that re-splits ``chips``' chips: its index and ``dataset.json``, the chips read in place."""
    meta = chips.read_meta(required=True)
    meta["scenes"] = {name: {**(entry if isinstance(entry, dict) else {}), "path": str(path.resolve())}
                      for (name, entry), path in zip(meta.get("scenes", {}).items(), chips.scene_paths().values())}
    part = frame.assign(split=split)[split != ""].copy()
    part["path"] = [str((chips.root / p).resolve()) for p in part["path"]]
    folder = ChipsFolder(out)
    folder.write_meta(meta)
    folder.write_index(part.to_csv(index=False))
    return out


def cross_validate(config: TrainConfig, k: int, figures: tblog.FigureMaker | None = None) -> dict[str, Any]:
    """Train ``k`` models on spatial folds of ``config.chips_dir``; pool their out-of-fold predictions.

    Every setting of ``config`` applies to each fold's model (written to ``out_dir/fold_<n>``);
    ``config.resume`` is refused. Returns (and writes to ``out_dir/metrics.json``) the pooled
    out-of-fold report (:func:`~schoolvision.train.evaluation.split_report` on every chip, each at its
    own model's threshold; ``threshold`` is None there) with ``folds`` (one row per fold: chips,
    schools, metrics), ``cross_validation`` (k, the unit, the block size) and ``n_boot`` intervals.

    Raises:
        UserError: fewer than 2 folds, ``resume``, fewer schools than folds, or what ``fit`` raises.
    """
    check_range("--folds", k, minimum=2)
    if config.resume:
        raise UserError("--folds trains new models; it cannot --resume a run")
    chips = ChipsFolder(config.chips_dir)
    meta = chips.read_meta(required=True)
    frame = chips.read_index().reset_index(drop=True)
    block_m = fold_block_m(meta)
    folds, unit = assign_folds(frame, k, block_m, config.seed)
    run = RunFolder(config.out_dir)
    prepare_output(run.root, config.overwrite, own_files=RunFolder.FOLD_FILES, inputs={"--chips": config.chips_dir},
                   message="run folder is not empty; use --overwrite to replace it")
    rows, parts = [], []
    for fold in range(k):
        split = fold_splits(frame, folds, fold, k)
        fold_chips, fold_run = run.fold_chips(fold + 1), run.fold(fold + 1)
        for path in (fold_chips, fold_run):
            manifest.record(path)
        _write_fold_chips(chips, frame, split, fold_chips)
        fold_config = dataclasses.replace(config, chips_dir=fold_chips, out_dir=fold_run, overwrite=True)
        metrics = fit(fold_config, figures=figures)
        predictions = RunFolder(fold_run).read_predictions()
        test = predictions[predictions["split"] == "test"].assign(fold=fold + 1, threshold=metrics["threshold"])
        parts.append(test)
        rows.append({"fold": fold + 1, "test_chips": int((split == "test").sum()),
                     "train_chips": int((split == "train").sum()), "val_chips": int((split == "val").sum()),
                     "left_out": int((split == "").sum()),
                     "test_schools": count_schools(fold_chips), **{key: metrics[key] for key in FOLD_KEYS},
                     "auprc_interval": metrics["bootstrap"]["auprc"], "best_epoch": metrics["best_epoch"]})
    pooled = pd.concat(parts, ignore_index=True)
    index = frame.assign(chip_id=frame["chip_id"].astype(str)).set_index("chip_id")
    ordered = index.loc[pooled["chip_id"].astype(str)].reset_index()
    labels, probs = pooled["label"].to_numpy(np.int64), pooled["prob"].to_numpy(np.float64)
    thresholds = pooled["threshold"].to_numpy(np.float64)
    report = split_report(labels, probs, thresholds, float("nan"), config.n_boot, config.seed,
                          groups=bootstrap_groups(ordered))
    report.pop("temperature")
    # pooled probabilities come from k models calibrated apart, so the pooled AUPRC can fall below every
    # fold's own; the mean of the folds' AUPRCs is recorded beside it
    report.update(folds=rows, cross_validation={"k": k, "unit": unit, "block_m": block_m, "chips": len(frame),
                                                "scored": len(pooled),
                                                "mean_fold_auprc": float(np.mean([r["auprc"] for r in rows]))},
                  backbone=config.backbone, pretrained=config.pretrained)
    pooled["pred"] = (probs >= thresholds).astype(np.int64)
    pooled["split"] = ordered["split"].to_numpy()  # the chip's split in the single-split run, for comparison
    run.write_predictions([pooled.drop(columns="threshold")])
    run.write_metrics(report)
    return report
