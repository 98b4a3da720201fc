"""A training run folder: checkpoints, config, history, metrics, predictions, the novelty summary."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from schoolvision.errors import UserError
from schoolvision.io.atomic import atomic_path, write_json
from schoolvision.io.outputs import (
    Folder,
    folder_file,
    folder_pattern,
    read_csv_table,
    read_json,
    read_json_object,
    require_columns,
)

_TRAIN = "train a model first: schoolvision train --chips DIR --out RUN"


class RunFolder(Folder):
    """A training run made by ``schoolvision train``: checkpoints, config, history, metrics, predictions."""

    BEST = "best.pt"
    LAST = "last.pt"
    CONFIG = "config.json"
    HISTORY = "history.json"
    METRICS = "metrics.json"
    PREDICTIONS = "predictions.csv"
    TENSORBOARD = "tensorboard"
    ROUND = "round.json"
    NOVELTY = "novelty.npz"
    FILES = (BEST, LAST, CONFIG, METRICS, PREDICTIONS, HISTORY, TENSORBOARD, ROUND, NOVELTY)
    """Everything ``fit`` writes: what ``--overwrite`` clears."""
    FOLD_FILES = (METRICS, PREDICTIONS, "fold_*", "chips_fold_*")
    """Everything ``train --folds`` writes: each fold's run and chips index, the pooled metrics and predictions."""

    best = folder_file(BEST, "``best.pt``: the model selected on validation, calibrated.")
    last = folder_file(LAST, "``last.pt``: everything needed to resume.")
    tensorboard = folder_file(TENSORBOARD, "The TensorBoard event folder.")
    predictions_path = folder_file(PREDICTIONS, "``predictions.csv``.")

    fold = folder_pattern("fold_{}", "``fold_<n>``: the run folder of fold ``n`` (from 1) of ``train --folds``.")
    fold_chips = folder_pattern("chips_fold_{}", "``chips_fold_<n>``: the chips index fold ``n`` was trained on "
                                "(the chips themselves stay in place).")

    def is_cross_validation(self) -> bool:
        """True for the folder of ``train --folds`` (its ``metrics.json`` has one row per fold)."""
        return "folds" in self.read_metrics(required=False)

    @staticmethod
    def checkpoint(run: str | Path) -> Path:
        """The checkpoint of ``run``: ``run/best.pt`` for a run folder, ``run`` itself for a file."""
        run = Path(run)
        return run / RunFolder.BEST if run.is_dir() else run

    novelty_path = folder_file(NOVELTY, "``novelty.npz``: the summary of the training chips' embeddings and the home "
                                         "reference (train.novelty).")

    def read_novelty(self) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """``(arrays, record)`` of ``novelty.npz``; None when the run has none (trained before it existed).

        Raises:
            UserError: the file is there but unreadable.
        """
        path = self.novelty_path
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            record = json.loads(str(arrays.pop("record")))
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"{path.name} is not a readable novelty summary ({type(exc).__name__}); rebuild it: "
                            "schoolvision novelty --run RUN --chips DIR --overwrite", path) from None
        return arrays, record

    def write_novelty(self, arrays: Mapping[str, np.ndarray], record: Mapping[str, Any]) -> Path:
        """Write ``novelty.npz`` atomically: the named arrays and ``record`` (JSON text under ``record``)."""
        with atomic_path(self.novelty_path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, record=np.array(json.dumps(dict(record))), **arrays)
        return self.novelty_path

    def metrics_path(self, split: str = "test") -> Path:
        """``metrics.json`` for the test split (with the validation report), ``metrics_<split>.json`` otherwise."""
        return self.root / (self.METRICS if split == "test" else f"metrics_{split}.json")

    def read_config(self, required: bool = False) -> dict[str, Any]:
        """``config.json``: every training parameter plus what was resolved at run time."""
        return read_json_object(self.root / self.CONFIG, required, _TRAIN)

    def write_config(self, record: dict[str, Any]) -> Path:
        """Write ``config.json`` atomically."""
        return write_json(self.root / self.CONFIG, record)

    def read_history(self) -> list[dict[str, Any]]:
        """``history.json``: one dict of train/val loss, F1, AUPRC, learning rate per epoch."""
        return read_json(self.root / self.HISTORY, True, _TRAIN, list, "a list of epochs")

    def write_history(self, history: list[dict[str, Any]]) -> Path:
        """Write ``history.json`` atomically (after every epoch)."""
        return write_json(self.root / self.HISTORY, history)

    def read_metrics(self, split: str = "test", required: bool = True) -> dict[str, Any]:
        """``metrics.json`` (or ``metrics_<split>.json``); ``{}`` when absent and not ``required``."""
        return read_json_object(self.metrics_path(split), required, _TRAIN if split == "test" else
                          f"evaluate the run first: schoolvision evaluate --run RUN --split {split}")

    def write_metrics(self, metrics: dict[str, Any], split: str = "test") -> Path:
        """Write ``metrics.json`` (or ``metrics_<split>.json``) atomically."""
        return write_json(self.metrics_path(split), metrics)

    def read_round(self) -> dict[str, Any]:
        """``round.json`` of a run made by ``review retrain`` (queue, decisions, counts, metrics); ``{}`` otherwise."""
        return read_json_object(self.root / self.ROUND, False, "")

    def write_round(self, record: dict[str, Any]) -> Path:
        """Write ``round.json`` atomically."""
        return write_json(self.root / self.ROUND, record)

    def read_predictions(self) -> pd.DataFrame:
        """``predictions.csv`` with P(school) exactly as written (see :func:`read_predictions`)."""
        return read_predictions(self.predictions_path)

    def write_predictions(self, frames: Sequence[pd.DataFrame]) -> Path:
        """Write the per-split prediction frames as one ``predictions.csv``, atomically.

        pandas writes floats with ``repr`` precision and parses them back exactly, so a re-evaluation
        can compare probabilities bit for bit.
        """
        with atomic_path(self.predictions_path) as tmp:
            pd.concat(list(frames), ignore_index=True).to_csv(tmp, index=False)
        return self.predictions_path


PREDICTION_COLUMNS = ("chip_id", "label", "prob", "pred")


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A predictions table: a run's ``predictions.csv`` or an ``explanations.csv`` (same columns).

    Probabilities are parsed exactly as written (pandas' default parser round-trips repr floats);
    chip ids stay strings.

    Raises:
        UserError: the file is missing, unreadable or lacks chip_id, label, prob or pred.
    """
    path = Path(path)
    frame = read_csv_table(path, _TRAIN, dtype={"chip_id": str})
    require_columns(frame, PREDICTION_COLUMNS, path, _TRAIN)
    return frame


# --- scans --------------------------------------------------------------------------------------
