"""TensorBoard logging for a training run: scalars per epoch, PR curves, figures and hparams at the end.

Figures are drawn by the caller: ``fit(figures=...)`` takes a function from :class:`RunScores` to
``{tag: Figure}`` (the command line and the book pass
:func:`schoolvision.plotting.training.tensorboard_figures`), so training never imports plotting.
Nothing here catches exceptions, so a failing figure fails the run instead of vanishing from the
log; ``close`` also checks that event files were really written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from schoolvision.data.dataset import ChipDataset
from schoolvision.io import manifest

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SCALARS = {
    "loss": ("train_loss", "val_loss"),
    "accuracy": ("train_accuracy", "val_accuracy"),
    "f1": ("train_f1", "val_f1"),
    "auprc": ("train_auprc", "val_auprc"),
}
GRID_CHIPS = 16  # test chips in the ``test_chips`` grid


@dataclass(frozen=True)
class RunScores:
    """What the end-of-run figures are drawn from: the calibrated scores of the best model.

    ``labels`` and ``probs`` map each scored split (val, test) to its 0/1 labels and calibrated
    P(school). ``chips`` are test chips ((H, W, 3) uint8) evenly spaced by P(school), with their
    ``chip_probs`` and ``chip_labels``.
    """

    threshold: float
    labels: dict[str, np.ndarray]
    probs: dict[str, np.ndarray]
    chips: list[np.ndarray]
    chip_probs: np.ndarray
    chip_labels: np.ndarray


FigureMaker = Callable[[RunScores], Mapping[str, "Figure"]]
"""Draws TensorBoard figures (tag -> matplotlib Figure) from a run's scores."""


def run_scores(threshold: float, scores: dict[str, tuple[np.ndarray, np.ndarray]], test: ChipDataset,
               n: int = GRID_CHIPS) -> RunScores:
    """:class:`RunScores` from ``{split: (labels, probs)}``, reading ``n`` chips of the ``test`` dataset."""
    labels, probs = scores["test"]
    order = np.argsort(probs)
    pick = order[np.linspace(0, len(order) - 1, min(n, len(order))).round().astype(int)]
    chips = [test.read_chip(int(i)).transpose(1, 2, 0) for i in pick]
    return RunScores(threshold, {s: v[0] for s, v in scores.items()}, {s: v[1] for s, v in scores.items()},
                     chips, probs[pick], labels[pick])


def open_writer(log_dir: Path) -> SummaryWriter:
    """A writer of event files into ``log_dir`` (made if missing; listed in its run folder's manifest)."""
    manifest.record(log_dir)  # TensorBoard writes its own files: the folder is listed as a whole
    return SummaryWriter(log_dir=str(log_dir))


def log_epoch(writer: SummaryWriter, row: dict[str, Any]) -> None:
    """Train/val loss, accuracy, F1, AUPRC and the learning rate of one ``history.json`` row."""
    step = int(row["epoch"])
    for name, (train_key, val_key) in SCALARS.items():
        writer.add_scalar(f"{name}/train", row[train_key], step)
        writer.add_scalar(f"{name}/val", row[val_key], step)
    writer.add_scalar("lr", row["lr"], step)
    writer.add_scalar("train_chips_per_second", row["train_chips_per_second"], step)


def log_scores(writer: SummaryWriter, scores: RunScores, step: int, figures: FigureMaker | None = None) -> None:
    """A PR curve per split, then the figures ``figures`` draws from ``scores`` (none without it)."""
    for split, probs in scores.probs.items():
        writer.add_pr_curve(f"pr_curve/{split}", np.asarray(scores.labels[split]), np.asarray(probs), step)
    for tag, figure in (figures(scores) if figures is not None else {}).items():
        writer.add_figure(tag, figure, step)


def log_hparams(writer: SummaryWriter, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
    """The run's settings with its final metrics, in the run's own folder (TensorBoard's HPARAMS tab)."""
    writer.add_hparams(hparams, metrics, run_name=".")


def close(writer: SummaryWriter, log_dir: Path) -> None:
    """Flush and close; raise if no non-empty event file exists (a silent logging failure)."""
    writer.flush()
    writer.close()
    events = [p for p in Path(log_dir).rglob("events.out.tfevents.*") if p.stat().st_size > 0]
    if not events:
        raise RuntimeError(f"TensorBoard wrote no events into {log_dir}")
