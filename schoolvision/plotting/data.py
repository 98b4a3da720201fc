"""Figures of the data chapter: towns with school footprints, zooms, chip examples and the split map.

They read only the files the data contracts define (``scenes/*.tif``, ``schools.geojson``,
``chips.csv``), so they work for the demo and for a user's own imagery alike. Map axes are in the
scene's projected CRS (metres), with the EPSG code in the axis label.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import rasterio
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from rasterio.enums import Resampling

SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:red"}
LABEL_COLOURS = {"school": "yellow", "not_school": "white"}


def read_rgb(path: str | Path, max_side: int = 1024, window=None) -> tuple[np.ndarray, tuple[float, float, float, float], str]:
    """RGB uint8 (H, W, 3) decimated to ``max_side``, its extent (left, right, bottom, top) and CRS label."""
    with rasterio.open(path) as src:
        win = window if window is not None else rasterio.windows.Window(0, 0, src.width, src.height)
        factor = max(1.0, max(win.width, win.height) / max_side)
        shape = (3, max(1, int(win.height / factor)), max(1, int(win.width / factor)))
        rgb = src.read([1, 2, 3], window=win, out_shape=shape, resampling=Resampling.average, boundless=window is not None)
        left, bottom, right, top = rasterio.windows.bounds(win, src.transform)
        crs = src.crs.to_string() if src.crs else "no CRS"
    return np.moveaxis(rgb, 0, -1), (left, right, bottom, top), crs


def _map_axes(ax, crs: str, title: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(f"easting (m, {crs})")
    ax.set_ylabel(f"northing (m, {crs})")
    ax.ticklabel_format(style="plain", useOffset=False)
    ax.tick_params(labelsize=7)


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


def schools_in(schools: gpd.GeoDataFrame, scene: str | Path) -> gpd.GeoDataFrame:
    """The footprints that fall on ``scene``, reprojected to its CRS."""
    with rasterio.open(scene) as src:
        crs, bounds = src.crs, src.bounds
    local = schools.to_crs(crs)
    return local[local.intersects(_box(bounds))]


def _box(bounds):
    from shapely.geometry import box

    return box(*bounds)


def plot_towns(scenes: list[Path], schools: gpd.GeoDataFrame, columns: int = 3, max_side: int = 512) -> Figure:
    """Every town as a thumbnail with its school footprints outlined."""
    rows = int(np.ceil(len(scenes) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 4 * rows), squeeze=False, layout="constrained")
    for ax, scene in zip(axes.flat, scenes):
        rgb, extent, crs = read_rgb(scene, max_side)
        ax.imshow(rgb, extent=extent)
        local = schools_in(schools, scene)
        local.boundary.plot(ax=ax, color="yellow", linewidth=1)
        _map_axes(ax, crs, f"{Path(scene).stem}: {len(local)} schools")
        _scale_bar(ax, extent)
    for ax in axes.flat[len(scenes):]:
        ax.set_axis_off()
    fig.suptitle("Synthetic towns, school footprints in yellow")
    return fig


def plot_scene(scene: str | Path, schools: gpd.GeoDataFrame, max_side: int = 1400) -> Figure:
    """One town at full width with its school footprints and names."""
    rgb, extent, crs = read_rgb(scene, max_side)
    local = schools_in(schools, scene)
    fig, ax = plt.subplots(figsize=(10, 10), layout="constrained")
    ax.imshow(rgb, extent=extent)
    local.boundary.plot(ax=ax, color="yellow", linewidth=1.5)
    for name, point in zip(local.get("name", [""] * len(local)), local.representative_point()):
        ax.annotate(str(name), (point.x, point.y), color="yellow", fontsize=7, ha="center",
                    xytext=(0, 12), textcoords="offset points")
    _map_axes(ax, crs, f"{Path(scene).stem}: school footprints ({len(local)})")
    _scale_bar(ax, extent)
    return fig


def plot_zooms(scene: str | Path, geometries: gpd.GeoDataFrame, titles: list[str], pad: float = 40.0) -> Figure:
    """Close-ups at full resolution around each geometry (in the scene's CRS), outline drawn."""
    n = len(geometries)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 4.2), squeeze=False, layout="constrained")
    with rasterio.open(scene) as src:
        transform = src.transform
    for ax, geom, title in zip(axes.flat, geometries.geometry, titles):
        minx, miny, maxx, maxy = geom.bounds
        side = max(maxx - minx, maxy - miny) + 2 * pad
        cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
        window = rasterio.windows.from_bounds(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2, transform)
        rgb, extent, crs = read_rgb(scene, max_side=10_000, window=window.round_offsets().round_lengths())
        ax.imshow(rgb, extent=extent)
        gpd.GeoSeries([geom], crs=geometries.crs).boundary.plot(ax=ax, color="yellow", linewidth=1.5)
        _map_axes(ax, crs, title)
        _scale_bar(ax, extent)
    return fig


def plot_chip_examples(chips_dir: str | Path, per_class: int = 6, split: str = "train", seed: int = 0) -> Figure:
    """A random sample of chips of each class (rows) from one split, read from ``chips.csv``."""
    chips_dir = Path(chips_dir)
    frame = pd.read_csv(chips_dir / "chips.csv")
    frame = frame[frame["split"] == split]
    labels = sorted(frame["label"].unique(), reverse=True)  # school first
    fig, axes = plt.subplots(len(labels), per_class, figsize=(2 * per_class, 2.3 * len(labels)), squeeze=False,
                             layout="constrained")
    for row, label in zip(axes, labels):
        rows = frame[frame["label"] == label]
        sample = rows.sample(min(per_class, len(rows)), random_state=seed)
        for ax, (_, chip) in zip(row, sample.iterrows()):
            with rasterio.open(chips_dir / chip["path"]) as src:
                ax.imshow(np.moveaxis(src.read([1, 2, 3]), 0, -1))
                size_m = src.width * abs(src.transform.a)
            ax.set_title(f"{label}\n{chip['scene']}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in row[len(sample):]:
            ax.set_axis_off()
        row[0].set_ylabel(f"{label} ({size_m:g} m wide)")
    fig.suptitle(f"Chips of the {split} split, by class")
    return fig


def plot_split_map(chips_dir: str | Path, scenes: dict[str, Path], columns: int = 3, max_side: int = 384) -> Figure:
    """Each scene with its chip footprints coloured by split (fill) and school chips outlined."""
    chips_dir = Path(chips_dir)
    frame = pd.read_csv(chips_dir / "chips.csv")
    names = sorted(frame["scene"].unique())
    rows = int(np.ceil(len(names) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 4 * rows), squeeze=False, layout="constrained")
    for ax, name in zip(axes.flat, names):
        chips = frame[frame["scene"] == name]
        rgb, extent, crs = read_rgb(scenes[name], max_side)
        ax.imshow(rgb, extent=extent, alpha=0.8)
        for _, chip in chips.iterrows():
            school = chip["label"] == "school"
            ax.add_patch(Rectangle((chip["minx"], chip["miny"]), chip["maxx"] - chip["minx"], chip["maxy"] - chip["miny"],
                                   facecolor=SPLIT_COLOURS.get(chip["split"], "grey"), alpha=0.12,
                                   edgecolor="yellow" if school else "none", linewidth=0.8))
        splits = ", ".join(sorted(chips["split"].unique()))
        _map_axes(ax, crs, f"{name}: {splits} ({len(chips)} chips)")
        _scale_bar(ax, extent)
    for ax in axes.flat[len(names):]:
        ax.set_axis_off()
    handles = [Patch(facecolor=c, alpha=0.5, label=s) for s, c in SPLIT_COLOURS.items()]
    handles.append(Patch(facecolor="none", edgecolor="yellow", label="school chip"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    fig.suptitle("Spatial split: whole towns go to train, val or test")
    return fig
