"""Imagery sources: XYZ mosaics, geographic rasters warped to UTM, band rules, labels."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from PIL import Image
from shapely.geometry import Point, Polygon, box

from schoolvision.data.chips import ChipConfig, make_chips
from schoolvision.errors import UserError
from schoolvision.io.imagery import list_sources, open_source
from schoolvision.io.rasters import write_geotiff
from schoolvision.io.schools import footprint_mask, read_schools

from fixtures import scene_array, write_scene

LON, LAT = 32.5, 0.3  # UTM zone 36N (EPSG:32636)


def make_xyz(folder, z=17, drop=()):
    """2 x 2 tiles of 256 px at zoom ``z`` with a bright school square across the tile corner."""
    import mercantile

    t0 = mercantile.tile(LON, LAT, z)
    mosaic = scene_array(5, 512, [(226, 226, 60)])  # crosses the border at pixel 256 both ways
    folder.mkdir(parents=True, exist_ok=True)
    for dy in (0, 1):
        for dx in (0, 1):
            if (dx, dy) in drop:
                continue
            tile = mosaic[:, dy * 256 : (dy + 1) * 256, dx * 256 : (dx + 1) * 256].transpose(1, 2, 0)
            Image.fromarray(np.ascontiguousarray(tile)).save(folder / f"{z}-{t0.x + dx}-{t0.y + dy}.png")
    ul = mercantile.xy_bounds(t0)
    res = (ul.right - ul.left) / 256
    school = box(ul.left + 226 * res, ul.top - 286 * res, ul.left + 286 * res, ul.top - 226 * res)
    return gpd.GeoDataFrame({"name": ["xyz school"]}, geometry=[school], crs="EPSG:3857")


def bright_under_footprint(chips, schools_file):
    """Mean pixel value under the school footprint of each school chip (read back from the chip files)."""
    schools = gpd.read_file(schools_file)
    frame = pd.read_csv(chips / "chips.csv", keep_default_na=False)
    means = []
    for rel in frame.loc[frame.label == "school", "path"]:
        with rasterio.open(chips / rel) as ds:
            mask = footprint_mask(schools, ds.crs, ds.transform, (ds.height, ds.width))
            means.append(ds.read()[:, mask].mean())
    return frame, means


def test_xyz_folder_is_one_mosaic_and_chips_cross_tile_borders(tmp_path):
    gdf = make_xyz(tmp_path / "tiles")
    schools = tmp_path / "schools.geojson"
    gdf.to_crs("EPSG:4326").to_file(schools, driver="GeoJSON")
    (src,) = list_sources([tmp_path / "tiles"])
    assert src.kind == "xyz" and len(src.tiles) == 4
    with open_source(src, gsd=1.0) as ds:
        assert ds.crs.to_epsg() == 32636 and abs(ds.transform.a - 1.0) < 1e-9
    out = tmp_path / "chips"
    make_chips([tmp_path / "tiles"], schools, out, ChipConfig(chip_size=64, stride=32, gsd=1.0, block_size=64))
    frame, means = bright_under_footprint(out, out / "schools.geojson")
    assert len(means) >= 1 and min(means) > 200  # the school sits across all four tiles
    assert (frame.crs == "EPSG:32636").all()


def test_xyz_nested_names_and_missing_tiles_are_nodata(tmp_path):
    make_xyz(tmp_path / "flat", drop={(1, 0)})
    nested = tmp_path / "nested"
    for f in (tmp_path / "flat").iterdir():
        z, x, y = f.stem.split("-")
        (nested / z / x).mkdir(parents=True, exist_ok=True)
        f.rename(nested / z / x / f"{y}.png")
    (src,) = list_sources([nested])
    assert len(src.tiles) == 3
    with open_source(src) as ds:  # native: warped to UTM at the tiles' ground resolution
        arr = ds.read()
    empty = np.all(arr == 0, axis=0)
    h, w = empty.shape
    assert empty[: h // 2, w // 2 :].mean() > 0.95  # the missing north-east tile is no-data
    for quarter in (empty[: h // 2, : w // 2], empty[h // 2 :, : w // 2], empty[h // 2 :, w // 2 :]):
        assert quarter.mean() < 0.05  # the three tiles on disk hold their pixels (warp margins aside)


def test_geographic_raster_with_labels_in_another_crs(tmp_path):
    res = 1e-5  # degrees, about 1.1 m
    transform = Affine(res, 0, LON, 0, -res, LAT)
    write_geotiff(tmp_path / "drone.tif", scene_array(3, 300, [(120, 120, 50)]), "EPSG:4326", transform)
    corners = [transform @ (c, r) for r, c in ((120, 120), (120, 170), (170, 170), (170, 120))]
    utm = gpd.GeoDataFrame({"name": ["s"]}, geometry=[Polygon(corners)], crs="EPSG:4326").to_crs("EPSG:32636")
    schools = tmp_path / "schools_utm.geojson"
    utm.to_file(schools, driver="GeoJSON")  # written with its UTM CRS
    out = tmp_path / "chips"
    make_chips([tmp_path / "drone.tif"], schools, out, ChipConfig(chip_size=64, stride=32, gsd=1.0, block_size=64))
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["gsd"] == 1.0 and meta["scenes"]["drone"]["crs"] == "EPSG:32636"
    frame, means = bright_under_footprint(out, schools)
    assert len(means) >= 1 and min(means) > 200
    assert {"school", "not_school"} <= set(frame.label)


def test_projected_raster_resampled_to_target_gsd(tmp_path):
    write_scene(tmp_path / "a.tif", size=200, gsd=0.5)
    (src,) = list_sources([tmp_path / "a.tif"])
    with open_source(src, gsd=1.0) as ds:
        assert ds.crs.to_epsg() == 32636
        assert ds.width == 100 and abs(ds.transform.a - 1.0) < 1e-9
    with open_source(src) as ds:
        assert ds.width == 200


def test_band_rules(tmp_path):
    write_scene(tmp_path / "rgba.tif", count=4, colorinterp=[rasterio.enums.ColorInterp.red,
                rasterio.enums.ColorInterp.green, rasterio.enums.ColorInterp.blue, rasterio.enums.ColorInterp.alpha])
    write_scene(tmp_path / "grey.tif", count=1)
    with rasterio.open(tmp_path / "rgba.tif") as raw:
        rgb = raw.read((1, 2, 3))
    with open_source(list_sources([tmp_path / "rgba.tif"])[0]) as ds:
        assert ds.count == 3 and np.array_equal(ds.read(), rgb)  # alpha dropped, colour bands in order
    with open_source(list_sources([tmp_path / "grey.tif"])[0], bands=(1, 1, 1)) as ds:
        arr = ds.read()
        assert arr.shape[0] == 3 and np.array_equal(arr[0], arr[2])
    with pytest.raises(UserError, match="--bands"), open_source(list_sources([tmp_path / "grey.tif"])[0]):
        pass


def test_labels_points_buffered_and_invalid_polygons_repaired(tmp_path):
    bowtie = Polygon([(LON, LAT), (LON + 0.001, LAT + 0.001), (LON + 0.001, LAT), (LON, LAT + 0.001)])
    gdf = gpd.GeoDataFrame({"name": ["p", "bow"]}, geometry=[Point(LON, LAT), bowtie], crs="EPSG:4326")
    path = tmp_path / "s.geojson"
    gdf.to_file(path, driver="GeoJSON")
    schools = read_schools(path, point_buffer_m=40.0)
    assert schools.geometry.is_valid.all() and set(schools.geom_type) <= {"Polygon", "MultiPolygon"}
    area = schools.to_crs("EPSG:32636").geometry.area
    assert abs(area.iloc[0] - np.pi * 40**2) / (np.pi * 40**2) < 0.01
    square = gpd.GeoSeries([box(LON, LAT, LON + 0.001, LAT + 0.001)], crs="EPSG:4326").to_crs("EPSG:32636").area.iloc[0]
    assert area.iloc[1] == pytest.approx(square / 2, rel=0.01)  # both triangles of the bow tie kept, not one


def test_footprint_mask_matches_drawn_square(tmp_path):
    polys = write_scene(tmp_path / "a.tif", schools_px=((10, 20, 30),))
    gdf = gpd.GeoDataFrame(geometry=polys, crs="EPSG:32636")
    with rasterio.open(tmp_path / "a.tif") as ds:
        mask = footprint_mask(gdf, ds.crs, ds.transform, (ds.height, ds.width))
    assert mask.sum() == 30 * 30 and mask[10:40, 20:50].all()
