"""TensorBoard logging for a training run: scalars per epoch, figures and hparams at the end.

Nothing here catches exceptions: the reference project's figure call failed silently on every
batch. ``close`` also checks that event files were really written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.tensorboard import SummaryWriter

SCALARS = {
    "loss": ("train_loss", "val_loss"),
    "accuracy": ("train_accuracy", "val_accuracy"),
    "f1": ("train_f1", "val_f1"),
    "auprc": ("train_auprc", "val_auprc"),
}


def open_writer(log_dir: Path) -> SummaryWriter:
    return SummaryWriter(log_dir=str(log_dir))


def log_epoch(writer: SummaryWriter, row: dict[str, Any]) -> None:
    """Train/val loss, accuracy, F1, AUPRC and the learning rate of one ``history.json`` row."""
    step = int(row["epoch"])
    for name, (train_key, val_key) in SCALARS.items():
        writer.add_scalar(f"{name}/train", row[train_key], step)
        writer.add_scalar(f"{name}/val", row[val_key], step)
    writer.add_scalar("lr", row["lr"], step)
    writer.add_scalar("train_chips_per_second", row["train_chips_per_second"], step)


def log_split(writer: SummaryWriter, split: str, labels: np.ndarray, probs: np.ndarray, threshold: float, step: int) -> None:
    """PR curve and confusion-matrix figure of one split."""
    from schoolvision.train.metrics import classification_metrics
    from schoolvision.plotting.training import confusion_figure

    writer.add_pr_curve(f"pr_curve/{split}", np.asarray(labels), np.asarray(probs), step)
    cm = classification_metrics(labels, probs, threshold)["confusion_matrix"]
    writer.add_figure(f"confusion_matrix/{split}", confusion_figure(np.array(cm), title=f"{split} (threshold {threshold:.2f})"), step)


def log_chip_grid(writer: SummaryWriter, dataset, probs: np.ndarray, labels: np.ndarray, threshold: float, step: int, n: int = 16) -> None:
    """A grid of test chips (evenly spaced by P(school)) titled with probability and true label."""
    from schoolvision.plotting.training import chip_grid_figure

    order = np.argsort(probs)
    pick = order[np.linspace(0, len(order) - 1, min(n, len(order))).round().astype(int)]
    images = [dataset.read_chip(int(i)).transpose(1, 2, 0) for i in pick]
    writer.add_figure("test_chips", chip_grid_figure(images, probs[pick], labels[pick], threshold), step)


def log_hparams(writer: SummaryWriter, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
    writer.add_hparams(hparams, metrics, run_name=".")


def close(writer: SummaryWriter, log_dir: Path) -> None:
    """Flush and close; raise if no non-empty event file exists (a silent logging failure)."""
    writer.flush()
    writer.close()
    events = [p for p in Path(log_dir).rglob("events.out.tfevents.*") if p.stat().st_size > 0]
    if not events:
        raise RuntimeError(f"TensorBoard wrote no events into {log_dir}")
