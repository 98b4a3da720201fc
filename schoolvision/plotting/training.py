"""Figures of a training run: learning curves, PR curve, confusion matrix, calibration, chips.

Run-level functions take what :class:`~schoolvision.io.folders.RunFolder` reads (the history, the
predictions table, the tuned threshold) and read no file; array-level ones (``*_figure``) also draw
the run's TensorBoard figures through :func:`tensorboard_figures`. seaborn draws the confusion matrix
and the reliability diagram, in the theme of :func:`schoolvision.plotting.theme.apply_theme`.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve

from schoolvision import CLASSES
from schoolvision.train.metrics import classification_metrics, expected_calibration_error, reliability
from schoolvision.train.tblog import RunScores


def confusion_figure(labels: np.ndarray, probs: np.ndarray, threshold: float, title: str = "") -> Figure:
    """Confusion matrix at ``threshold`` (rows true, columns predicted) with counts in the cells."""
    cm = np.asarray(classification_metrics(labels, probs, threshold)["confusion_matrix"], dtype=int)
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    sns.heatmap(pd.DataFrame(cm, index=CLASSES, columns=CLASSES), annot=True, fmt="d", cmap="Blues", cbar=False,
                square=True, linewidths=0.5, ax=ax)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    return fig


def chip_grid_figure(images: Sequence[np.ndarray], probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5,
                     cols: int = 4) -> Figure:
    """Chips (H, W, 3 uint8) titled with P(school) and the true label; green = correct at ``threshold``."""
    rows = max(1, int(np.ceil(len(images) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, p, y in zip(axes.ravel(), images, probs, labels):
        ax.imshow(img)
        right = (p >= threshold) == bool(y)
        ax.set_title(f"P={p:.2f} {CLASSES[int(y)]}", fontsize=8, color="green" if right else "red")
    fig.tight_layout()
    return fig


def pr_curve_figure(labels: np.ndarray, probs: np.ndarray, threshold: float, title: str = "") -> Figure:
    """Precision-recall curve of P(school) with the chosen threshold marked."""
    precision, recall, _ = precision_recall_curve(labels, probs)
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.plot(recall, precision, drawstyle="steps-post")
    pred = np.asarray(probs) >= threshold
    tp = np.sum(pred & (np.asarray(labels) == 1))
    p_at = tp / max(pred.sum(), 1)
    r_at = tp / max(np.sum(np.asarray(labels) == 1), 1)
    ax.scatter([r_at], [p_at], color="red", zorder=3, label=f"threshold {threshold:.2f}")
    ax.set(xlabel="recall (school)", ylabel="precision (school)", xlim=(0, 1.02), ylim=(0, 1.02), title=title)
    ax.legend(loc="lower left")
    fig.tight_layout()
    return fig


def reliability_figure(labels: np.ndarray, probs: np.ndarray, bins: int = 10, title: str = "") -> Figure:
    """Reliability diagram: observed share of schools per P(school) bin against the diagonal; ECE in the title.

    Each bar is labelled with its number of chips: most chips sit in the two end bins, and a middle bar of
    a handful of chips says little about calibration however far it is from the diagonal.
    """
    rel = reliability(labels, probs, bins)
    centres = (rel["edges"][:-1] + rel["edges"][1:]) / 2
    used = rel["count"] > 0
    ece = f"ECE {expected_calibration_error(labels, probs, bins):.3f}"
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    observed = pd.DataFrame({"centre": centres[used], "share": rel["frequency"][used]})
    sns.histplot(observed, x="centre", weights="share", binwidth=1 / bins, binrange=(0, 1), alpha=0.6, edgecolor="k",
                 label="observed", ax=ax)
    for x, share, n in zip(centres[used], rel["frequency"][used], rel["count"][used]):
        ax.annotate(f"{n}", (x, min(share, 0.9)), xytext=(0, 3), textcoords="offset points", ha="center",
                    fontsize=7)
    ax.set(xlabel="predicted P(school)", ylabel="share of schools", xlim=(0, 1), ylim=(0, 1.02),
           title=f"{title}: {ece}" if title else ece)
    ax.legend(loc="upper left", title="number on a bar: its chips", title_fontsize=7, fontsize=8)
    fig.tight_layout()
    return fig


def tensorboard_figures(scores: RunScores) -> dict[str, Figure]:
    """The figures ``schoolvision train`` logs to TensorBoard at the end of a run (pass as ``fit(figures=...)``).

    A confusion matrix per scored split (``confusion_matrix/<split>``) and a grid of test chips
    spread over P(school) (``test_chips``).
    """
    figures = {
        f"confusion_matrix/{split}": confusion_figure(scores.labels[split], probs, scores.threshold,
                                                      title=f"{split} (threshold {scores.threshold:.2f})")
        for split, probs in scores.probs.items()
    }
    figures["test_chips"] = chip_grid_figure(scores.chips, scores.chip_probs, scores.chip_labels, scores.threshold)
    return figures


def _split(predictions: pd.DataFrame, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, P(school)) of one split of a predictions table."""
    frame = predictions[predictions["split"] == split]
    return frame["label"].to_numpy(), frame["prob"].to_numpy()


def plot_learning_curves(history: Sequence[dict]) -> Figure:
    """Loss, F1 and AUPRC per epoch for train and validation, from a run's history (one dict per epoch)."""
    hist = pd.DataFrame(list(history))
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


def plot_pr_curve(predictions: pd.DataFrame, threshold: float, split: str = "test") -> Figure:
    """Precision-recall curve of one split of a predictions table, the tuned ``threshold`` marked."""
    return pr_curve_figure(*_split(predictions, split), threshold, title=split)


def plot_confusion_matrix(predictions: pd.DataFrame, threshold: float, split: str = "test") -> Figure:
    """Confusion matrix of one split of a predictions table at ``threshold``."""
    return confusion_figure(*_split(predictions, split), threshold, title=f"{split} (threshold {threshold:.2f})")


def plot_reliability(predictions: pd.DataFrame, split: str = "test", bins: int = 10) -> Figure:
    """Reliability diagram of the calibrated P(school) of one split of a predictions table."""
    return reliability_figure(*_split(predictions, split), bins, title=split)


def plot_extreme_chips(rows: pd.DataFrame, images: Sequence[np.ndarray], threshold: float, title: str = "") -> Figure:
    """Chips picked by :func:`schoolvision.train.evaluation.extreme_chips`: their prediction rows and pixels."""
    fig = chip_grid_figure(images, rows["prob"].to_numpy(), rows["label"].to_numpy(), threshold)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
