"""Evaluate a trained run: metrics with bootstrap intervals, predictions table, ``metrics.json``.

``fit`` and ``schoolvision evaluate`` share these functions, so re-evaluating ``best.pt`` gives the
same numbers and the same predictions as the training run wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from schoolvision.data.dataset import ChipDataset
from schoolvision.errors import UserError, check_range
from schoolvision.io.folders import RunFolder
from schoolvision.model.checkpoint import load_classifier
from schoolvision.model.inference import predict_logits, school_probability
from schoolvision.model.runtime import AUTOCAST_TOLERANCE, make_runtime
from schoolvision.train.metrics import bootstrap_ci, classification_metrics

PREDICTION_COLUMNS = ["chip_id", "path", "split", "scene", "label", "prob", "pred"]

FLOAT_NOISE = 1e-5
"""Largest |P(school)| difference from ``predictions.csv`` that still counts as a match for a float32 runtime
other than ``torch``: float32 runtimes (ONNX Runtime, channels_last) agree with torch to ~1e-6. A runtime that
ran in autocast is held to the autocast tolerance instead (``AUTOCAST_TOLERANCE``)."""


def label_array(frame: pd.DataFrame) -> np.ndarray:
    """0/1 labels (1 = school) from a chips.csv ``label`` column (names or integers)."""
    return frame["label"].map(lambda v: 1 if str(v) in ("school", "1") else 0).to_numpy(np.int64)


NEGATIVE_BLOCK_M = 256.0
"""Side (metres) of the ground cells that group ``not_school`` chips for the bootstrap: two 128 px chips at
1 m, so chips cut from overlapping windows (stride half a chip) mostly share a cell."""


def bootstrap_groups(frame: pd.DataFrame, block_m: float = NEGATIVE_BLOCK_M) -> np.ndarray:
    """One bootstrap group id per chip of a ``chips.csv`` frame: the school, or the ground cell.

    Chips of a school (``school_name``) are one group: its overlapping and centred views are one
    piece of evidence, not several. ``not_school`` chips are grouped by the ``block_m`` cell of
    their scene their top-left corner falls in (neighbouring windows overlap too). Frames without
    these columns give one group per chip.
    """
    if not {"scene", "school_name", "minx", "maxy"} <= set(frame.columns):
        return np.arange(len(frame)).astype(str)
    names = frame["school_name"].fillna("").astype(str).to_numpy()
    scenes = frame["scene"].astype(str).to_numpy()
    cx = np.floor(frame["minx"].to_numpy(np.float64) / block_m).astype(np.int64)
    cy = np.floor(frame["maxy"].to_numpy(np.float64) / block_m).astype(np.int64)
    is_school = label_array(frame) == 1
    return np.array([f"school:{sc}:{n}" if school and n else f"cell:{sc}:{x}:{y}"
                     for sc, n, x, y, school in zip(scenes, names, cx, cy, is_school)])


def split_report(labels: np.ndarray, probs: np.ndarray, threshold: float, temperature: float, n_boot: int = 1000,
                 seed: int = 0, groups: np.ndarray | None = None) -> dict[str, Any]:
    """Metrics of one split at ``threshold`` plus the temperature and bootstrap CIs of F1 and AUPRC.

    ``groups``: the chips' bootstrap groups (:func:`bootstrap_groups`); None resamples chips one by one.
    """
    report = classification_metrics(labels, probs, threshold)
    report["temperature"] = float(temperature)
    report["bootstrap"] = bootstrap_ci(labels, probs, threshold, n_boot=n_boot, seed=seed, groups=groups)
    report["bootstrap"]["resampled"] = "chips" if groups is None else (
        f"schools (a school's chips together) and {NEGATIVE_BLOCK_M:g} m cells of not_school chips")
    return report


def prediction_frame(frame: pd.DataFrame, split: str, probs: np.ndarray, threshold: float) -> pd.DataFrame:
    """Rows of ``predictions.csv`` for one split."""
    out = pd.DataFrame(
        {
            "chip_id": frame["chip_id"].to_numpy() if "chip_id" in frame else np.arange(len(frame)).astype(str),
            "path": frame["path"].to_numpy() if "path" in frame else "",
            "split": split,
            "scene": frame["scene"].to_numpy() if "scene" in frame else "",
            "label": label_array(frame),
            "prob": probs,
            "pred": (probs >= threshold).astype(np.int64),
        }
    )
    return out[PREDICTION_COLUMNS]


@dataclass
class EvalConfig:
    """What ``schoolvision evaluate`` needs."""

    run_dir: Path
    chips_dir: Path
    split: str = "test"
    batch_size: int | None = None  # None: the run's batch size (same batches -> bitwise-equal predictions)
    device: str = "cpu"
    n_boot: int = 1000
    seed: int = 0
    runtime: str = "auto"  # torch reproduces fit's P(school) bit for bit; onnx (auto on CPU) within FLOAT_NOISE

    def __post_init__(self) -> None:
        check_range("--batch-size", self.batch_size, minimum=1)
        check_range("--n-boot", self.n_boot, minimum=1)


def evaluate_run(config: EvalConfig) -> dict[str, Any]:
    """Recompute the metrics of ``RUN/best.pt`` on ``split`` and write them.

    For ``split="test"`` this rewrites ``RUN/metrics.json`` (test metrics plus the validation
    report, exactly as ``fit`` lays it out); other splits go to ``RUN/metrics_<split>.json``. The
    result has ``predictions_match``: whether the recomputed P(school) equal ``predictions.csv``
    (bit for bit with ``runtime="torch"``, within :data:`FLOAT_NOISE` with another float32 runtime, within the
    autocast tolerance with one that ran in bfloat16 / float16), and the runtime and precision that scored them.

    Raises:
        UserError: a missing or unreadable run, an empty split, an unknown runtime or ``onnx`` without the extra.
    """
    run = RunFolder(config.run_dir)
    model, meta = load_classifier(run.best, config.device)
    # auto stays float32 here: evaluate reproduces the run's metrics; --runtime onnx-int8 measures int8's
    runtime = make_runtime(config.runtime, model, meta, config.device, checkpoint=run.best, int8=False)
    batch_size = config.batch_size or int(run.read_config().get("batch_size", 64))
    splits = [config.split, "val"] if config.split == "test" else [config.split]
    reports, probs_by_split = {}, {}
    for split in splits:
        ds = ChipDataset(config.chips_dir, split=split, augment=False, image_size=meta.image_size)
        if len(ds) == 0:
            raise UserError(f"split {split!r} has no chips", Path(config.chips_dir) / "chips.csv")
        logits, _ = predict_logits(model, ds, batch_size, config.device, forward=runtime.logits)
        probs = school_probability(logits, meta.temperature)
        probs_by_split[split] = (ds.frame, probs)
        reports[split] = split_report(label_array(ds.frame), probs, meta.threshold, meta.temperature, config.n_boot,
                                      config.seed, groups=bootstrap_groups(ds.frame))
    result = dict(reports[config.split])
    if config.split == "test":
        result["val"] = reports["val"]
        previous = run.read_metrics(required=False)
        for key in ("best_epoch", "epochs_run", "backbone", "pretrained", "training_precision"):
            if key in previous:
                result[key] = previous[key]
    if runtime.name == "torch":
        tolerance = 0.0
    else:
        tolerance = FLOAT_NOISE if runtime.precision == "float32" else AUTOCAST_TOLERANCE
    result["runtime"], result["runtime_precision"] = runtime.name, runtime.precision
    result["predictions_match"] = _predictions_match(run, probs_by_split, tolerance)
    run.write_metrics(result, config.split)
    return result


def extreme_chips(predictions: pd.DataFrame, chips_dir: str | Path, split: str = "test", n: int = 8,
                  worst: bool = False) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """The ``n`` most confidently right (or, ``worst``, most wrong) chips of ``split``.

    Args:
        predictions: a run's predictions table (:meth:`RunFolder.read_predictions`).
        chips_dir: the chips folder the run was trained on.
        split: which split's rows to rank.
        n: how many chips.
        worst: rank by largest error instead of smallest.

    Returns:
        The chips' prediction rows, in order, and their pixels as (H, W, 3) uint8 arrays.
    """
    frame = predictions[predictions["split"] == split].reset_index(drop=True)
    error = np.abs(frame["prob"].to_numpy() - frame["label"].to_numpy())
    rows = frame.iloc[np.argsort(-error if worst else error, kind="stable")[:n]].reset_index(drop=True)
    ds = ChipDataset(chips_dir, split=split)
    pos = {cid: i for i, cid in enumerate(ds.frame["chip_id"].astype(str))}
    return rows, [ds.read_chip(pos[cid]).transpose(1, 2, 0) for cid in rows["chip_id"].astype(str)]


def _predictions_match(run: RunFolder, probs_by_split: dict[str, tuple[pd.DataFrame, np.ndarray]],
                       tolerance: float = 0.0) -> bool | None:
    """True when ``predictions.csv`` holds the same P(school) per chip (within ``tolerance``; 0: bit for bit)."""
    if not run.predictions_path.is_file():
        return None
    saved = run.read_predictions()
    for split, (frame, probs) in probs_by_split.items():
        rows = saved[saved["split"] == split]
        if rows.empty:
            continue
        now = prediction_frame(frame, split, probs, 0.5)
        same_ids = np.array_equal(rows["chip_id"].astype(str).to_numpy(), now["chip_id"].astype(str).to_numpy())
        if len(rows) != len(now) or not same_ids:
            return False
        saved_prob, now_prob = rows["prob"].to_numpy(), now["prob"].to_numpy()
        same = np.array_equal(saved_prob, now_prob) if tolerance == 0 else np.allclose(saved_prob, now_prob, rtol=0,
                                                                                       atol=tolerance)
        if not same:
            return False
    return True
