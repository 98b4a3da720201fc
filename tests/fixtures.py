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

import contextlib
import importlib.util
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from affine import Affine
from rasterio.transform import from_origin
from shapely.geometry import box

from schoolvision.io.rasters import write_geotiff
from schoolvision.model.backbones import build_model
from schoolvision.model.checkpoint import CheckpointMeta, save_checkpoint
from schoolvision.train.fit import TrainConfig

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


# --- runs: an untrained model on disk, and a tiny training config -------------------------------


def save_untrained_run(path: Path, backbone: str = "efficientnet_lite0", *, pretrained: bool = False, seed: int = 0,
                       image_size: int = 32, chip_size: int | None = 32, gsd: float | None = 1.0, **meta) -> Path:
    """A run folder holding ``best.pt`` of a seeded, untrained model: what a command reads, not what it finds.

    ``pretrained`` loads the offline ImageNet weights (the head stays untrained); ``meta`` goes into
    the checkpoint's :class:`CheckpointMeta` (threshold, temperature, imagery, ...).
    """
    import torch

    torch.manual_seed(seed)
    model = build_model(backbone, pretrained=pretrained)
    save_checkpoint(path / "best.pt", model, CheckpointMeta(backbone, image_size, chip_size, gsd, **meta))
    return path


def tiny_train_config(chips: Path, out: Path, **kw) -> TrainConfig:
    """A CPU training config that runs in seconds on :func:`make_fake_chips` (two epochs, no ImageNet weights)."""
    args = {"chips_dir": chips, "out_dir": out, "epochs": 2, "batch_size": 8, "device": "cpu", "seed": 0,
            "pretrained": False, "n_boot": 50}
    return TrainConfig(**{**args, **kw})


# --- a "foreign" dataset: the demo's towns re-encoded the way users receive imagery and labels -----

FOREIGN_TOWNS = {"drone": (0, 1, 3), "tms": 4, "satellite": 5}  # demo towns (seed 0, 512 px) that hold schools
TMS_ZOOMS = (16, 17)  # gdal2tiles writes every zoom from the coarsest to the finest
FOREIGN_BORDER_PX = 24  # transparent frame of the drone scenes
FOREIGN_NODATA_ROWS = 20  # nodata strip at the top of the satellite scene


@dataclass
class ForeignDataset:
    """What :func:`make_foreign_dataset` wrote; ``schools`` are the real drawn school footprints (EPSG:4326)."""

    root: Path
    drone: Path  # folder of RGBA GeoTIFFs in EPSG:4326 with a transparent frame (white under alpha 0)
    satellite: Path  # one uint16 4-band (blue, green, red, NIR) GeoTIFF in UTM, nodata 0 in its top rows
    tms: Path  # gdal2tiles folder: {z}/{x}/{y}.png with TMS rows, tilemapresource.xml
    schools_csv: Path  # name, latitude, longitude of every school of every town
    labels_gpkg: Path  # layer "buildings" (first: schools and look-alikes, `amenity` column), layer "schools"
    schools: gpd.GeoDataFrame  # name, scene, source, geometry (footprints, EPSG:4326)


def make_foreign_dataset(root: Path, size: int = 512, seed: int = 0) -> ForeignDataset:
    """The demo's towns as a GIS analyst receives imagery: drone RGBA in EPSG:4326, 16-bit satellite, TMS tiles.

    Labels come as a CSV of school points with ``latitude,longitude`` columns and as a GeoPackage whose
    first layer holds every building (schools and look-alikes alike) and whose second holds the schools.
    The schools are the towns' own drawn schools, so chips and scans can be checked against them.
    """
    from schoolvision.demo import generate_town

    root = Path(root)
    towns = {i: generate_town(seed, size, 1.0, index=i) for i in (*FOREIGN_TOWNS["drone"], FOREIGN_TOWNS["tms"],
                                                                 FOREIGN_TOWNS["satellite"])}
    for i in FOREIGN_TOWNS["drone"]:
        _write_rgba_4326(root / "drone" / f"{towns[i].name}.tif", towns[i])
    sat = towns[FOREIGN_TOWNS["satellite"]]
    _write_uint16_bgrn(root / "satellite" / f"{sat.name}.tif", sat)
    _write_tms(root / "tms", towns[FOREIGN_TOWNS["tms"]])
    source = dict.fromkeys(FOREIGN_TOWNS["drone"], "drone")
    source |= {FOREIGN_TOWNS["tms"]: "tms", FOREIGN_TOWNS["satellite"]: "satellite"}
    frames, buildings = [], []
    for i, town in towns.items():
        names = [f"School {town.name} #{k + 1}" for k in range(len(town.schools))]
        frames.append(gpd.GeoDataFrame({"name": names, "scene": town.name, "source": source[i]},
                                       geometry=town.schools, crs=town.crs).to_crs("EPSG:4326"))
        buildings.append(gpd.GeoDataFrame(
            {"name": names + [f"{lm.kind} {town.name}" for lm in town.landmarks],
             "building": ["school"] * len(names) + [lm.kind for lm in town.landmarks],
             "amenity": ["school"] * len(names) + [None] * len(town.landmarks)},
            geometry=[*town.schools, *(lm.polygon for lm in town.landmarks)], crs=town.crs).to_crs("EPSG:4326"))
    schools = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs="EPSG:4326")
    centres = schools.to_crs(schools.estimate_utm_crs()).centroid.to_crs("EPSG:4326")
    csv_path = root / "schools.csv"
    pd.DataFrame({"name": schools["name"], "latitude": centres.y.round(7), "longitude": centres.x.round(7)}).to_csv(
        csv_path, index=False)
    gpkg = root / "labels.gpkg"
    gpd.GeoDataFrame(pd.concat(buildings, ignore_index=True), crs="EPSG:4326").to_file(
        gpkg, layer="buildings", driver="GPKG")
    schools[["name", "geometry"]].to_file(gpkg, layer="schools", driver="GPKG")
    return ForeignDataset(root, root / "drone", root / "satellite" / f"{sat.name}.tif", root / "tms", csv_path, gpkg,
                          schools)


def _bounds(town) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of a town in its CRS."""
    h, w = town.image.shape[1:]
    t = town.transform
    return t.c, t.f + t.e * h, t.c + t.a * w, t.f


def _warp(town, dst_crs: str, transform: Affine, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """The town's RGB on another grid, and where it has data (bool)."""
    from rasterio.warp import Resampling, reproject

    rgb = np.zeros((3, height, width), np.uint8)
    valid = np.zeros((height, width), np.uint8)
    common = {"src_transform": town.transform, "src_crs": town.crs, "dst_transform": transform, "dst_crs": dst_crs}
    reproject(town.image, rgb, resampling=Resampling.bilinear, **common)
    reproject(np.ones(town.image.shape[1:], np.uint8), valid, resampling=Resampling.nearest, **common)
    return rgb, valid.astype(bool)


def _write_rgba_4326(path: Path, town) -> None:
    """A drone orthomosaic export: RGBA in EPSG:4326, alpha 0 (white pixels) outside the town and in a frame."""
    from rasterio.warp import calculate_default_transform

    h, w = town.image.shape[1:]
    bounds = _bounds(town)
    transform, width, height = calculate_default_transform(town.crs, "EPSG:4326", w, h, *bounds)
    rgb, valid = _warp(town, "EPSG:4326", transform, width, height)
    b = FOREIGN_BORDER_PX
    valid[:b], valid[-b:], valid[:, :b], valid[:, -b:] = False, False, False, False
    rgb[:, ~valid] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=4, dtype="uint8",
                       crs="EPSG:4326", transform=transform, photometric="RGB", alpha="YES", compress="deflate",
                       tiled=True, blockxsize=256, blockysize=256) as dst:
        dst.write(np.concatenate([rgb, (valid * 255).astype(np.uint8)[None]]))


def _write_uint16_bgrn(path: Path, town) -> None:
    """A satellite product: uint16 (11-bit range) bands blue, green, red, near-infrared; nodata 0 in the top rows."""
    rgb = town.image.astype(np.uint16)
    dn = np.stack([150 + 7 * rgb[2], 150 + 7 * rgb[1], 150 + 7 * rgb[0], 300 + 5 * rgb[1]]).astype(np.uint16)
    dn[:, :FOREIGN_NODATA_ROWS] = 0
    h, w = rgb.shape[1:]
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=4, dtype="uint16", crs=town.crs,
                       transform=town.transform, nodata=0, compress="deflate", tiled=True, blockxsize=256,
                       blockysize=256) as dst:
        dst.write(dn)


def _write_tms(folder: Path, town) -> None:
    """A ``gdal2tiles`` folder: RGBA PNG tiles at TMS_ZOOMS in TMS row order, and its tilemapresource.xml."""
    import mercantile
    from PIL import Image
    from rasterio.warp import transform_bounds

    west, south, east, north = transform_bounds(town.crs, "EPSG:4326", *_bounds(town))
    for z in TMS_ZOOMS:
        for tile in mercantile.tiles(west, south, east, north, z):
            b = mercantile.xy_bounds(tile)
            transform = Affine((b.right - b.left) / 256, 0, b.left, 0, -(b.top - b.bottom) / 256, b.top)
            rgb, valid = _warp(town, "EPSG:3857", transform, 256, 256)
            rgba = np.concatenate([rgb, (valid * 255).astype(np.uint8)[None]]).transpose(1, 2, 0)
            out = folder / str(z) / str(tile.x) / f"{2**z - 1 - tile.y}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgba, "RGBA").save(out)
    tilesets = "".join(f'      <TileSet href="{z}" units-per-pixel="{2 * 20037508.342789244 / 256 / 2**z:.14f}" '
                       f'order="{z}"/>\n' for z in TMS_ZOOMS)
    (folder / "tilemapresource.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<TileMap version="1.0.0" tilemapservice="http://tms.osgeo.org/1.0.0">\n'
        f"  <Title>{town.name}.tif</Title>\n  <Abstract></Abstract>\n  <SRS>EPSG:3857</SRS>\n"
        # gdal2tiles' own quirk: latitudes in minx/maxx, longitudes in miny/maxy
        f'  <BoundingBox minx="{south:.14f}" miny="{west:.14f}" maxx="{north:.14f}" maxy="{east:.14f}"/>\n'
        '  <Origin x="-20037508.342789244" y="-20037508.342789244"/>\n'
        '  <TileFormat width="256" height="256" mime-type="image/png" extension="png"/>\n'
        f'  <TileSets profile="mercator">\n{tilesets}  </TileSets>\n</TileMap>\n')



# --- school labels in the formats users bring (for the towns of make_towns) --------------------

TOWN_BUILDINGS_PX = ((40, 170, 36), (170, 40, 36))  # (row, col, side): look-alikes > 64 px from every school


def town_buildings(town: int = 0, size: int = 256) -> list:
    """Boxes (UTM) of two non-school buildings in town ``town`` of :func:`make_towns`, away from its schools."""
    x0, y0 = ORIGIN[0] + town * 2 * size, ORIGIN[1]
    return [box(x0 + c, y0 - r - s, x0 + c + s, y0 - r) for r, c, s in TOWN_BUILDINGS_PX]


def write_buildings_gpkg(path: Path, schools_file: Path, town: int = 0) -> Path:
    """A GeoPackage whose FIRST layer ``buildings`` holds only look-alikes, its second layer ``schools`` the schools."""
    schools = gpd.read_file(schools_file)
    buildings = gpd.GeoDataFrame({"name": ["market", "clinic"]}, geometry=town_buildings(town), crs=UTM)
    buildings.to_crs("EPSG:4326").to_file(path, layer="buildings", driver="GPKG")
    schools.to_file(path, layer="schools", driver="GPKG")
    return path


def write_osm_extract(path: Path, schools_file: Path, town: int = 0) -> Path:
    """A GeoJSON like an OSM buildings extract: every building, ``amenity=school`` on the schools only."""
    schools = gpd.read_file(schools_file)
    others = gpd.GeoDataFrame({"name": ["market", "clinic"], "amenity": ["marketplace", None]},
                              geometry=town_buildings(town), crs=UTM).to_crs("EPSG:4326")
    schools = schools.assign(amenity="school")
    every = gpd.GeoDataFrame(pd.concat([others, schools[["name", "amenity", "geometry"]]], ignore_index=True),
                             crs="EPSG:4326")
    every["building"] = "yes"
    every.to_file(path, driver="GeoJSON")
    return path


def write_schools_csv(path: Path, schools_file: Path, lon: str = "longitude", lat: str = "latitude", *,
                      lat_first: bool = True, wkt: str | None = None, extra_rows=(), sep: str = ",") -> Path:
    """The schools of ``schools_file`` as a CSV table, the way ministries and Giga publish them.

    School centres in WGS84 columns ``lon`` and ``lat`` (``lat_first``: latitude column first), or with
    ``wkt`` the footprints as WKT in that column. ``extra_rows`` (dicts of raw text) are appended as they
    are, to write rows with bad coordinates.
    """
    schools = gpd.read_file(schools_file)
    frame = pd.DataFrame({"school_id_govt": [f"G{i:03d}" for i in range(len(schools))], "name": schools["name"]})
    if wkt:
        frame[wkt] = schools.geometry.to_wkt(rounding_precision=9)
    else:
        centres = schools.to_crs(UTM).centroid.to_crs("EPSG:4326")
        coords = {lat: centres.y.round(8), lon: centres.x.round(8)}
        for name in (lat, lon) if lat_first else (lon, lat):
            frame[name] = coords[name]
    frame = pd.concat([frame, pd.DataFrame(list(extra_rows))], ignore_index=True)
    frame.to_csv(path, index=False, sep=sep)
    return path

# --- tiled imagery: GeoTIFF tile exports and web-map (XYZ / TMS) tile folders ------------------


def write_geotiff_tiles(folder: Path, array: np.ndarray, tile: int, gsd: float = 1.0, crs: str = UTM,
                        origin: tuple[float, float] = ORIGIN, name: str = "tile_r{row}_c{col}.tif") -> list[Path]:
    """Cut ``array`` (count, H, W) into adjacent ``tile`` px GeoTIFFs on one grid, like a drone / OAM export.

    Tile (row, col) starts at pixel (row * tile, col * tile) of the array; the transform of the whole
    array is ``gsd`` m/px from ``origin`` (upper-left).
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for row in range(0, array.shape[1] // tile):
        for col in range(0, array.shape[2] // tile):
            part = array[:, row * tile : (row + 1) * tile, col * tile : (col + 1) * tile]
            transform = Affine(gsd, 0, origin[0] + col * tile * gsd, 0, -gsd, origin[1] - row * tile * gsd)
            path = folder / name.format(row=row, col=col)
            write_geotiff(path, np.ascontiguousarray(part), crs, transform, tiled=False, overviews=False)
            paths.append(path)
    return paths


def pixel_boxes(squares, gsd: float = 1.0, origin: tuple[float, float] = ORIGIN) -> list:
    """Shapely boxes (map units) of (row, col, side) pixel squares of an array written from ``origin``."""
    x0, y0 = origin
    return [box(x0 + c * gsd, y0 - (r + s) * gsd, x0 + (c + s) * gsd, y0 - r * gsd) for r, c, s in squares]


WEB_TILE_LONLAT = (35.75, -6.17)  # Dodoma: south of the equator, so a mirrored y axis lands in the north


def write_web_tiles(folder: Path, z: int = 17, n: int = 2, scheme: str = "xyz", pattern: str = "{z}/{x}/{y}",
                    lonlat: tuple[float, float] = WEB_TILE_LONLAT, squares=((226, 226, 60),), seed: int = 5,
                    extra_zooms=()) -> gpd.GeoDataFrame:
    """``n`` x ``n`` PNG tiles of 256 px at zoom ``z`` named by ``pattern``, in ``scheme`` row order.

    ``scheme="tms"`` also writes the ``tilemapresource.xml`` of ``gdal2tiles``. The mosaic holds bright
    ``squares`` (row, col, side in mosaic pixels; the default crosses every tile border) and is returned
    as school footprints (EPSG:3857). ``extra_zooms`` adds the parent tile of the mosaic at those zooms.
    """
    import mercantile
    from PIL import Image

    t0 = mercantile.tile(*lonlat, z)
    mosaic = scene_array(seed, 256 * n, squares)
    folder.mkdir(parents=True, exist_ok=True)

    def save(img: np.ndarray, tz: int, tx: int, ty: int) -> None:
        y = 2**tz - 1 - ty if scheme == "tms" else ty
        out = folder / (pattern.format(z=tz, x=tx, y=y) + ".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0))).save(out)

    for dy in range(n):
        for dx in range(n):
            save(mosaic[:, dy * 256 : (dy + 1) * 256, dx * 256 : (dx + 1) * 256], z, t0.x + dx, t0.y + dy)
    for ez in extra_zooms:
        parent = mercantile.parent(t0, zoom=ez)
        save(mosaic[:, ::2, ::2][:, :256, :256], ez, parent.x, parent.y)
    if scheme == "tms":
        (folder / "tilemapresource.xml").write_text(
            '<?xml version="1.0" encoding="utf-8"?>\n<TileMap version="1.0.0" tilemapservice="http://tms.osgeo.org/1.0.0">'
            "<SRS>EPSG:3857</SRS>"
            '<TileFormat width="256" height="256" mime-type="image/png" extension="png"/>'
            f'<TileSets profile="mercator"><TileSet href="{z}" order="{z}"/></TileSets></TileMap>\n')
    ul = mercantile.xy_bounds(t0)
    res = (ul.right - ul.left) / 256
    schools = [box(ul.left + c * res, ul.top - (r + s) * res, ul.left + (c + s) * res, ul.top - r * res)
               for r, c, s in squares]
    return gpd.GeoDataFrame({"name": [f"web school {i}" for i in range(len(schools))]}, geometry=schools,
                            crs="EPSG:3857")


# --- pixels as users receive them: alpha borders, 16-bit multispectral, no georeference ------------------

HIDDEN = (255, 0, 255)  # magenta under alpha 0: a reader that ignores the mask shows it (a "red roof" too)
GEO_TRANSFORM = Affine(1e-5, 0, 33.0, 0, -1e-5, 1.0)  # EPSG:4326 at lon 33 E, lat 1 N (UTM 36N): ~1.1 m pixels


def grey_red_rgb(h: int, w: int, squares=(), seed: int = 0) -> np.ndarray:
    """(3, h, w) uint8: grey noise (equal bands, 60-120) with red squares (row, col, side) of (230, 20, 20)."""
    grey = np.random.default_rng(seed).integers(60, 120, (h, w), dtype=np.uint8)
    img = np.stack([grey, grey, grey])
    for r, c, s in squares:
        img[:, r : r + s, c : c + s] = np.array([230, 20, 20], np.uint8)[:, None, None]
    return img


def squares_as_boxes(squares, transform: Affine) -> list:
    """Shapely boxes (in the transform's CRS) of pixel squares (row, col, side)."""
    out = []
    for r, c, s in squares:
        (x0, y0), (x1, y1) = transform @ (c, r + s), transform @ (c + s, r)
        out.append(box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    return out


def write_rgba_scene(path: Path, h: int = 256, w: int = 256, *, border: int = 48, squares=((100, 100, 40),),
                     crs: str = "EPSG:4326", transform: Affine = GEO_TRANSFORM, seed: int = 0) -> list:
    """A drone export: RGBA uint8 whose alpha is 0 on a ``border`` px frame, ``HIDDEN`` colour under it.

    Returns the red squares as boxes in ``crs`` (what a schools file would hold).
    """
    img = grey_red_rgb(h, w, squares, seed)
    alpha = np.zeros((h, w), np.uint8)
    alpha[border : h - border, border : w - border] = 255
    img[:, alpha == 0] = np.array(HIDDEN, np.uint8)[:, None]
    path.parent.mkdir(parents=True, exist_ok=True)
    prof = {"driver": "GTiff", "width": w, "height": h, "count": 4, "dtype": "uint8", "crs": crs,
            "transform": transform, "photometric": "RGB", "alpha": "YES"}
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(np.concatenate([img, alpha[None]]))
    return squares_as_boxes(squares, transform)


def write_uint16_scene(path: Path, size: int = 256, *, squares=((100, 100, 48),), crs: str = UTM,
                       gsd: float = 1.0, nodata_rows: int = 0, seed: int = 0) -> list:
    """A satellite product: uint16 bands blue, green, red, near-infrared holding 11-bit data (8 x the 8-bit values).

    RGB is ``--bands 3,2,1``. ``nodata_rows`` top rows are 0, declared nodata. Returns the squares as boxes.
    """
    rgb = grey_red_rgb(size, size, squares, seed).astype(np.uint16) * 8  # at most 1840 of 2047
    dn = np.stack([rgb[2], rgb[1], rgb[0], rgb[1] // 2 + 400])
    if nodata_rows:
        dn[:, :nodata_rows] = 0
    transform = Affine(gsd, 0, ORIGIN[0], 0, -gsd, ORIGIN[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    prof = {"driver": "GTiff", "width": size, "height": size, "count": 4, "dtype": "uint16", "crs": crs,
            "transform": transform, **({"nodata": 0} if nodata_rows else {})}
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(dn)
    return squares_as_boxes(squares, transform)


def write_ungeoreferenced(path: Path, size: int = 128, crs: str | None = None) -> Path:
    """An RGB GeoTIFF without geotransform (pixel coordinates only), with or without a CRS."""
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                           crs=crs) as dst:
            dst.write(grey_red_rgb(size, size))
    return path


def write_schools(path: Path, boxes, crs: str) -> Path:
    """School footprints ``boxes`` (in ``crs``) as a GeoJSON in EPSG:4326."""
    gdf = gpd.GeoDataFrame({"name": [f"school_{i}" for i in range(len(boxes))]}, geometry=list(boxes), crs=crs)
    gdf.to_crs("EPSG:4326").to_file(path, driver="GeoJSON")
    return path


# --- a red-roof town with an imperfect school registry (registry audit, review queue) ---------

REVIEW_SCHOOLS_PX = {"A": (60, 60, 40), "B": (60, 400, 40), "C": (400, 60, 40), "D": (400, 400, 40)}
"""Red-roof schools (row, col, side) of :func:`write_registry_town`: P(school) near 1 under the red-roof model."""
REVIEW_WEAK_PX = ((250, 250, 12), (150, 250, 10))
"""Small red patches: probability peaks below a 0.5 threshold (the review's below-threshold items)."""
REVIEW_DISPLACED_M = 200.0
"""How far north the registry lists school C."""


def write_registry_town(root: Path) -> tuple[Path, Path]:
    """A 512 px red-roof town and its imperfect registry CSV (lon, lat, name): (scene, registry).

    The registry lists A at its place, B 10 m off (within a 50 m match), C ``REVIEW_DISPLACED_M`` east of
    its place (north), misses D, lists a closed school at (row 450, col 250) where no roof is, and one school far
    outside the scene. So: 2 confirmed, 2 not seen, 1 outside; candidates A, B in the registry, C, D new.
    """
    scene = write_red_scene(root / "town.tif", 512, 512, squares=[*REVIEW_SCHOOLS_PX.values(), *REVIEW_WEAK_PX])

    def centre(name: str, dx: float = 0.0, dy: float = 0.0) -> tuple[float, float]:
        r, c, s = REVIEW_SCHOOLS_PX[name]
        return ORIGIN[0] + c + s / 2 + dx, ORIGIN[1] - r - s / 2 + dy

    places = {"A listed": centre("A"), "B listed": centre("B", 10.0), "C listed": centre("C", dy=REVIEW_DISPLACED_M),
              "closed": (ORIGIN[0] + 250, ORIGIN[1] - 450), "far away": (ORIGIN[0] + 5000, ORIGIN[1] - 5000)}
    xy = np.array(list(places.values()))
    pts = gpd.GeoSeries(gpd.points_from_xy(xy[:, 0], xy[:, 1]), crs=UTM).to_crs("EPSG:4326")
    registry = root / "registry.csv"
    pd.DataFrame({"name": list(places), "lon": pts.x.round(8), "lat": pts.y.round(8)}).to_csv(registry, index=False)
    return scene, registry


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "test-fixtures")
    scenes, schools = make_towns(out / "towns")
    write_red_scene(out / "red_scene.tif", 300, 333, squares=[(100, 150, 30)])
    make_fake_chips(out / "fake_chips")
    print(f"towns in {scenes}, schools in {schools}, a red-roof scene and fake chips in {out}")


# --- OpenAerialMap's tile export: a Web Mercator pyramid level, each tile warped on its own to EPSG:4326 ------

OAM_TILE_PX = 256


def write_oam_tiles(scene_tif: Path, out_dir: Path, zoom: int, tile_px: int = OAM_TILE_PX) -> Path:
    """The scene as OpenAerialMap serves it: ``out_dir/OAM-{x}-{y}-{z}.tif``, one GeoTIFF per web-map tile.

    The scene is reprojected to Web Mercator on the ``zoom`` tile grid (``tile_px`` px a tile), cut
    into tiles, and each tile is warped on its own to EPSG:4326 with the grid ``gdalwarp`` would
    choose (``calculate_default_transform``): every row of tiles gets its own pixel size and the
    tiles' edges do not fall on one grid. Tiles are RGBA, alpha 0 where the scene has no data.
    Returns ``out_dir``.
    """
    import mercantile
    from rasterio.warp import Resampling, calculate_default_transform, reproject, transform_bounds

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with rasterio.open(scene_tif) as src:
        image, src_crs, src_transform = src.read((1, 2, 3)), src.crs, src.transform
        west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    for tile in mercantile.tiles(west, south, east, north, zoom):
        b = mercantile.xy_bounds(tile)
        merc = Affine((b.right - b.left) / tile_px, 0, b.left, 0, -(b.top - b.bottom) / tile_px, b.top)
        rgba = np.zeros((4, tile_px, tile_px), np.uint8)
        common = {"src_transform": src_transform, "src_crs": src_crs, "dst_transform": merc, "dst_crs": "EPSG:3857"}
        reproject(image, rgba[:3], resampling=Resampling.bilinear, **common)
        reproject(np.full(image.shape[1:], 255, np.uint8), rgba[3], resampling=Resampling.nearest, **common)
        transform, width, height = calculate_default_transform("EPSG:3857", "EPSG:4326", tile_px, tile_px,
                                                               b.left, b.bottom, b.right, b.top)
        out = np.zeros((4, height, width), np.uint8)
        for band in range(4):
            reproject(rgba[band], out[band], src_transform=merc, src_crs="EPSG:3857", dst_transform=transform,
                      dst_crs="EPSG:4326", resampling=Resampling.bilinear if band < 3 else Resampling.nearest)
        with rasterio.open(out_dir / f"OAM-{tile.x}-{tile.y}-{tile.z}.tif", "w", driver="GTiff", width=width,
                           height=height, count=4, dtype="uint8", crs="EPSG:4326", transform=transform,
                           photometric="RGB", alpha="YES") as dst:
            dst.write(out)
    return out_dir


# --- a small foreign area: one demo town as a user's first try delivers it ----------------------------------

SMALL_AREA_PX = 896  # 0.8 km2 at 1 m; seed 0 draws 5 schools there


@dataclass
class SmallArea:
    """One demo town re-delivered as a user's own data: a GeoTIFF and a school CSV (latitude, longitude)."""

    imagery: Path  # the scene GeoTIFF (``write_oam_tiles`` turns it into OpenAerialMap's tile form)
    schools_csv: Path
    n_schools: int


def make_small_area(root: Path, size: int = SMALL_AREA_PX, seed: int = 0, oam_zoom: int | None = None) -> SmallArea:
    """A small foreign area under ``root``: ``imagery/area.tif`` (or, with ``oam_zoom``, the folder ``imagery`` of
    OpenAerialMap tiles at that zoom, :func:`write_oam_tiles`) and ``schools.csv``; the demo folder is removed."""
    from schoolvision.demo import make_demo

    root = Path(root)
    demo = make_demo(root / "drawn", towns=1, seed=seed, size=size)
    if oam_zoom is not None:
        imagery = write_oam_tiles(demo.scenes[0], root / "imagery", oam_zoom)
    else:
        (root / "imagery").mkdir(parents=True)
        imagery = Path(shutil.copy(demo.scenes[0], root / "imagery" / "area.tif"))
    schools = write_schools_csv(root / "schools.csv", root / "drawn" / "schools.geojson")
    shutil.rmtree(root / "drawn")
    return SmallArea(imagery, schools, sum(demo.n_schools.values()))


# --- a page in headless Chromium (the review page tests) -------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _browser_check():
    """``benchmarks/browser_check.py`` as a module: its Chromium launcher and DevTools client."""
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("browser_check", root / "benchmarks" / "browser_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class PageTab:
    """One tab on a page: evaluate JavaScript, press keys, reload, wait for a download."""

    tools: Any
    downloads: Path

    def value(self, expression: str):
        return self.tools.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def text(self, element_id: str) -> str:
        return self.value(f"document.getElementById('{element_id}').innerText")

    def load(self, action: str, **params) -> None:
        self.tools.events.clear()
        self.tools.call(action, **params)
        assert self.tools.wait_for("Page.loadEventFired", 30)

    def press(self, key: str) -> None:
        self.tools.call("Input.dispatchKeyEvent", type="keyDown", key=key, text={"Backspace": ""}.get(key, key))
        self.tools.call("Input.dispatchKeyEvent", type="keyUp", key=key)

    def downloaded(self, name: str, timeout: float = 20.0) -> Path:
        path = self.downloads / name
        deadline = time.monotonic() + timeout
        while not path.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert path.is_file(), list(self.downloads.iterdir())
        return path


@contextlib.contextmanager
def page_in_chromium(page: Path, downloads: Path) -> Iterator[PageTab]:
    """``page`` open in a fresh headless Chromium, downloads to ``downloads``; no console error by the end."""
    bc = _browser_check()
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="review-check-") as profile:
        proc, port = bc.launch(CHROMIUM, Path(profile), 30)
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT")
            target = json.loads(urllib.request.urlopen(request, timeout=30).read())
            tools = bc.DevTools(target["webSocketDebuggerUrl"], 30)
            for domain in ("Page", "Runtime", "Log"):
                tools.call(f"{domain}.enable")
            tools.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
            tab = PageTab(tools, downloads)
            tab.load("Page.navigate", url=page.as_uri())
            yield tab
            assert tools.errors() == []
            tools.ws.close()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except Exception:
                proc.kill()
