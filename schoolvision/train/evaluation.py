"""Evaluate a trained run: metrics with bootstrap intervals, predictions table, ``metrics.json``.

``fit`` and ``schoolvision evaluate`` share these functions, so re-evaluating ``best.pt`` gives the
same numbers and the same predictions as the training run wrote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from schoolvision.io.atomic import atomic_path, write_json
from schoolvision.model.checkpoint import load_classifier
from schoolvision.errors import UserError
from schoolvision.model.inference import predict_logits, school_probability
from schoolvision.train.metrics import bootstrap_ci, classification_metrics

PREDICTION_COLUMNS = ["chip_id", "path", "split", "scene", "label", "prob", "pred"]


def label_array(frame: pd.DataFrame) -> np.ndarray:
    """0/1 labels (1 = school) from a chips.csv ``label`` column (names or integers)."""
    return frame["label"].map(lambda v: 1 if str(v) in ("school", "1") else 0).to_numpy(np.int64)


def split_report(labels: np.ndarray, probs: np.ndarray, threshold: float, temperature: float, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Metrics of one split at ``threshold`` plus the temperature and bootstrap CIs of F1 and AUPRC."""
    report = classification_metrics(labels, probs, threshold)
    report["temperature"] = float(temperature)
    report["bootstrap"] = bootstrap_ci(labels, probs, threshold, n_boot=n_boot, seed=seed)
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


def write_predictions(path: str | Path, frames: list[pd.DataFrame]) -> Path:
    with atomic_path(path) as tmp:
        pd.concat(frames, ignore_index=True).to_csv(tmp, index=False)  # repr floats: exact round trip
    return Path(path)


def read_predictions(path: str | Path) -> pd.DataFrame:
    """``predictions.csv`` with probabilities parsed exactly as written (pandas' default parser round-trips repr floats)."""
    return pd.read_csv(path, dtype={"chip_id": str})


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


def evaluate_run(config: EvalConfig) -> dict[str, Any]:
    """Recompute the metrics of ``RUN/best.pt`` on ``split`` and write them.

    For ``split="test"`` this rewrites ``RUN/metrics.json`` (test metrics plus the validation
    report, exactly as ``fit`` lays it out); other splits go to ``RUN/metrics_<split>.json``. The
    result has ``predictions_match``: whether the recomputed P(school) equal ``predictions.csv``.
    """
    from schoolvision.data.dataset import ChipDataset

    run_dir = Path(config.run_dir)
    model, meta = load_classifier(run_dir / "best.pt", config.device)
    batch_size = config.batch_size or int(_read_json(run_dir / "config.json").get("batch_size", 64))
    splits = [config.split, "val"] if config.split == "test" else [config.split]
    reports, probs_by_split = {}, {}
    for split in splits:
        ds = ChipDataset(config.chips_dir, split=split, augment=False, image_size=meta.image_size)
        if len(ds) == 0:
            raise UserError(f"split {split!r} has no chips", Path(config.chips_dir) / "chips.csv")
        logits, _ = predict_logits(model, ds, batch_size, config.device)
        probs = school_probability(logits, meta.temperature)
        probs_by_split[split] = (ds.frame, probs)
        reports[split] = split_report(label_array(ds.frame), probs, meta.threshold, meta.temperature, config.n_boot, config.seed)
    result = dict(reports[config.split])
    if config.split == "test":
        result["val"] = reports["val"]
        previous = _read_json(run_dir / "metrics.json")
        for key in ("best_epoch", "epochs_run", "backbone", "pretrained"):
            if key in previous:
                result[key] = previous[key]
    result["predictions_match"] = _predictions_match(run_dir / "predictions.csv", probs_by_split)
    write_json(run_dir / ("metrics.json" if config.split == "test" else f"metrics_{config.split}.json"), result)
    return result


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _predictions_match(path: Path, probs_by_split: dict[str, tuple[pd.DataFrame, np.ndarray]]) -> bool | None:
    """True when ``predictions.csv`` holds exactly the same P(school) per chip."""
    if not path.is_file():
        return None
    saved = read_predictions(path)
    for split, (frame, probs) in probs_by_split.items():
        rows = saved[saved["split"] == split]
        if rows.empty:
            continue
        now = prediction_frame(frame, split, probs, 0.5)
        if len(rows) != len(now) or not np.array_equal(rows["chip_id"].astype(str).to_numpy(), now["chip_id"].astype(str).to_numpy()):
            return False
        if not np.array_equal(rows["prob"].to_numpy(), now["prob"].to_numpy()):
            return False
    return True
