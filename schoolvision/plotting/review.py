"""Figures of the review chapter: schools found per item reviewed, and recall per review round.

They take the frames of :mod:`schoolvision.book.simulate` and draw; they open no file.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
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


def plot_rounds(table: pd.DataFrame, home_recall: float | None = None) -> Figure:
    """Recall and precision on the never-reviewed town, per review round, with the home recall as target.

    Args:
        table: :func:`~schoolvision.book.simulate.round_table` (``round``, ``recall``, ``precision``).
        home_recall: the model's recall at home, drawn as a horizontal line.

    Returns:
        The figure.
    """
    long = table.melt(id_vars="round", value_vars=["recall", "precision"], var_name="measure", value_name="value")
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    sns.barplot(data=long, x="round", y="value", hue="measure", ax=ax)
    for container in ax.containers:
        ax.bar_label(container, fmt="%.2f", fontsize="small")
    if home_recall is not None:
        ax.axhline(home_recall, color="0.3", linestyle="--", label="recall at home")
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("")
    ax.set_ylabel("on the never-reviewed town")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    return fig
