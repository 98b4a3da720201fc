"""GeoTIFF writing: one profile, one overview builder, every raster output carrying its CRS.

Chips, heatmaps, demo scenes and scan probability rasters are all written with
:func:`geotiff_profile` (deflate, 256 px tiles, a floating-point or horizontal predictor) and get
overviews from :func:`build_overviews`, so QGIS opens any of them quickly and in the right place.
Writes are atomic (temporary file, then rename), so QGIS never opens half a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling

from schoolvision.io.atomic import atomic_path

BLOCK = 256
"""GeoTIFF tile size (pixels a side); rasters smaller than one tile are written in strips."""

MIN_OVERVIEW = 64
"""Overviews stop before the shorter side drops under this many pixels."""


def geotiff_profile(width: int, height: int, count: int, dtype: str, crs: CRS | str | None, transform: Affine, *,
                    nodata: float | int | None = None, tiled: bool = True, compress: str = "deflate",
                    photometric: str | None = None) -> dict[str, Any]:
    """The rasterio profile of every GeoTIFF the project writes.

    Args:
        width: columns.
        height: rows.
        count: bands.
        dtype: numpy dtype name of the pixels.
        crs: anything ``CRS.from_user_input`` takes, or None.
        transform: pixel to CRS affine transform.
        nodata: nodata value, if any.
        tiled: tile in ``BLOCK`` px squares when the raster holds at least one.
        compress: GDAL compression; deflate and lzw get a predictor (3 for floats, 2 for integers).
        photometric: e.g. ``"RGB"`` for 3-band uint8 scenes.

    Returns:
        Keyword arguments for ``rasterio.open(path, "w", **profile)``.
    """
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": dtype,
        "crs": CRS.from_user_input(crs) if crs is not None else None,
        "transform": transform,
        "compress": compress,
    }
    if nodata is not None:
        profile["nodata"] = nodata
    if tiled and width >= BLOCK and height >= BLOCK:
        profile.update(tiled=True, blockxsize=BLOCK, blockysize=BLOCK)
    if photometric:
        profile["photometric"] = photometric
    if compress in ("deflate", "lzw") and np.dtype(dtype).kind == "f":
        profile["predictor"] = 3
    elif compress in ("deflate", "lzw"):
        profile["predictor"] = 2
    return profile


def build_overviews(dst) -> None:
    """Overviews of an open, written dataset down to ``MIN_OVERVIEW`` px: average for floats, nearest otherwise.

    Averaging is right for probabilities and heatmaps; class ids and RGB bytes are sampled so an
    overview never shows a value the raster does not hold.
    """
    factors = [f for f in (2, 4, 8, 16, 32) if min(dst.width, dst.height) // f >= MIN_OVERVIEW]
    if factors:
        method = Resampling.average if np.dtype(dst.dtypes[0]).kind == "f" else Resampling.nearest
        dst.build_overviews(factors, method)
        dst.update_tags(ns="rio_overview", resampling=method.name)


def write_geotiff(
    path: str | Path,
    array: np.ndarray,
    crs: CRS | str | None,
    transform: Affine,
    *,
    nodata: float | int | None = None,
    tiled: bool = True,
    overviews: bool = False,
    compress: str = "deflate",
    band_names: list[str] | None = None,
    tags: Mapping[str, str] | None = None,
    photometric: str | None = None,
) -> Path:
    """Write a (bands, rows, cols) or (rows, cols) array as a GeoTIFF atomically.

    Deterministic: no timestamps are written, so the same array gives byte-identical files.
    Overviews (see :func:`build_overviews`) make large scenes fast to open in QGIS.
    """
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[None]
    count, height, width = arr.shape
    profile = geotiff_profile(width, height, count, arr.dtype.name, crs, transform, nodata=nodata, tiled=tiled,
                              compress=compress, photometric=photometric)
    with (atomic_path(path) as tmp, rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
          rasterio.open(tmp, "w", **profile) as dst):
        dst.write(arr)
        if band_names:
            for i, name in enumerate(band_names, start=1):
                dst.set_band_description(i, name)
        if tags:
            dst.update_tags(**tags)
        if overviews:
            build_overviews(dst)
    return Path(path)
