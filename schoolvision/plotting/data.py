"""Figures of the data chapter: towns with school footprints, zooms, chip examples and the split map.

They draw what the caller read: scene previews (:mod:`schoolvision.io.preview`), school footprints,
the chips index as a frame (:meth:`schoolvision.io.folders.ChipsFolder.read_index`) and chip pixels
(:meth:`schoolvision.data.dataset.ChipDataset.sample_by_class`), so they work for the demo and for a
user's own imagery alike. Map axes are in the scene's projected CRS (metres), with the EPSG code in
the axis label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import geopandas as gpd
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from shapely.geometry import box

from schoolvision.io.preview import Preview

SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:red"}


def _map_axes(ax, crs: str, title: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(f"easting (m, {crs})")
    ax.set_ylabel(f"northing (m, {crs})")
    ax.ticklabel_format(style="plain", useOffset=False)
    ax.tick_params(labelsize=7)
    ax.grid(False)  # a theme's grid would hatch the image


def _scale_bar(ax, extent, length: float | None = None) -> None:
    """A scale bar in the lower left, a round number of metres about a fifth of the width."""
    width = extent[1] - extent[0]
    if length is None:
        raw = width / 5
        length = float(10 ** np.floor(np.log10(raw)))
        length *= 5 if raw / length >= 5 else 2 if raw / length >= 2 else 1
    x0, y0 = extent[0] + 0.05 * width, extent[2] + 0.05 * (extent[3] - extent[2])
    ax.plot([x0, x0 + length], [y0, y0], color="white", linewidth=4, solid_capstyle="butt")
    ax.plot([x0, x0 + length], [y0, y0], color="black", linewidth=1.5, solid_capstyle="butt")
    ax.text(x0 + length / 2, y0, f"{length:g} m", ha="center", va="bottom", fontsize=8, color="white",
            bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0})


def schools_in(schools: gpd.GeoDataFrame, scene: Preview) -> gpd.GeoDataFrame:
    """The footprints that fall on a scene's preview, reprojected to the scene's CRS."""
    left, right, bottom, top = scene.extent
    local = schools.to_crs(scene.crs)
    return local[local.intersects(box(left, bottom, right, top))]


def plot_towns(scenes: Mapping[str, Preview], schools: gpd.GeoDataFrame, columns: int = 3) -> Figure:
    """Every town (name -> preview) as a thumbnail with its school footprints outlined."""
    rows = int(np.ceil(len(scenes) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 4 * rows), squeeze=False, layout="constrained")
    for ax, (name, scene) in zip(axes.flat, scenes.items()):
        ax.imshow(scene.array, extent=scene.extent)
        local = schools_in(schools, scene)
        local.boundary.plot(ax=ax, color="yellow", linewidth=1)
        _map_axes(ax, scene.crs, f"{name}: {len(local)} schools")
        _scale_bar(ax, scene.extent)
    for ax in axes.flat[len(scenes):]:
        ax.set_axis_off()
    fig.suptitle("Synthetic towns, school footprints in yellow")
    return fig


def plot_scene(scene: Preview, schools: gpd.GeoDataFrame, name: str) -> Figure:
    """One town at full width with its school footprints and names."""
    local = schools_in(schools, scene)
    fig, ax = plt.subplots(figsize=(10, 10), layout="constrained")
    ax.imshow(scene.array, extent=scene.extent)
    local.boundary.plot(ax=ax, color="yellow", linewidth=1.5)
    for label, point in zip(local.get("name", [""] * len(local)), local.representative_point()):
        ax.annotate(str(label), (point.x, point.y), color="yellow", fontsize=7, ha="center",
                    xytext=(0, 12), textcoords="offset points")
    _map_axes(ax, scene.crs, f"{name}: school footprints ({len(local)})")
    _scale_bar(ax, scene.extent)
    return fig


def plot_zooms(zooms: Sequence[Preview], geometries: gpd.GeoDataFrame, titles: Sequence[str]) -> Figure:
    """Close-ups (:func:`schoolvision.io.preview.read_rgb_zooms`) with each geometry outlined."""
    n = len(zooms)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 4.2), squeeze=False, layout="constrained")
    for ax, zoom, geom, title in zip(axes.flat, zooms, geometries.geometry, titles):
        ax.imshow(zoom.array, extent=zoom.extent)
        gpd.GeoSeries([geom], crs=geometries.crs).boundary.plot(ax=ax, color="yellow", linewidth=1.5)
        _map_axes(ax, zoom.crs, title)
        _scale_bar(ax, zoom.extent)
    return fig


def plot_chip_examples(examples: pd.DataFrame, images: Sequence[np.ndarray], title: str = "") -> Figure:
    """One row of chips per class, titled with class and scene, as ``ChipDataset.sample_by_class`` returns them.

    ``examples`` holds the chips' index rows in row order (``label``, ``scene``, ``width_m``),
    ``images`` their pixels as (H, W, 3) uint8.
    """
    labels = list(dict.fromkeys(examples["label"]))
    columns = max(int((examples["label"] == label).sum()) for label in labels)
    fig, axes = plt.subplots(len(labels), columns, figsize=(2 * columns, 2.3 * len(labels)), squeeze=False,
                             layout="constrained")
    for row, label in zip(axes, labels):
        picked = np.flatnonzero(examples["label"].to_numpy() == label)
        for ax, i in zip(row, picked):
            ax.imshow(images[i])
            ax.set_title(f"{label}\n{examples['scene'].iloc[i]}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in row[len(picked):]:
            ax.set_axis_off()
        row[0].set_ylabel(f"{label} ({examples['width_m'].iloc[picked[-1]]:g} m wide)")
    fig.suptitle(title)
    return fig


def plot_split_map(chips: pd.DataFrame, scenes: Mapping[str, Preview], columns: int = 3) -> Figure:
    """Each scene (name -> preview) with the chips of a chips index coloured by split, school chips outlined."""
    names = sorted(chips["scene"].unique())
    rows = int(np.ceil(len(names) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 4 * rows), squeeze=False, layout="constrained")
    for ax, name in zip(axes.flat, names):
        part = chips[chips["scene"] == name]
        scene = scenes[name]
        ax.imshow(scene.array, extent=scene.extent, alpha=0.8)
        for _, chip in part.iterrows():
            school = chip["label"] == "school"
            width, height = chip["maxx"] - chip["minx"], chip["maxy"] - chip["miny"]
            ax.add_patch(Rectangle((chip["minx"], chip["miny"]), width, height,
                                   facecolor=SPLIT_COLOURS.get(chip["split"], "grey"), alpha=0.12,
                                   edgecolor="yellow" if school else "none", linewidth=0.8))
        splits = ", ".join(sorted(part["split"].unique()))
        _map_axes(ax, scene.crs, f"{name}: {splits} ({len(part)} chips)")
        _scale_bar(ax, scene.extent)
    for ax in axes.flat[len(names):]:
        ax.set_axis_off()
    handles = [Patch(facecolor=c, alpha=0.5, label=s) for s, c in SPLIT_COLOURS.items()]
    handles.append(Patch(facecolor="none", edgecolor="yellow", label="school chip"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    fig.suptitle("Spatial split: whole towns go to train, val or test")
    return fig
