"""Figures for feature clustering: k selection, PCA variance, 2-D embedding, galleries, composition, map.

They draw what :mod:`schoolvision.cluster` computed and read: no file is opened here (the gallery
chips, heatmaps and scene previews come from :mod:`schoolvision.cluster.runner`).
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnnotationBbox, OffsetImage
from matplotlib.patches import Patch

from schoolvision import CLASSES, SCHOOL
from schoolvision.cluster.algorithms import Clustering, nearest_to_centre
from schoolvision.cluster.runner import ScenePreview, footprints

NOISE_COLOUR = (0.6, 0.6, 0.6, 1.0)


def cluster_colours(k: int) -> list[tuple]:
    """One colour per cluster (tab10, then tab20 for more)."""
    cmap = matplotlib.colormaps["tab10" if k <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(max(k, 1))]


def _colour_of(labels: np.ndarray, k: int) -> list[tuple]:
    colours = cluster_colours(k)
    return [NOISE_COLOUR if c < 0 else colours[c] for c in labels]


def plot_k_selection(table: pd.DataFrame, chosen_k: int | None = None) -> Figure:
    """Silhouette (higher is better), Davies-Bouldin (lower) and mixture BIC (lower) against k."""
    fig = plt.figure(figsize=(11, 3.2), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, col, better in zip(axes, ("silhouette", "davies_bouldin", "bic"), ("higher", "lower", "lower")):
        sns.lineplot(data=table, x="k", y=col, marker="o", color="C0", ax=ax)
        if chosen_k is not None and chosen_k in set(table["k"]):
            ax.axvline(chosen_k, color="C3", ls="--", lw=1, label=f"chosen k={chosen_k}")
            ax.legend(fontsize=8)
        ax.set(xlabel="k", ylabel="", xticks=list(table["k"]))
        ax.set_title(f"{col.replace('_', '-')} ({better} is better)", fontsize=10)
    return fig


def plot_pca_variance(explained: np.ndarray, dims: int, threshold: float | None = None) -> Figure:
    """Cumulative explained variance of the PCA components, with the kept dimensions marked."""
    fig = plt.figure(figsize=(5, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.plot(np.arange(1, len(explained) + 1), explained, ".-")
    ax.axvline(dims, color="C3", ls="--", lw=1, label=f"kept {dims} dims ({explained[dims - 1]:.0%})")
    if threshold is not None:
        ax.axhline(threshold, color="grey", ls=":", lw=1, label=f"threshold {threshold:.0%}")
    ax.set(xlabel="PCA components", ylabel="cumulative explained variance", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    return fig


def plot_embedding(
    xy: np.ndarray,
    clusters: np.ndarray,
    outcomes: np.ndarray,
    thumbnails: np.ndarray | None = None,
    n_thumbnails: int = 30,
    seed: int = 0,
) -> Figure:
    """t-SNE map coloured by cluster (left, with chip thumbnails) and by :func:`chip_outcomes` (right)."""
    k = int(clusters.max() + 1) if len(clusters) else 0
    fig = plt.figure(figsize=(12, 5.5), layout="constrained")
    ax_c, ax_l = fig.subplots(1, 2)
    ax_c.scatter(xy[:, 0], xy[:, 1], c=_colour_of(clusters, k), s=18, edgecolors="none")
    if thumbnails is not None and len(thumbnails):
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(xy), size=min(n_thumbnails, len(xy)), replace=False)
        for i in pick:
            colour = NOISE_COLOUR if clusters[i] < 0 else cluster_colours(k)[clusters[i]]
            box = AnnotationBbox(OffsetImage(thumbnails[i], zoom=0.5), xy[i], frameon=True, pad=0.1,
                                 bboxprops={"edgecolor": colour, "lw": 1.5})
            ax_c.add_artist(box)
    for c in range(k):
        ax_c.scatter([], [], color=cluster_colours(k)[c], label=f"cluster {c}")
    if (clusters < 0).any():
        ax_c.scatter([], [], color=NOISE_COLOUR, label="noise")
    ax_c.legend(fontsize=8, loc="best")
    ax_c.set_title("t-SNE of chip features, by cluster")
    for name, colour in OUTCOME_COLOURS.items():
        m = outcomes == name
        if m.any():
            ax_l.scatter(xy[m, 0], xy[m, 1], s=18, color=colour, label=name, edgecolors="none")
    ax_l.legend(fontsize=8)
    ax_l.set_title("by label and prediction")
    for ax in (ax_c, ax_l):
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def plot_gallery(
    images: dict[int, list[np.ndarray]],
    cams: dict[int, list[np.ndarray | None]] | None = None,
    captions: dict[int, list[str]] | None = None,
    sizes: dict[int, int] | None = None,
) -> Figure:
    """One row per cluster: its chips nearest the centre, with a CAM overlay where one is given."""
    rows = sorted(images)
    ncols = max((len(v) for v in images.values()), default=1)
    fig = plt.figure(figsize=(1.6 * ncols + 0.8, 1.7 * max(len(rows), 1)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(max(len(rows), 1), ncols, squeeze=False))
    colours = cluster_colours(len(rows))
    for r, c in enumerate(rows):
        for j in range(ncols):
            ax = axes[r, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if j >= len(images[c]):
                continue
            ax.imshow(images[c][j])
            cam = None if cams is None else cams.get(c, [None] * ncols)[j]
            if cam is not None:  # opacity follows the heat, so a cold map leaves the chip visible
                rgba = matplotlib.colormaps["jet"](np.clip(cam, 0, 1))
                rgba[..., 3] = 0.6 * np.clip(cam, 0, 1)
                h, w = images[c][j].shape[:2]
                ax.imshow(rgba, extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="bilinear")
            for s in ax.spines.values():
                s.set_visible(True)
                s.set_edgecolor(colours[c % len(colours)])
                s.set_linewidth(2)
            if captions:
                ax.set_title(captions[c][j], fontsize=7)
        size = f" (n={sizes[c]})" if sizes else ""
        axes[r, 0].set_ylabel(f"cluster {c}{size}", fontsize=9)
    return fig


def cluster_gallery(
    table: pd.DataFrame,
    result: Clustering,
    chips: Mapping[str, np.ndarray],
    cams: Mapping[str, np.ndarray] | None = None,
    n: int = 8,
) -> Figure:
    """Gallery of the ``n`` chips nearest each cluster centre.

    ``chips`` maps chip id -> (H, W, 3) image and must hold those chips (``ClusterReport.gallery``);
    ``cams`` maps chip id -> heatmap in [0, 1] (any size; drawn stretched over the chip).
    """
    cams = cams or {}
    images, overlays, captions = {}, {}, {}
    for c, idx in nearest_to_centre(result, n, table).items():
        rows = table.iloc[idx]
        images[c] = [chips[str(cid)] for cid in rows["chip_id"]]
        overlays[c] = [cams.get(str(cid)) for cid in rows["chip_id"]]
        captions[c] = [f"{_outcome(lab, pred)} p={prob:.2f}"
                       for lab, pred, prob in zip(rows["label"], rows["prediction"], rows["prob"])]
    sizes = {c: int((result.labels == c).sum()) for c in images}
    return plot_gallery(images, overlays if cams else None, captions, sizes)


def _outcome(label: str, prediction: str) -> str:
    school = CLASSES[SCHOOL]
    if label == school:
        return "school" if prediction == school else "missed school"
    return "false pos." if prediction == school else "not school"


OUTCOME_COLOURS = {"school (detected)": "C2", "school (missed)": "C1", "false positive": "C3", "not school": "C7"}


def chip_outcomes(table: pd.DataFrame) -> np.ndarray:
    """Per chip: school (detected), school (missed), false positive or not school."""
    school = CLASSES[SCHOOL]
    is_school, pred_school = table["label"] == school, table["prediction"] == school
    return np.select(
        [is_school & pred_school, is_school & ~pred_school, ~is_school & pred_school],
        ["school (detected)", "school (missed)", "false positive"],
        "not school",
    )


def plot_composition(table: pd.DataFrame) -> Figure:
    """Per cluster: share of detected / missed schools, false positives and negatives; chips per town."""
    labels = table["cluster"].map(lambda c: "noise" if c < 0 else f"{c}")
    order = sorted(labels.unique(), key=lambda s: (s == "noise", int(s) if s != "noise" else 0))
    frame = table.assign(kind=chip_outcomes(table), cluster=pd.Categorical(labels, categories=order))
    kinds = [k for k in OUTCOME_COLOURS if k in set(frame["kind"])]
    fig = plt.figure(figsize=(11, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    sns.histplot(frame, x="cluster", hue="kind", hue_order=kinds, palette=OUTCOME_COLOURS, multiple="fill",
                 discrete=True, shrink=0.8, alpha=1, ax=ax1)
    ax1.set(xlabel="cluster", ylabel="share of chips", title="what each cluster holds")
    sns.move_legend(ax1, "best", title=None, fontsize=7)
    sns.histplot(frame, x="cluster", hue="scene", hue_order=sorted(frame["scene"].unique()), multiple="stack",
                 discrete=True, shrink=0.8, alpha=1, ax=ax2)
    ax2.set(xlabel="cluster", ylabel="chips", title="chips per town")
    sns.move_legend(ax2, "best", title=None, fontsize=7, ncols=2)
    return fig


def plot_cluster_map(table: pd.DataFrame, scene: ScenePreview, name: str) -> Figure:
    """Chip footprints of scene ``name``, coloured by cluster, over its preview; axes in the scene CRS."""
    bounds, crs = scene.bounds, scene.crs
    part = table[table["scene"] == name]
    k = int(table["cluster"].max() + 1) if len(table) else 0
    fig = plt.figure(figsize=(7.5, 7), layout="constrained")
    ax = fig.subplots()
    ax.imshow(scene.image, extent=(bounds.left, bounds.right, bounds.bottom, bounds.top))
    for gdf in footprints(part).values():
        gdf = gdf.to_crs(crs)
        colours = _colour_of(gdf["cluster"].to_numpy(), k)
        gdf.plot(ax=ax, facecolor=[(*c[:3], 0.35) for c in colours], edgecolor=colours, linewidth=1.2)
    present = sorted(part["cluster"].unique())
    handles = [Patch(color=NOISE_COLOUR if c < 0 else cluster_colours(k)[c], label="noise" if c < 0 else f"cluster {c}")
               for c in present]
    ax.legend(handles=handles, fontsize=8, loc="upper right")
    ax.set(xlim=(bounds.left, bounds.right), ylim=(bounds.bottom, bounds.top))
    ax.grid(False)  # a theme's grid would hatch the image
    unit = "m" if crs is not None and crs.is_projected else "deg"
    ax.set_xlabel(f"easting ({unit})")
    ax.set_ylabel(f"northing ({unit})")
    ax.set_title(f"{name}: {len(part)} clustered chips ({crs.to_string() if crs else 'no CRS'})", fontsize=10)
    ax.ticklabel_format(style="plain", useOffset=False)
    ax.tick_params(axis="x", labelrotation=30)
    return fig
