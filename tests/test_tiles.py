"""Tiled imagery: GeoTIFF tile exports as one mosaic scene, XYZ vs TMS, tile-name patterns, zoom levels.

Tiles are written by ``fixtures.write_geotiff_tiles`` (adjacent GeoTIFFs on one UTM grid, like a drone or
OpenAerialMap export) and ``fixtures.write_web_tiles`` (PNG tiles named by a pattern, XYZ or TMS rows).
"""

from __future__ import annotations

import json
import sys
import warnings

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import torch

from schoolvision.cli import main
from schoolvision.data.chips import ChipConfig, make_chips, small_chip_note
from schoolvision.errors import UserError
from schoolvision.io.imagery import list_sources, open_source, source_info
from schoolvision.io.schools import footprint_mask
from schoolvision.io.tiles import TileOptions
from schoolvision.model.checkpoint import CheckpointMeta
from schoolvision.scan.runner import ScanConfig, run_scan

from fixtures import ORIGIN, UTM, pixel_boxes, scene_array, write_geotiff_tiles, write_web_tiles

# 3 x 3 tiles of 128 px; blocks of 192 px put one school in each of the 4 split blocks; the first school
# crosses the tile borders at pixel 128 both ways
SCHOOLS_PX = ((110, 110, 40), (40, 250, 40), (250, 40, 40), (250, 250, 40))
TILE = 128
X0, Y0 = ORIGIN


def write_export(tmp_path, gsd=1.0, squares=SCHOOLS_PX, n=3, tile=TILE):
    """A folder of n x n adjacent GeoTIFF tiles and its schools file (EPSG:4326)."""
    folder = tmp_path / "ortho"
    write_geotiff_tiles(folder, scene_array(3, n * tile, squares), tile, gsd=gsd)
    schools = tmp_path / "schools.geojson"
    gdf = gpd.GeoDataFrame({"name": [f"school {i}" for i in range(len(squares))]},
                           geometry=pixel_boxes(squares, gsd), crs=UTM)
    gdf.to_crs("EPSG:4326").to_file(schools, driver="GeoJSON")
    return folder, schools


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_adjacent_geotiff_tiles_are_one_mosaic_with_a_school_across_the_border(tmp_path):
    folder, schools = write_export(tmp_path)
    (src,) = list_sources([folder])
    assert (src.name, src.kind, len(src.parts)) == ("ortho", "mosaic", 9)
    with open_source(src) as ds:
        assert (ds.width, ds.height, ds.crs.to_epsg()) == (3 * TILE, 3 * TILE, 32636)
        assert np.array_equal(ds.read(), scene_array(3, 3 * TILE, SCHOOLS_PX))  # the tiles, pixel for pixel
    out = tmp_path / "chips"
    make_chips([folder], schools, out, ChipConfig(chip_size=64, stride=32, block_size=192))
    meta = json.loads((out / "dataset.json").read_text())
    assert list(meta["scenes"]) == ["ortho"] and meta["scenes"]["ortho"]["tiles"] == 9
    assert meta["scenes"]["ortho"]["split"] == "blocks"  # one scene: split by blocks of the mosaic
    frame = pd.read_csv(out / "chips.csv", keep_default_na=False)
    school = frame[frame.label == "school"]
    assert set(school.split) == {"train", "val", "test"}  # every split holds a school
    assert "school 0" in set(school.school_name)  # the school across the tile corner has its chip
    with rasterio.open(out / school[school.school_name == "school 0"].path.iloc[0]) as ds:
        gdf = gpd.read_file(schools).iloc[[0]]
        mask = footprint_mask(gdf, ds.crs, ds.transform, (ds.height, ds.width))
        assert mask.sum() > 0.5 * 40 * 40 and ds.read()[:, mask].mean() > 200


def test_separate_scenes_and_the_mosaic_rule(tmp_path):
    folder, _ = write_export(tmp_path)
    sources = list_sources([folder], TileOptions(separate_scenes=True))
    assert [s.kind for s in sources] == ["raster"] * 9 and sources[0].name == "tile_r0_c0"
    # not a tiling: a gap, pixel sizes 8 times apart, another CRS
    arr = scene_array(0, 64, [])
    write_geotiff_tiles(tmp_path / "gap", arr, 32, origin=(X0 + 0.0, Y0), name="a.tif")
    write_geotiff_tiles(tmp_path / "gap", arr, 32, origin=(X0 + 100.0, Y0), name="b.tif")
    write_geotiff_tiles(tmp_path / "far", arr, 32, origin=(X0 + 0.0, Y0), name="a.tif")
    write_geotiff_tiles(tmp_path / "far", arr, 32, gsd=8.0, origin=(X0 + 32.0, Y0), name="b.tif")
    write_geotiff_tiles(tmp_path / "crs", arr, 32, origin=(X0 + 0.0, Y0), name="a.tif")
    write_geotiff_tiles(tmp_path / "crs", arr, 32, origin=(X0 + 32.0, Y0), name="b.tif", crs="EPSG:32637")
    for case in ("gap", "far", "crs"):
        assert [s.kind for s in list_sources([tmp_path / case])] == ["raster", "raster"], case
    # a tiling on differing grids: another pixel size, a grid shifted by half a pixel; one mosaic at the finest
    one = arr[:, :32, :32]
    write_geotiff_tiles(tmp_path / "res", one, 32, origin=(X0 + 0.0, Y0), name="a.tif")
    write_geotiff_tiles(tmp_path / "res", one, 32, gsd=0.5, origin=(X0 + 32.0, Y0), name="b.tif")
    write_geotiff_tiles(tmp_path / "shift", one, 32, origin=(X0 + 0.0, Y0), name="a.tif")
    write_geotiff_tiles(tmp_path / "shift", one, 32, origin=(X0 + 32.5, Y0), name="b.tif")
    for case, res, width in (("res", 0.5, 96), ("shift", 1.0, 64)):
        (src,) = list_sources([tmp_path / case])
        assert (src.kind, len(src.parts)) == ("mosaic", 2), case
        with open_source(src) as ds:
            assert (ds.transform.a, ds.transform.c, ds.width, ds.transform.f) == (res, X0, width, Y0), case
            left = ds.read(window=rasterio.windows.Window(0, 0, round(32 / res), round(32 / res)))
        k = round(1 / res)  # the west tile, resampled to the finest pixel, keeps its pixels
        assert np.abs(left.reshape(3, 32, k, 32, k).mean((2, 4)) - one).mean() < 4, case  # noise is 0-20
    # two mosaics in one folder: named after the folder, numbered
    write_geotiff_tiles(tmp_path / "two", arr, 32, origin=(X0 + 0.0, Y0), name="a{row}{col}.tif")
    write_geotiff_tiles(tmp_path / "two", arr, 32, origin=(X0 + 1000.0, Y0), name="b{row}{col}.tif")
    write_geotiff_tiles(tmp_path / "two", arr[:, :32, :32], 32, origin=(X0 + 5000.0, Y0), name="c.tif")
    two = list_sources([tmp_path / "two"])
    assert [(s.name, s.kind, len(s.parts)) for s in two] == [
        ("c", "raster", 0), ("two_mosaic1", "mosaic", 4), ("two_mosaic2", "mosaic", 4)]


def test_rgba_tiles_keep_their_alpha_in_the_mosaic(tmp_path):
    arr = scene_array(2, 128, [])
    alpha = np.full((1, 128, 128), 255, np.uint8)
    alpha[:, :, :16] = 0  # a transparent strip on the west edge
    write_geotiff_tiles(tmp_path / "rgba", np.concatenate([arr, alpha]), 64)
    for path in (tmp_path / "rgba").iterdir():
        with rasterio.open(path, "r+") as ds:
            ds.colorinterp = [rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green,
                              rasterio.enums.ColorInterp.blue, rasterio.enums.ColorInterp.alpha]
    (src,) = list_sources([tmp_path / "rgba"])
    with open_source(src) as ds:
        assert ds.count == 3 and np.array_equal(ds.read(), arr)
        valid = ds.dataset_mask() > 0
        assert not valid[:, :16].any() and valid[:, 16:].all()


class RedModel(torch.nn.Module):
    """Logit of 'school' = 40 * (share of bright pixels - 0.05): the bright squares are schools."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)
        self.target_layer = self.conv
        self.target_layer_name = "conv"

    def forward(self, x):
        bright = (x.mean(1) > 0.8).float().mean((1, 2))
        s = 40 * (bright - 0.05) + self.conv(x).mean((1, 2, 3)) * 0
        return torch.stack([torch.zeros_like(s), s], 1)


def test_scan_writes_one_probability_raster_over_the_mosaic(tmp_path):
    folder, _ = write_export(tmp_path)
    meta = CheckpointMeta(backbone="efficientnet_lite0", image_size=64, chip_size=64, gsd=1.0, threshold=0.5)
    common = {"run": tmp_path, "imagery": [folder], "cam_peaks": False, "make_map": False, "progress": False,
              "runtime": "torch"}
    summary = run_scan(ScanConfig(out_dir=tmp_path / "scan", **common), model=RedModel(), meta=meta)
    assert [s.scene for s in summary.scenes] == ["ortho"] and not summary.failed
    rasters = sorted((tmp_path / "scan").glob("*_probability.tif"))
    assert [p.name for p in rasters] == ["ortho_probability.tif"]
    with rasterio.open(rasters[0]) as ds:
        assert (ds.width, ds.height) == (3 * TILE, 3 * TILE)
        prob = ds.read(1)
    assert prob[125:135, 125:135].mean() > 0.9 and prob[5:20, 5:20].mean() < 0.2  # the school across the corner
    summary = run_scan(ScanConfig(out_dir=tmp_path / "apart", separate_scenes=True, **common), model=RedModel(),
                       meta=meta)
    assert len(summary.scenes) == 9 and len(list((tmp_path / "apart").glob("*_probability.tif"))) == 9


def test_tms_folder_lands_where_its_xyz_twin_does(tmp_path):
    write_web_tiles(tmp_path / "xyz", scheme="xyz")
    write_web_tiles(tmp_path / "tms", scheme="tms")
    (xyz,) = list_sources([tmp_path / "xyz"])
    (tms,) = list_sources([tmp_path / "tms"])
    assert [t[:3] for t in tms.tiles] == [t[:3] for t in xyz.tiles]
    west, south, east, north = source_info(tms)["bounds_4326"]
    assert np.allclose((west, south, east, north), source_info(xyz)["bounds_4326"])
    assert north < 0  # Dodoma is south of the equator
    with open_source(xyz, gsd=1.0) as a, open_source(tms, gsd=1.0) as b:
        assert np.array_equal(a.read(), b.read())
    mirrored = source_info(list_sources([tmp_path / "tms"], TileOptions(scheme="xyz"))[0])["bounds_4326"]
    assert mirrored[1] > 0  # --tile-scheme xyz overrides the tilemapresource.xml (here: wrongly)
    (tmp_path / "tms" / "tilemapresource.xml").write_text('<TileMap><TileSets profile="geodetic"/></TileMap>')
    with pytest.raises(UserError, match="geodetic"):
        list_sources([tmp_path / "tms"])


def test_tile_patterns(tmp_path):
    write_web_tiles(tmp_path / "ref", pattern="{z}-{x}-{y}")
    write_web_tiles(tmp_path / "oam", pattern="OAM-{x}-{y}-{z}")
    (ref,) = list_sources([tmp_path / "ref"])
    (oam,) = list_sources([tmp_path / "oam"], TileOptions(pattern="OAM-{x}-{y}-{z}"))
    assert [t[:3] for t in oam.tiles] == [t[:3] for t in ref.tiles]
    with pytest.raises(UserError, match="--tile-pattern") as info:
        list_sources([tmp_path / "oam"])
    assert "OAM-" in str(info.value)  # names the file
    with pytest.raises(UserError, match="once each"):
        TileOptions(pattern="{z}-{x}")


@pytest.mark.parametrize("pattern", ["{x}-{y}-{z}", "{z}-{y}"])
def test_bad_tile_names_are_one_line(tmp_path, capsys, pattern):
    folder = tmp_path / "tiles"
    if pattern == "{x}-{y}-{z}":
        write_web_tiles(folder, pattern=pattern)  # read as {z}-{x}-{y}: zoom 1238424 or so
        extra = []
    else:
        write_web_tiles(folder)
        extra = ["--tile-pattern", pattern]
    schools = tmp_path / "s.geojson"
    write_web_tiles(tmp_path / "unused").to_crs("EPSG:4326").to_file(schools, driver="GeoJSON")
    out = tmp_path / "out"
    rc = main(["chips", "--imagery", str(folder), "--schools", str(schools), "--out", str(out), *extra])
    line = one_line(capsys.readouterr().err)
    assert rc == 2 and not out.exists()
    if extra:
        assert "--tile-pattern" in line and "once each" in line
    else:
        assert "zoom" in line and str(folder) in line and "--tile-pattern" in line
    rc = main(["chips", "--imagery", str(folder), "--schools", str(schools), "--out", str(out), "--zoom", "30"])
    assert rc == 2 and "--zoom" in one_line(capsys.readouterr().err)


def test_mixed_zooms_read_the_finest_with_a_warning(tmp_path):
    write_web_tiles(tmp_path / "pyramid", pattern="{z}/{x}/{y}", scheme="tms", extra_zooms=(15, 16))
    with pytest.warns(UserWarning, match=r"zoom 15, 16 and 17; reading the finest, 17"):
        (src,) = list_sources([tmp_path / "pyramid"])
    assert {t[0] for t in src.tiles} == {17} and len(src.tiles) == 4
    (src,) = list_sources([tmp_path / "pyramid"], TileOptions(zoom=16))
    assert [t[0] for t in src.tiles] == [16]
    with pytest.raises(UserError, match="no tile at that zoom"):
        list_sources([tmp_path / "pyramid"], TileOptions(zoom=14))


def test_small_chips_on_drone_imagery_get_one_warning_line(tmp_path, capsys):
    assert small_chip_note(128, 1.0) is None and small_chip_note(64, 1.0) is None
    note = small_chip_note(128, 0.13)
    assert "cover 17 m" in note and "--gsd 1 " in note
    folder, schools = write_export(tmp_path, gsd=0.13, squares=((300, 300, 300),), n=2, tile=512)
    out = tmp_path / "chips"
    with warnings.catch_warnings():  # print warnings as outside pytest, through the CLI's format
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(message, category, filename, lineno, line))
        rc = main(["chips", "--imagery", str(folder), "--schools", str(schools), "--out", str(out), "--stride", "256"])
    err = capsys.readouterr().err
    assert rc == 0, err
    warned = [line for line in err.splitlines() if "cover" in line]
    assert warned == [f"schoolvision chips: warning: {note}"]
    with pytest.warns(UserWarning, match="--gsd"):
        make_chips([folder], schools, tmp_path / "lib", ChipConfig(stride=256))


def test_oam_tile_export_is_one_scene_whose_chips_match_the_town(tmp_path):
    """OpenAerialMap's form: Web Mercator tiles, each warped on its own to EPSG:4326 (every row its own pixel size)."""
    from schoolvision.demo import generate_town
    from schoolvision.io.rasters import write_geotiff

    from fixtures import write_oam_tiles

    town = generate_town(0, 512, 1.0, index=0)
    write_geotiff(tmp_path / "original" / "town.tif", town.image, town.crs, town.transform)
    oam = write_oam_tiles(tmp_path / "original" / "town.tif", tmp_path / "oam" / "town", zoom=18)  # scene "town" too
    tiles = sorted(oam.glob("OAM-*-*-18.tif"))
    sizes = set()
    for path in tiles:
        with rasterio.open(path) as ds:
            sizes.add(round(ds.transform.e, 12))
    assert len(tiles) >= 9 and len(sizes) >= 3  # rows of tiles with their own pixel sizes: not one grid
    (src,) = list_sources([oam])
    finest = 2 * 20037508.342789244 / 256 / 2**18 * np.cos(np.radians(source_info(src)["bounds_4326"][1]))
    assert source_info(src)["native_gsd"] == pytest.approx(finest, rel=0.01)  # the finest tile pixel, in metres
    with open_source(src) as ds:  # read at it, in the local UTM zone, over the town (the margins trimmed)
        assert ds.crs == town.crs and ds.transform.a == source_info(src)["native_gsd"]
        assert ds.width * ds.transform.a == pytest.approx(512, abs=1.0)
    schools = tmp_path / "schools.geojson"
    gpd.GeoDataFrame({"name": [f"s{i}" for i in range(len(town.schools))]}, geometry=town.schools,
                     crs=town.crs).to_crs("EPSG:4326").to_file(schools, driver="GeoJSON")
    config = ChipConfig(chip_size=64, stride=32, gsd=1.0, block_size=200, negative_ratio=None)
    made = {}
    for name, imagery in (("oam", oam), ("original", tmp_path / "original" / "town.tif")):
        summary = make_chips([imagery], schools, tmp_path / f"chips_{name}", config)
        meta = json.loads((tmp_path / f"chips_{name}" / "dataset.json").read_text())
        made[name] = (summary, meta, pd.read_csv(tmp_path / f"chips_{name}" / "chips.csv", keep_default_na=False))
    summary, meta, oam_chips = made["oam"]
    assert list(meta["scenes"]) == ["town"] and meta["scenes"]["town"]["files"] == len(tiles)
    assert meta["scenes"]["town"]["crs"] == town.crs  # read in the local UTM zone
    assert f"imagery: {len(tiles)} files formed 1 scene: town 512 x 512 m" in str(summary)
    _, _, original = made["original"]
    assert len(oam_chips) == len(original) > 100
    pairs = oam_chips.merge(original, on=["split", "label"], suffixes=("", "_town"))
    near = pairs[(abs(pairs.minx - pairs.minx_town) <= 1.0) & (abs(pairs.maxy - pairs.maxy_town) <= 1.0)]
    assert near.chip_id.nunique() == len(oam_chips) and near.chip_id_town.nunique() == len(original)
    assert set(original[original.label == "school"].split) == set(oam_chips[oam_chips.label == "school"].split)
    # the same pixels, within resampling: Web Mercator and EPSG:4326 and back
    school = original[original.label == "school"].iloc[0]
    twin = near[near.chip_id_town == school.chip_id].iloc[0]
    with rasterio.open(tmp_path / "chips_original" / school.path) as a, rasterio.open(
            tmp_path / "chips_oam" / twin.path) as b:
        assert np.abs(a.read().astype(int) - b.read()).mean() < 8

    meta_run = CheckpointMeta(backbone="efficientnet_lite0", image_size=64, chip_size=64, gsd=1.0, threshold=0.5)
    scan = run_scan(ScanConfig(run=tmp_path, imagery=[oam], out_dir=tmp_path / "scan", cam_peaks=False,
                               make_map=False, progress=False, runtime="torch"), model=RedModel(), meta=meta_run)
    assert [s.scene for s in scan.scenes] == ["town"] and not scan.failed
    assert scan.scenes[0].files == len(tiles) and scan.scenes[0].size_m == pytest.approx((512, 512), abs=1)
    assert [p.name for p in (tmp_path / "scan").glob("*_probability.tif")] == ["town_probability.tif"]
