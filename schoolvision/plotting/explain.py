"""Figures for explanations: overlays, galleries, methods side by side, SHAP maps, the metrics table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _rgb(chip: np.ndarray) -> np.ndarray:
    """(3, H, W) uint8 or float -> (H, W, 3) float in [0, 1]."""
    img = np.asarray(chip)
    img = img.transpose(1, 2, 0) if img.ndim == 3 and img.shape[0] in (1, 3) else img
    return img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else np.clip(img.astype(np.float32), 0, 1)


def overlay_rgb(chip: np.ndarray, heat: np.ndarray, alpha: float = 0.5, signed: bool = False) -> np.ndarray:
    """Blend a heatmap over a chip: (H, W, 3) uint8. Signed maps use a diverging colour map around 0."""
    from matplotlib import colormaps

    img = _rgb(chip)
    if signed:  # pixel attributions are spiky: scale by the 99th percentile so the pattern shows
        scale = max(float(np.percentile(np.abs(heat), 99)), 1e-12)
        colours = colormaps["RdBu_r"](np.clip(heat / scale, -1, 1) * 0.5 + 0.5)[..., :3]
        weight = alpha * np.clip(np.abs(heat) / scale, 0, 1)[..., None]
    else:
        scale = max(float(heat.max()), 1e-12)
        colours = colormaps["jet"](np.clip(heat / scale, 0, 1))[..., :3]
        weight = alpha
    return (np.clip(img * (1 - weight) + colours * weight, 0, 1) * 255).astype(np.uint8)


def _outline(ax, mask: np.ndarray | None) -> None:
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors="white", linewidths=1.2)


def save_gallery(path: Path, items: Sequence[tuple], title: str) -> Path:
    """Chips (top) and their maps with the school outline (bottom); items = (chip_id, chip, heat, mask, prob)."""
    import matplotlib.pyplot as plt

    from schoolvision.io.atomic import atomic_path

    fig, axes = plt.subplots(2, len(items), figsize=(2.2 * len(items), 4.6), squeeze=False)
    for k, (chip_id, chip, heat, mask, prob) in enumerate(items):
        axes[0, k].imshow(_rgb(chip))
        axes[0, k].set_title(f"{chip_id}\nP={prob:.2f}", fontsize=7)
        axes[1, k].imshow(overlay_rgb(chip, heat, signed=bool(np.any(heat < 0))))
        _outline(axes[1, k], mask)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_methods(chips: np.ndarray, maps: dict[str, np.ndarray], masks: Sequence[np.ndarray | None] | None = None,
                 probs: Sequence[float] | None = None, title: str = "Explanations side by side"):
    """Rows = chips, columns = the chip then one overlay per method (footprint outline in white).

    ``maps[method]`` is (N, H, W); ``guided-backprop`` entries may be (N, 3, H, W) gradients.
    """
    import matplotlib.pyplot as plt
    from pytorch_grad_cam.utils.image import deprocess_image

    n = len(chips)
    fig, axes = plt.subplots(n, len(maps) + 1, figsize=(2.3 * (len(maps) + 1), 2.3 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(_rgb(chips[i]))
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
              title: str = "SHAP values (red: for school, blue: against)"):
    """Chip and SHAP map (summed over channels) in a diverging colour map centred on zero."""
    import matplotlib.pyplot as plt

    maps = values.sum(axis=1) if values.ndim == 4 else values
    n = len(chips)
    fig, axes = plt.subplots(2, n, figsize=(2.4 * n, 5), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(_rgb(chips[i]))
        lim = max(float(np.percentile(np.abs(maps[i]), 99)), 1e-12)  # spiky values: clip the top 1 %
        im = axes[1, i].imshow(maps[i], cmap="RdBu_r", vmin=-lim, vmax=lim)
        _outline(axes[1, i], None if masks is None else masks[i])
        fig.colorbar(im, ax=axes[1, i], fraction=0.046, pad=0.02)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_faithfulness(table: dict[str, dict[str, float | None]], title: str = "Faithfulness on correctly classified school chips"):
    """Bar charts of pointing game, energy share and ROAD drop per method (baselines hatched)."""
    import matplotlib.pyplot as plt

    metrics = ("pointing_game", "energy_share", "road_drop")
    names = list(table)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4))
    for ax, metric in zip(axes, metrics):
        vals = [table[n][metric] if table[n][metric] is not None else 0.0 for n in names]
        bars = ax.bar(range(len(names)), vals, color="tab:blue")
        for bar, name in zip(bars, names):
            if name in ("random", "centre-gaussian"):
                bar.set_color("lightgrey")
                bar.set_hatch("//")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(metric.replace("_", " "))
    fig.suptitle(title)
    fig.tight_layout()
    return fig
