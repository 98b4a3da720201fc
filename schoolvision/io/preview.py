"""Rasters read small for a figure, with their extent: plotting draws arrays and never opens a file.

A preview is decimated (average resampling, through the overviews) so that its longer side is at
most ``max_side`` pixels, whatever the raster's size, and keeps where it lies: its extent in the
raster's CRS, in the (left, right, bottom, top) order of matplotlib's ``imshow``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window, from_bounds
from rasterio.windows import bounds as window_bounds
from shapely.geometry.base import BaseGeometry

from schoolvision.errors import UserError
from schoolvision.io.imagery import ImagerySource, open_source


@dataclass(frozen=True)
class Preview:
    """A raster decimated for display: (H, W, 3) uint8 RGB or (H, W) masked band, extent and CRS label."""

    array: np.ndarray
    extent: tuple[float, float, float, float]  # left, right, bottom, top
    crs: str  # e.g. "EPSG:32636", or "no CRS"


def _shape(width: float, height: float, max_side: int) -> tuple[int, int]:
    factor = max(1.0, max(width, height) / max_side)
    return max(1, int(height / factor)), max(1, int(width / factor))


def _extent_and_crs(src, win: Window) -> tuple[tuple[float, float, float, float], str]:
    left, bottom, right, top = window_bounds(win, src.transform)
    return (left, right, bottom, top), src.crs.to_string() if src.crs else "no CRS"


def read_rgb_preview(path: str | Path, max_side: int = 1024, window: Window | None = None) -> Preview:
    """Bands 1-3 of ``path`` (or of ``window``, outside the raster read as 0) as an RGB preview."""
    with rasterio.open(path) as src:
        win = window if window is not None else Window(0, 0, src.width, src.height)
        shape = (3, *_shape(win.width, win.height, max_side))
        rgb = src.read([1, 2, 3], window=win, out_shape=shape, resampling=Resampling.average,
                       boundless=window is not None)
        extent, crs = _extent_and_crs(src, win)
    return Preview(np.moveaxis(rgb, 0, -1), extent, crs)


def read_band_preview(path: str | Path, max_side: int = 1024, band: int = 1) -> Preview:
    """One band of ``path`` (e.g. a probability raster) as a masked preview, nodata masked."""
    with rasterio.open(path) as src:
        win = Window(0, 0, src.width, src.height)
        values = src.read(band, out_shape=_shape(src.width, src.height, max_side), resampling=Resampling.average,
                          masked=True)
        extent, crs = _extent_and_crs(src, win)
    return Preview(values, extent, crs)


def read_rgb_zooms(path: str | Path, geometries: Iterable[BaseGeometry], pad: float = 40.0) -> list[Preview]:
    """Full-resolution RGB previews of a square around each geometry (in the raster's CRS), ``pad`` beyond it."""
    with rasterio.open(path) as src:
        transform = src.transform
    zooms = []
    for geom in geometries:
        minx, miny, maxx, maxy = geom.bounds
        side = max(maxx - minx, maxy - miny) + 2 * pad
        cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
        window = from_bounds(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2, transform)
        window = window.round_offsets().round_lengths()
        zooms.append(read_rgb_preview(path, max_side=10_000, window=window))
    return zooms


def read_source_preview(source: ImagerySource, max_side: int = 1024) -> Preview:
    """A scene as the pipeline reads it (RGB bands, 8-bit, mask, projected CRS) as an RGB preview.

    Unlike :func:`read_rgb_preview` this takes any imagery source (a tile folder, a mosaic, a 16-bit
    or EPSG:4326 raster) with its reading options, and the preview lies in the CRS chips are cut in.
    """
    with open_source(source) as ds:
        shape = (3, *_shape(ds.width, ds.height, max_side))
        rgb = _read(ds, (1, 2, 3), Window(0, 0, ds.width, ds.height), shape, source.path)
        extent, crs = _extent_and_crs(ds, Window(0, 0, ds.width, ds.height))
    return Preview(np.moveaxis(rgb, 0, -1), extent, crs)


def read_source_zooms(source: ImagerySource, geometries: Iterable[BaseGeometry], pad: float = 40.0) -> list[Preview]:
    """:func:`read_rgb_zooms` for any imagery source; geometries in the source's projected (chip) CRS."""
    zooms = []
    with open_source(source) as ds:
        for geom in geometries:
            minx, miny, maxx, maxy = geom.bounds
            side = max(maxx - minx, maxy - miny) + 2 * pad
            cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
            window = from_bounds(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2, ds.transform)
            window = window.round_offsets().round_lengths()
            shape = (3, int(window.height), int(window.width))
            rgb = _read(ds, (1, 2, 3), window, shape, source.path)
            extent, crs = _extent_and_crs(ds, window)
            zooms.append(Preview(np.moveaxis(rgb, 0, -1), extent, crs))
    return zooms


def _read(ds, bands, window: Window, shape: tuple[int, int, int], path) -> np.ndarray:
    """``window`` of ``ds`` resampled to ``shape`` (average); parts outside the raster are 0.

    Warped views do not read past their edges, so the window is clipped and the read placed in a zero array.
    """
    inside = window.intersection(Window(0, 0, ds.width, ds.height)) if _overlaps(window, ds) else None
    out = np.zeros(shape, np.uint8)
    if inside is None:
        return out
    fy, fx = shape[1] / window.height, shape[2] / window.width
    r0, c0 = round((inside.row_off - window.row_off) * fy), round((inside.col_off - window.col_off) * fx)
    h = max(1, min(shape[1] - r0, round(inside.height * fy)))
    w = max(1, min(shape[2] - c0, round(inside.width * fx)))
    try:
        out[:, r0 : r0 + h, c0 : c0 + w] = ds.read(bands, window=inside, out_shape=(len(bands), h, w),
                                                  resampling=Resampling.average)
    except RasterioError as exc:
        raise UserError(f"raster is truncated or corrupt ({str(exc).splitlines()[0][:120]})", path) from None
    return out


def _overlaps(window: Window, ds) -> bool:
    return (window.col_off < ds.width and window.row_off < ds.height
            and window.col_off + window.width > 0 and window.row_off + window.height > 0)
