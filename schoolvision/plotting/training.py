"""Figures of a training run: learning curves, PR curve, confusion matrix, calibration, chips.

Run-level functions read the run folder (``history.json``, ``metrics.json``, ``predictions.csv``);
array-level ones (``*_figure``) are shared with TensorBoard logging.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve

from schoolvision import CLASSES


def confusion_figure(cm: np.ndarray, title: str = "") -> Figure:
    """Confusion matrix (rows true, columns predicted) with counts in the cells."""
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(int(v)), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set_xticks([0, 1], CLASSES)
    ax.set_yticks([0, 1], CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def chip_grid_figure(images: list[np.ndarray], probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5, cols: int = 4) -> Figure:
    """Chips (H, W, 3 uint8) titled with P(school) and the true label; green = correct at ``threshold``."""
    rows = max(1, int(np.ceil(len(images) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, p, y in zip(axes.ravel(), images, probs, labels):
        ax.imshow(img)
        ax.set_title(f"P={p:.2f} {CLASSES[int(y)]}", fontsize=8, color="green" if (p >= threshold) == bool(y) else "red")
    fig.tight_layout()
    return fig


def pr_curve_figure(labels: np.ndarray, probs: np.ndarray, threshold: float, title: str = "") -> Figure:
    """Precision-recall curve of P(school) with the chosen threshold marked."""
    precision, recall, thresholds = precision_recall_curve(labels, probs)
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.plot(recall, precision, drawstyle="steps-post")
    pred = np.asarray(probs) >= threshold
    tp = np.sum(pred & (np.asarray(labels) == 1))
    p_at = tp / max(pred.sum(), 1)
    r_at = tp / max(np.sum(np.asarray(labels) == 1), 1)
    ax.scatter([r_at], [p_at], color="red", zorder=3, label=f"threshold {threshold:.2f}")
    ax.set_xlabel("recall (school)")
    ax.set_ylabel("precision (school)")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _predictions(run_dir: str | Path, split: str) -> pd.DataFrame:
    from schoolvision.train.evaluation import read_predictions

    frame = read_predictions(Path(run_dir) / "predictions.csv")
    return frame[frame["split"] == split].reset_index(drop=True)


def _threshold(run_dir: str | Path) -> float:
    return float(json.loads((Path(run_dir) / "metrics.json").read_text())["threshold"])


def plot_learning_curves(run_dir: str | Path) -> Figure:
    """Loss, F1 and AUPRC per epoch for train and validation, from ``history.json``."""
    hist = pd.DataFrame(json.loads((Path(run_dir) / "history.json").read_text()))
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    for ax, name in zip(axes, ("loss", "f1", "auprc")):
        ax.plot(hist["epoch"], hist[f"train_{name}"], marker="o", label="train")
        ax.plot(hist["epoch"], hist[f"val_{name}"], marker="o", label="val")
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.legend()
    axes[3].plot(hist["epoch"], hist["lr"], marker="o")
    axes[3].set_title("learning rate (end of epoch)")
    axes[3].set_xlabel("epoch")
    fig.tight_layout()
    return fig


def plot_pr_curve(run_dir: str | Path, split: str = "test") -> Figure:
    frame = _predictions(run_dir, split)
    return pr_curve_figure(frame["label"].to_numpy(), frame["prob"].to_numpy(), _threshold(run_dir), title=split)


def plot_confusion_matrix(run_dir: str | Path, split: str = "test") -> Figure:
    from schoolvision.train.metrics import classification_metrics

    frame = _predictions(run_dir, split)
    thr = _threshold(run_dir)
    cm = classification_metrics(frame["label"].to_numpy(), frame["prob"].to_numpy(), thr)["confusion_matrix"]
    return confusion_figure(np.array(cm), title=f"{split} (threshold {thr:.2f})")


def plot_reliability(run_dir: str | Path, split: str = "test", bins: int = 10) -> Figure:
    """Reliability diagram of calibrated P(school): observed school frequency per probability bin."""
    from schoolvision.train.metrics import expected_calibration_error, reliability

    frame = _predictions(run_dir, split)
    y, p = frame["label"].to_numpy(), frame["prob"].to_numpy()
    rel = reliability(y, p, bins)
    centers = (rel["edges"][:-1] + rel["edges"][1:]) / 2
    used = rel["count"] > 0
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.bar(centers[used], rel["frequency"][used], width=1 / bins, alpha=0.6, edgecolor="k", label="observed")
    ax.set_xlabel("predicted P(school)")
    ax.set_ylabel("share of schools")
    ax.set_title(f"{split}: ECE {expected_calibration_error(y, p, bins):.3f}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def plot_extreme_chips(run_dir: str | Path, chips_dir: str | Path, split: str = "test", n: int = 8, worst: bool = False) -> Figure:
    """The most confident correct (``worst=False``) or most wrong (``worst=True``) chips of a split."""
    from schoolvision.data.dataset import ChipDataset

    frame = _predictions(run_dir, split)
    error = np.abs(frame["prob"].to_numpy() - frame["label"].to_numpy())
    order = np.argsort(-error if worst else error, kind="stable")[:n]
    ds = ChipDataset(chips_dir, split=split)
    pos = {cid: i for i, cid in enumerate(ds.frame["chip_id"].astype(str))}
    images = [ds.read_chip(pos[frame["chip_id"][i]]).transpose(1, 2, 0) for i in order]
    fig = chip_grid_figure(images, frame["prob"].to_numpy()[order], frame["label"].to_numpy()[order], _threshold(run_dir))
    fig.suptitle(f"{'worst' if worst else 'best'} {split} chips")
    fig.tight_layout()
    return fig
