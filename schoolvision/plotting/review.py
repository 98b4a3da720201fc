"""Figures of the review chapter: schools found per item reviewed, and each model at each threshold.

They take the frames of :mod:`schoolvision.book.simulate` and draw; they open no file.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure


def plot_discovery(curve: pd.DataFrame, k: int | None = None, schools: int | None = None) -> Figure:
    """Distinct schools found against items reviewed, one line per ranking rule.

    Args:
        curve: :func:`~schoolvision.book.simulate.discovery` (``order``, ``reviewed``, ``schools_found``).
        k: the review budget, drawn as a vertical line.
        schools: the true schools of the town, drawn as a horizontal line (what a perfect review finds).

    Returns:
        The figure.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    sns.lineplot(data=curve, x="reviewed", y="schools_found", hue="order", drawstyle="steps-post", ax=ax)
    if k is not None:
        ax.axvline(k, color="0.4", linestyle=":", label=f"review budget ({k} items)")
    if schools is not None:
        ax.axhline(schools, color="0.4", linestyle="--", label=f"true schools ({schools})")
    ax.set_xlabel("items reviewed")
    ax.set_ylabel("distinct schools found")
    ax.set_title("Which ranking finds schools faster")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


def plot_threshold_grid(table: pd.DataFrame, home_recall: float | None = None) -> Figure:
    """Recall and precision of each model at each threshold, pooled over towns, with intervals across towns.

    Args:
        table: :func:`~schoolvision.book.round_study.pooled` (``model``, ``threshold``, ``recall`` and
            ``precision`` with their ``_low``/``_high``).
        home_recall: the model's recall at home, drawn as a horizontal line.

    Returns:
        The figure.
    """
    labels = [f"{m}\nat the {t}" for m, t in zip(table["model"], table["threshold"])]
    x = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(7.2, 4.0))
    for offset, measure, color in ((-0.2, "recall", "C0"), (0.2, "precision", "C1")):
        values = table[measure].to_numpy(float)
        errors = np.vstack([values - table[f"{measure}_low"].to_numpy(float),
                            table[f"{measure}_high"].to_numpy(float) - values]).clip(min=0)
        bars = ax.bar(x + offset, values, width=0.38, color=color, label=measure, yerr=errors, capsize=3)
        ax.bar_label(bars, fmt="%.2f", fontsize="small", padding=2)
    if home_recall is not None:
        ax.axhline(home_recall, color="0.3", linestyle="--", label="recall at home")
    ax.set_xticks(x, labels, fontsize="small")
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("towns nobody reviewed (pooled)")
    ax.set_title("Each model at each threshold (bars: interval across towns)")
    ax.legend(loc="upper left", fontsize="small", ncols=3)
    fig.tight_layout()
    return fig
