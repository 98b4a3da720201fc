"""Tiny seeded georeferenced fixtures for the imagery / chips / dataset tests.

Scenes are textured noise with brighter square "schools" drawn at known pixel positions, written as
GeoTIFFs with a real EPSG CRS and an affine transform; the school squares are written as GeoJSON.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from affine import Affine
from shapely.geometry import box

from schoolvision.io.gis import write_geotiff


def scene_array(seed: int, size: int, schools_px, count: int = 3) -> np.ndarray:
    """(count, size, size) uint8: smooth noise plus a bright square per (row, col, side) school."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 120, size=(count, size // 8 + 1, size // 8 + 1)).astype(np.uint8)
    arr = np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)[:, :size, :size].copy()
    arr += rng.integers(0, 20, size=arr.shape, dtype=np.uint8)
    for row, col, side in schools_px:
        arr[:, row : row + side, col : col + side] = 230
    return arr


def write_scene(path: Path, *, seed: int = 0, size: int = 256, gsd: float = 1.0, crs: str = "EPSG:32636",
                origin: tuple[float, float] = (500_000.0, 100_000.0), schools_px=((64, 64, 48),), count: int = 3,
                colorinterp=None) -> list:
    """Write a scene; return school squares as shapely boxes in ``crs``."""
    transform = Affine(gsd, 0, origin[0], 0, -gsd, origin[1])
    write_geotiff(path, scene_array(seed, size, schools_px, count), crs, transform)
    if colorinterp is not None:
        with rasterio.open(path, "r+") as ds:
            ds.colorinterp = colorinterp
    polys = []
    for row, col, side in schools_px:
        x0, y0 = transform @ (col, row + side)
        x1, y1 = transform @ (col + side, row)
        polys.append(box(x0, y0, x1, y1))
    return polys


def make_towns(root: Path, n: int = 3, size: int = 256, crs: str = "EPSG:32636") -> tuple[Path, Path]:
    """``n`` small towns side by side (2 schools each) in ``root/scenes`` and ``root/schools.geojson`` (EPSG:4326)."""
    scenes = root / "scenes"
    names, geoms = [], []
    for i in range(n):
        polys = write_scene(scenes / f"town_{i:02d}.tif", seed=i, size=size, crs=crs,
                            origin=(500_000.0 + i * 2 * size, 100_000.0), schools_px=((40, 40, 48), (150, 160, 40)))
        geoms += polys
        names += [f"school_{i}_{k}" for k in range(len(polys))]
    gdf = gpd.GeoDataFrame({"name": names}, geometry=geoms, crs=crs).to_crs("EPSG:4326")
    schools = root / "schools.geojson"
    gdf.to_file(schools, driver="GeoJSON")
    return scenes, schools
