"""The one generator of the test suite's tiny georeferenced data (torchgeo style).

Scenes, school files and fake chips folders are written by the functions here: seeded (same bytes
on every run), with a real EPSG CRS (UTM zone 36N unless a test asks for another) and an affine
transform, so the georeference code paths run for real. The shared pytest fixtures built from them
live in ``conftest.py``; a test module imports these functions only to write a variant of its own
(another band count, a no-data strip, a geographic CRS). A test that needs a raster of one exact
array (a probability map, a 16-bit scene) writes it inline with ``write_geotiff``. Run this file as
a script to look at the data in a GIS::

    python tests/fixtures.py /tmp/schoolvision-fixtures
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from affine import Affine
from rasterio.transform import from_origin
from shapely.geometry import box

from schoolvision.io.rasters import write_geotiff

UTM = "EPSG:32636"
ORIGIN = (500_000.0, 100_000.0)  # upper-left corner (x, y) in UTM metres


def scene_array(seed: int, size: int, schools_px, count: int = 3) -> np.ndarray:
    """(count, size, size) uint8: smooth noise plus a bright square per (row, col, side) school."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 120, size=(count, size // 8 + 1, size // 8 + 1)).astype(np.uint8)
    arr = np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)[:, :size, :size].copy()
    arr += rng.integers(0, 20, size=arr.shape, dtype=np.uint8)
    for row, col, side in schools_px:
        arr[:, row : row + side, col : col + side] = 230
    return arr


def write_scene(path: Path, *, seed: int = 0, size: int = 256, gsd: float = 1.0, crs: str = UTM,
                origin: tuple[float, float] = ORIGIN, schools_px=((64, 64, 48),), count: int = 3,
                colorinterp=None) -> list:
    """Write a scene of bright-square schools; return the squares as shapely boxes in ``crs``."""
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


def make_towns(root: Path, n: int = 3, size: int = 256, crs: str = UTM) -> tuple[Path, Path]:
    """``n`` small towns side by side (2 schools each) in ``root/scenes`` and ``root/schools.geojson`` (EPSG:4326)."""
    scenes = root / "scenes"
    names, geoms = [], []
    for i in range(n):
        polys = write_scene(scenes / f"town_{i:02d}.tif", seed=i, size=size, crs=crs,
                            origin=(ORIGIN[0] + i * 2 * size, ORIGIN[1]), schools_px=((40, 40, 48), (150, 160, 40)))
        geoms += polys
        names += [f"school_{i}_{k}" for k in range(len(polys))]
    gdf = gpd.GeoDataFrame({"name": names}, geometry=geoms, crs=crs).to_crs("EPSG:4326")
    schools = root / "schools.geojson"
    gdf.to_file(schools, driver="GeoJSON")
    return scenes, schools


def write_red_scene(path: Path, h: int, w: int, gsd: float = 1.0, squares=(), crs=UTM, nodata_rows: int = 0,
                    seed: int = 0, transform: Affine | None = None) -> Path:
    """Grey noise with red squares (row, col, size) in pixel units, for the scan tests' "red roof" model.

    ``nodata_rows`` top rows are 0 and declared no-data; scenes of 256 px and more are tiled like real imagery.
    """
    rng = np.random.default_rng(seed)
    img = rng.integers(60, 120, (3, h, w), dtype=np.uint8)
    for r, c, s in squares:
        img[0, r : r + s, c : c + s] = 230
        img[1:, r : r + s, c : c + s] = 20
    if nodata_rows:
        img[:, :nodata_rows] = 0
    tf = transform or Affine(gsd, 0, ORIGIN[0], 0, -gsd, ORIGIN[1])
    prof = {"driver": "GTiff", "width": w, "height": h, "count": 3, "dtype": "uint8", "crs": crs, "transform": tf}
    if nodata_rows:
        prof["nodata"] = 0
    if w >= 256 and h >= 256:
        prof.update(tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(img)
    return path


def make_fake_chips(root: Path, counts=(10, 6), size: int = 32, seed: int = 0,
                    splits=("train", "val", "test")) -> Path:
    """A tiny chips folder (chips.csv, dataset.json, GeoTIFF chips) without a scene behind it.

    ``counts`` is (not_school, school) per split; a school chip holds a bright square. Small enough
    for a training run of a few seconds on a CPU.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for s, split in enumerate(splits):
        scene = f"town_{s:02d}"
        for label, n in zip(("not_school", "school"), counts):
            for k in range(n):
                img = rng.integers(40, 120, (3, size, size), dtype=np.uint8)
                if label == "school":
                    a = int(rng.integers(2, size // 2))
                    img[:, a : a + size // 3, a : a + size // 3] = 230
                cid = f"{scene}_{label}_{k:03d}"
                rel = f"{split}/{label}/{cid}.tif"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                tr = from_origin(500000 + k * size, 4000000, 1.0, 1.0)
                with rasterio.open(root / rel, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                                   crs=UTM, transform=tr) as ds:
                    ds.write(img)
                rows.append({"chip_id": cid, "path": rel, "label": label, "split": split, "scene": scene,
                             "row_off": 0, "col_off": k * size, "minx": tr.c, "miny": tr.f - size,
                             "maxx": tr.c + size, "maxy": tr.f, "crs": UTM, "school_fraction": float(label == "school"),
                             "school_name": "s" if label == "school" else ""})
    pd.DataFrame(rows).to_csv(root / "chips.csv", index=False)
    meta = {"chip_size": size, "gsd": 1.0, "stride": size, "seed": seed, "classes": ["not_school", "school"]}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "test-fixtures")
    scenes, schools = make_towns(out / "towns")
    write_red_scene(out / "red_scene.tif", 300, 333, squares=[(100, 150, 30)])
    make_fake_chips(out / "fake_chips")
    print(f"towns in {scenes}, schools in {schools}, a red-roof scene and fake chips in {out}")
