"""Figures of the mapping chapter: the probability raster over the scene, the PR curve, case galleries.

Map axes are in the scene's projected CRS (metres); candidates and schools are reprojected to it.
Rasters come in as :class:`~schoolvision.io.preview.Preview` s (read with
:mod:`schoolvision.io.preview`): these functions draw, they open no file.
"""

from __future__ import annotations

from collections.abc import Sequence

import geopandas as gpd
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from schoolvision.io.preview import Preview
from schoolvision.plotting.data import _map_axes, _scale_bar
from schoolvision.plotting.explain import overlay_rgb


def _scene_beside(scene: Preview, values: np.ndarray, label: str, cmap: str, vmax: float, alpha: float):
    """(figure, axes): the scene on the left, ``values`` over it on the right with a colour bar."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.2), sharex=True, sharey=True)
    axes[0].imshow(scene.array, extent=scene.extent)
    axes[1].imshow(scene.array, extent=scene.extent)
    im = axes[1].imshow(values, extent=scene.extent, cmap=cmap, vmin=0, vmax=vmax, alpha=alpha)
    fig.colorbar(im, ax=axes[1], fraction=0.035, label=label)
    return fig, axes


def plot_probability(scene: Preview, probability: Preview, candidates: gpd.GeoDataFrame | None = None,
                     schools: gpd.GeoDataFrame | None = None, threshold: float | None = None,
                     title: str = "") -> Figure:
    """Scene (left) and P(school) over it (right) with candidates (numbered) and known schools (found / missed).

    Args:
        scene: RGB preview of the scene.
        probability: preview of its probability raster (same grid; NaN or masked where nodata).
        candidates: ranked candidate points (``rank`` column), any CRS.
        schools: known schools, any CRS; a boolean ``found`` column splits found from missed.
        threshold: P(school) contour to draw.
        title: title of the scene panel (e.g. the scene name).

    Returns:
        The figure.
    """
    extent, crs = scene.extent, scene.crs
    prob = np.ma.masked_invalid(probability.array)
    fig, axes = _scene_beside(scene, np.ma.masked_less(prob, 0.05), "P(school)", cmap="inferno", vmax=1, alpha=0.65)
    if threshold is not None:
        axes[1].contour(np.asarray(prob.filled(0)), levels=[threshold], colors="cyan", linewidths=0.8,
                        extent=extent, origin="upper")
    handles = []
    if schools is not None and len(schools):
        s = schools.to_crs(crs)
        found = s["found"].to_numpy(bool) if "found" in s.columns else np.ones(len(s), bool)
        for part, colour, width, label in ((s[found], "lime", 1.2, "found"), (s[~found], "red", 1.6, "missed")):
            if len(part):  # geopandas warns on an empty frame (no school missed is the good case)
                for ax in axes:
                    part.boundary.plot(ax=ax, color=colour, linewidth=width)
                handles.append(Line2D([], [], color=colour, label=f"known school, {label}"))
    if candidates is not None and len(candidates):
        c = candidates.to_crs(crs)
        axes[1].scatter(c.geometry.x, c.geometry.y, s=60, facecolors="none", edgecolors="cyan", linewidths=1.5)
        for x, y, r in zip(c.geometry.x, c.geometry.y, c["rank"]):
            axes[1].annotate(str(int(r)), (x, y), xytext=(4, 4), textcoords="offset points", color="cyan", fontsize=8)
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="cyan",
                              label="candidate (rank)"))
    _map_axes(axes[0], crs, title)
    _map_axes(axes[1], crs, "P(school), blended windows")
    _scale_bar(axes[0], extent)
    if handles:
        axes[0].legend(handles=handles, loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_novelty(scene: Preview, novelty: Preview, flag_percentile: float = 99.0, title: str = "") -> Figure:
    """Scene (left) and its trust map (right): each window's novelty, the percentile of home chips it exceeds.

    Args:
        scene: RGB preview of the scene.
        novelty: preview of its novelty raster (same grid; masked where nodata).
        flag_percentile: the contour of flagged windows.
        title: title of the scene panel.

    Returns:
        The figure.
    """
    extent, crs = scene.extent, scene.crs
    nov = np.ma.masked_invalid(novelty.array)
    fig, axes = _scene_beside(scene, nov, "novelty (percentile of home chips)", cmap="magma", vmax=100, alpha=0.6)
    axes[1].contour(np.asarray(nov.filled(0)), levels=[flag_percentile], colors="red", linewidths=0.9,
                    extent=extent, origin="upper")
    _map_axes(axes[0], crs, title)
    _map_axes(axes[1], crs, f"novelty; red line: above the home {flag_percentile:g}th percentile")
    _scale_bar(axes[0], extent)
    fig.tight_layout()
    return fig


def plot_pr_curve(evaluation: dict) -> Figure:
    """Recall and precision of candidates against known schools over thresholds, the tuned one marked."""
    curve = evaluation["pr_curve"]
    t = [p["threshold"] for p in curve]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot(t, [p["recall"] for p in curve], label="recall", marker=".")
    axes[0].plot(t, [p["precision"] for p in curve], label="precision", marker=".")
    axes[0].plot(t, [p["f1"] for p in curve], label="F1", linestyle="--")
    if evaluation.get("threshold") is not None:
        axes[0].axvline(evaluation["threshold"], color="grey", linewidth=1, label="tuned threshold")
    axes[0].set(xlabel="P(school) threshold", ylabel="score", ylim=(-0.02, 1.02),
                title=f"{evaluation['match_distance_m']:g} m matching, {evaluation['schools']} known schools")
    axes[0].legend(fontsize=8)
    axes[1].plot([p["recall"] for p in curve], [p["precision"] for p in curve], marker=".")
    axes[1].scatter([evaluation["recall"]], [evaluation["precision"]], color="red", zorder=3, label="scan output")
    axes[1].set(xlabel="recall", ylabel="precision", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title="precision-recall")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_cases(chips: np.ndarray, cams: np.ndarray, titles: Sequence[str], columns: int = 6,
               empty: str = "Nothing to show here.") -> Figure | None:
    """Chips (top row of each pair) and their grad-CAM overlays (bottom); chips (N,3,H,W) uint8, cams (N,H,W).

    With no chip there is no figure: ``empty``, one sentence saying why (e.g. "Every known school was
    found."), is printed instead of an image that says nothing, and None is returned.
    """
    n = len(chips)
    if n == 0:
        print(empty)
        return None
    cols = min(columns, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(2 * rows, cols, figsize=(2.1 * cols, 4.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, cols)
        axes[2 * r, c].imshow(np.moveaxis(chips[i], 0, -1))
        axes[2 * r, c].set_title(titles[i], fontsize=8)
        axes[2 * r + 1, c].imshow(overlay_rgb(chips[i], cams[i]))
    fig.tight_layout()
    return fig
