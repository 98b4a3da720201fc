"""Georeferenced writing: every raster and vector output carries its CRS.

All writers are atomic (temporary file, then rename), so QGIS never opens half a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling

from schoolvision.io.atomic import atomic_path


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
    Overviews (nearest for integers, average for floats) make large scenes fast to open in QGIS.
    """
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[None]
    count, height, width = arr.shape
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": arr.dtype.name,
        "crs": CRS.from_user_input(crs) if crs is not None else None,
        "transform": transform,
        "compress": compress,
    }
    if nodata is not None:
        profile["nodata"] = nodata
    if tiled and width >= 256 and height >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    if photometric:
        profile["photometric"] = photometric
    if compress in ("deflate", "lzw") and arr.dtype.kind == "f":
        profile["predictor"] = 3
    elif compress in ("deflate", "lzw"):
        profile["predictor"] = 2
    with atomic_path(path) as tmp:
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(arr)
                if band_names:
                    for i, name in enumerate(band_names, start=1):
                        dst.set_band_description(i, name)
                if tags:
                    dst.update_tags(**tags)
                if overviews:
                    factors = [f for f in (2, 4, 8, 16, 32) if min(width, height) // f >= 64]
                    if factors:
                        method = Resampling.average if arr.dtype.kind == "f" else Resampling.nearest
                        dst.build_overviews(factors, method)
                        dst.update_tags(ns="rio_overview", resampling=method.name)
    return Path(path)


def write_vectors(
    gdf,
    gpkg: str | Path | None = None,
    geojson: str | Path | None = None,
    *,
    layer: str = "features",
    extra_layers: Mapping[str, object] | None = None,
) -> None:
    """Write a GeoDataFrame to a GeoPackage (its own CRS) and/or GeoJSON (EPSG:4326, per RFC 7946).

    ``extra_layers`` adds more named layers to the same GeoPackage (e.g. missed schools).
    Each file is written to a temporary name and renamed, layers included.
    """
    if gdf.crs is None:
        raise ValueError("refusing to write vectors without a CRS")
    if gpkg is not None:
        with atomic_path(gpkg) as tmp:
            gdf.to_file(tmp, layer=layer, driver="GPKG")
            for name, other in (extra_layers or {}).items():
                if other is not None and len(other):
                    other.to_file(tmp, layer=name, driver="GPKG")
    if geojson is not None:
        with atomic_path(geojson) as tmp:
            # name the layer after the target: GDAL would otherwise record the temporary file's name
            gdf.to_crs("EPSG:4326").to_file(tmp, driver="GeoJSON", layer=Path(geojson).stem)
