"""Figures for explanations: galleries, methods side by side, SHAP maps, the faithfulness comparison.

Every function returns a Figure; the caller shows or saves it. The overlay colours come from
:func:`schoolvision.explain.maps.overlay_rgb`, the same as the runner's overlay PNGs.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from pytorch_grad_cam.utils.image import deprocess_image

from schoolvision.explain.faithfulness import BASELINES
from schoolvision.explain.maps import chip_rgb, overlay_rgb

FAITHFULNESS_METRICS = ("pointing_game", "energy_share", "road_drop")


def _outline(ax, mask: np.ndarray | None) -> None:
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors="white", linewidths=1.2)


def plot_gallery(items: Sequence[tuple], title: str) -> Figure:
    """Chips (top) and their maps with the school outline (bottom); items = (chip_id, chip, heat, mask, prob).

    ``items`` are :class:`~schoolvision.explain.runner.GalleryItem` of an
    :class:`~schoolvision.explain.runner.ExplainSummary`.
    """
    fig, axes = plt.subplots(2, len(items), figsize=(2.2 * len(items), 4.6), squeeze=False)
    for k, (chip_id, chip, heat, mask, prob) in enumerate(items):
        axes[0, k].imshow(chip_rgb(chip))
        axes[0, k].set_title(f"{chip_id}\nP={prob:.2f}", fontsize=7)
        axes[1, k].imshow(overlay_rgb(chip, heat, signed=bool(np.any(heat < 0))))
        _outline(axes[1, k], mask)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_methods(chips: np.ndarray, maps: dict[str, np.ndarray], masks: Sequence[np.ndarray | None] | None = None,
                 probs: Sequence[float] | None = None, title: str = "Explanations side by side") -> Figure:
    """Rows = chips, columns = the chip then one overlay per method (footprint outline in white).

    ``maps[method]`` is (N, H, W); ``guided-backprop`` entries may be (N, 3, H, W) gradients.
    """
    n = len(chips)
    fig, axes = plt.subplots(n, len(maps) + 1, figsize=(2.3 * (len(maps) + 1), 2.3 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(chip_rgb(chips[i]))
        axes[i, 0].set_title("chip" + (f" P={probs[i]:.2f}" if probs is not None else ""), fontsize=8)
        for j, (name, m) in enumerate(maps.items(), start=1):
            if m[i].ndim == 3:
                axes[i, j].imshow(deprocess_image(m[i].transpose(1, 2, 0)))
            else:
                axes[i, j].imshow(overlay_rgb(chips[i], m[i], signed=bool(np.any(m[i] < 0))))
            axes[i, j].set_title(name, fontsize=8)
            _outline(axes[i, j], None if masks is None else masks[i])
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_shap(chips: np.ndarray, values: np.ndarray, masks: Sequence[np.ndarray | None] | None = None,
              title: str = "SHAP values (red: for school, blue: against)") -> Figure:
    """Chip and SHAP map (summed over channels) in a diverging colour map centred on zero."""
    maps = values.sum(axis=1) if values.ndim == 4 else values
    n = len(chips)
    fig, axes = plt.subplots(2, n, figsize=(2.4 * n, 5), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(chip_rgb(chips[i]))
        lim = max(float(np.percentile(np.abs(maps[i]), 99)), 1e-12)  # spiky values: clip the top 1 %
        im = axes[1, i].imshow(maps[i], cmap="RdBu_r", vmin=-lim, vmax=lim)
        _outline(axes[1, i], None if masks is None else masks[i])
        fig.colorbar(im, ax=axes[1, i], fraction=0.046, pad=0.02)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_faithfulness(table: dict[str, dict[str, float | None]],
                      title: str = "Faithfulness on correctly classified school chips") -> Figure:
    """Bars of pointing game, energy share and ROAD drop per method; the baselines grey and hatched.

    ``table`` is a faithfulness table (method -> metrics); a metric without a value has no bar.
    """
    names = list(table)
    frame = pd.DataFrame(
        [(name, metric.replace("_", " "), table[name][metric]) for metric in FAITHFULNESS_METRICS for name in names],
        columns=["method", "metric", "value"],
    ).astype({"value": float})
    palette = {name: "lightgrey" if name in BASELINES else sns.color_palette()[0] for name in names}
    grid = sns.catplot(frame, x="method", y="value", col="metric", order=names, hue="method", hue_order=names,
                       palette=palette, kind="bar", sharey=False, height=3.4, aspect=1.2, legend=False)
    for ax in grid.axes.flat:
        for name, bars in zip(names, ax.containers):
            if name in BASELINES:
                for bar in bars:
                    bar.set_hatch("//")
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    grid.set_titles("{col_name}")
    grid.set_axis_labels("", "")
    grid.figure.suptitle(title)
    grid.figure.tight_layout()
    return grid.figure
