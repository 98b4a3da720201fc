"""Every bad input to `schoolvision chips`: exit code 2, one line naming the file, no traceback, nothing written."""

from __future__ import annotations

import json
import re

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from affine import Affine
from PIL import Image
from rasterio.enums import ColorInterp

from schoolvision.cli import main
from schoolvision.io.rasters import write_geotiff

from fixtures import scene_array, write_scene

SMALL = ["--chip-size", "64", "--stride", "32"]


def run_chips(tmp_path, capsys, imagery, schools, *extra, out=None):
    out = out or tmp_path / "out"
    rc = main(["chips", "--imagery", *map(str, imagery), "--schools", str(schools), "--out", str(out), *SMALL, *extra])
    err = capsys.readouterr().err
    return rc, err, out


def assert_refused(rc, err, out, name, existing=False):
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(name) in lines[0], lines[0]
    assert existing or not out.exists()  # nothing new or half-written
    hidden = [p.name for p in out.parent.iterdir() if p.name.startswith(".")]
    assert not hidden, f"temporary files left behind: {hidden}"  # atomic writes stage under a hidden name


def test_not_a_raster(tmp_path, capsys, one_town):
    bad = tmp_path / "scene.tif"
    bad.write_text("this is not an image")
    assert_refused(*run_chips(tmp_path, capsys, [bad], one_town[1]), bad)


def test_truncated_raster(tmp_path, capsys, one_town):
    good = one_town[0] / "town_00.tif"
    bad = tmp_path / "truncated.tif"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert_refused(*run_chips(tmp_path, capsys, [bad], one_town[1]), bad)


def test_no_crs_refused_then_crs_option_works(tmp_path, capsys, one_town):
    bad = tmp_path / "nocrs.tif"
    write_geotiff(bad, scene_array(0, 256, [(40, 40, 48), (150, 160, 40)]), None, Affine(1, 0, 500_000, 0, -1, 100_000))
    rc, err, out = run_chips(tmp_path, capsys, [bad], one_town[1])
    assert_refused(rc, err, out, bad)
    assert "--crs" in err
    rc, err, out = run_chips(tmp_path, capsys, [bad], one_town[1], "--crs", "EPSG:32636")
    assert rc == 0, err
    frame = pd.read_csv(out / "chips.csv")
    assert len(frame) > 0 and (frame.crs == "EPSG:32636").all()


@pytest.mark.parametrize("count", [1, 2, 4])
def test_non_rgb_band_counts(tmp_path, capsys, one_town, count):
    bad = tmp_path / f"bands{count}.tif"
    undefined = [ColorInterp.gray] + [ColorInterp.undefined] * (count - 1)  # 4 bands: multispectral, not RGBA
    write_scene(bad, count=count, schools_px=((40, 40, 48), (150, 160, 40)), colorinterp=undefined)
    rc, err, out = run_chips(tmp_path, capsys, [bad], one_town[1])
    assert_refused(rc, err, out, bad)
    assert "--bands" in err
    fix = {1: "1,1,1", 2: "1,2,2", 4: "3,2,1"}[count]
    rc, err, out = run_chips(tmp_path, capsys, [bad], one_town[1], "--bands", fix)
    assert rc == 0 and len(pd.read_csv(out / "chips.csv")) > 0


def test_black_chips_skipped_and_counted(tmp_path, capsys, one_town):
    arr = scene_array(0, 256, [(40, 40, 48), (150, 160, 40)])
    arr[:, :, 160:] = 0  # a black (no-data) strip, as at the edge of a real scene
    write_geotiff(tmp_path / "black.tif", arr, "EPSG:32636", Affine(1, 0, 500_000, 0, -1, 100_000))
    rc, err, out = run_chips(tmp_path, capsys, [tmp_path / "black.tif"], one_town[1], "--negative-ratio", "0")
    assert rc == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["skipped"]["nodata_or_black"] > 0
    frame = pd.read_csv(out / "chips.csv")
    assert len(frame) > 0 and (frame.col_off + 64 <= 160 + 0.1 * 64).all()  # chips left of the strip only


def test_empty_schools(tmp_path, capsys, one_town):
    bad = tmp_path / "empty.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": []}')
    assert_refused(*run_chips(tmp_path, capsys, [one_town[0]], bad), bad)


def test_invalid_schools(tmp_path, capsys, one_town):
    bad = tmp_path / "invalid.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [')
    assert_refused(*run_chips(tmp_path, capsys, [one_town[0]], bad), bad)


def test_line_schools_refused(tmp_path, capsys, one_town):
    from shapely.geometry import LineString

    bad = tmp_path / "lines.geojson"
    gpd.GeoDataFrame(geometry=[LineString([(32, 0), (32.1, 0.1)])], crs="EPSG:4326").to_file(bad, driver="GeoJSON")
    assert_refused(*run_chips(tmp_path, capsys, [one_town[0]], bad), bad)


def test_schools_outside_imagery_show_both_extents(tmp_path, capsys, one_town):
    from shapely.geometry import box

    bad = tmp_path / "far.geojson"
    gpd.GeoDataFrame(geometry=[box(10.0, 50.0, 10.001, 50.001)], crs="EPSG:4326").to_file(bad, driver="GeoJSON")
    rc, err, out = run_chips(tmp_path, capsys, [one_town[0]], bad)
    assert_refused(rc, err, out, bad)
    assert "10.00000, 50.00000" in err and "33.00000, 0.90" in err  # schools' and imagery's lon/lat extents


def test_xyz_names_that_do_not_parse(tmp_path, capsys, one_town):
    folder = tmp_path / "tiles"
    folder.mkdir()
    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(folder / "17-10-10.png")
    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(folder / "tile_a.png")
    assert_refused(*run_chips(tmp_path, capsys, [folder], one_town[1]), folder / "tile_a.png")


def test_missing_imagery(tmp_path, capsys, one_town):
    assert_refused(*run_chips(tmp_path, capsys, [tmp_path / "nope.tif"], one_town[1]), tmp_path / "nope.tif")


def test_out_folder_with_different_dataset_needs_overwrite(tmp_path, capsys, one_town):
    rc, _, out = run_chips(tmp_path, capsys, [one_town[0]], one_town[1])
    assert rc == 0
    before = (out / "chips.csv").read_bytes()
    rc, err, out = run_chips(tmp_path, capsys, [one_town[0]], one_town[1], "--seed", "1", "--negative-ratio", "1")
    assert_refused(rc, err, out, out, existing=True)
    assert (out / "chips.csv").read_bytes() == before
    rc, err, out = run_chips(tmp_path, capsys, [one_town[0]], one_town[1], "--seed", "1", "--negative-ratio", "1",
                             "--overwrite")
    assert rc == 0 and (out / "chips.csv").read_bytes() != before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    rc, err, _ = run_chips(tmp_path, capsys, [one_town[0]], one_town[1], out=other)
    assert_refused(rc, err, other, other, existing=True)
    assert (other / "notes.txt").read_text() == "mine"


def test_16_bit_imagery_is_scaled_not_refused(tmp_path, capsys, one_town):
    sixteen = tmp_path / "sixteen.tif"  # more cases in test_imagery_pixels.py
    write_geotiff(sixteen, scene_array(0, 256, []).astype("uint16") * 100, "EPSG:32636",
                  Affine(1, 0, 500_000, 0, -1, 100_000))
    rc, err, out = run_chips(tmp_path, capsys, [sixteen], one_town[1])
    assert rc == 0, err
    assert json.loads((out / "dataset.json").read_text())["scenes"]["sixteen"]["pixels"]["rule"] == "percentile"


@pytest.mark.parametrize("scale", ["5", "a,b", "10,5", "0,nan", "1,2,3"])
def test_bad_scale_is_one_line(tmp_path, capsys, one_town, scale):
    rc, err, out = run_chips(tmp_path, capsys, [one_town[0]], one_town[1], f"--scale={scale}")
    assert rc == 2 and "--scale" in err and len(err.strip().splitlines()) == 1 and not out.exists(), err


def test_a_failed_command_leaves_no_out_folder_behind(tmp_path, capsys, one_town):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)  # a truncated checkpoint
    rc = main(["scan", "--run", str(run), "--imagery", str(one_town[0]), "--out", str(tmp_path / "scan"),
               "--device", "cpu", "--no-map"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "scan").exists()
    # a folder that was there before stays, and so does a file the failed run did not write
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    assert main(["scan", "--run", str(run), "--imagery", str(one_town[0]), "--out", str(tmp_path / "kept"),
                 "--device", "cpu", "--no-map", "--overwrite"]) == 2
    assert (tmp_path / "kept" / "notes.txt").read_text() == "mine"


def test_no_chip_at_all_is_an_error_naming_each_scene(tmp_path, capsys, one_town):
    tiny = tmp_path / "tiny.tif"
    write_scene(tiny, size=48, schools_px=((10, 10, 20),))  # over the first school of one_town
    rc, err, out = run_chips(tmp_path, capsys, [tiny], one_town[1])
    assert_refused(rc, err, out, tiny.stem)
    assert err.strip().endswith("error: no chip cut from the imagery: tiny: scene of 48 x 48 m gave no chip: "
                                "smaller than one 64 px chip; use a smaller --chip-size or --gsd"), err


def test_check_ranges_names_the_option_and_refuses_what_its_rule_refuses():
    from dataclasses import dataclass

    from schoolvision.errors import UserError, check_ranges

    @dataclass
    class Options:
        stride: int = 8
        threshold: float = 0.5
        min_area_m2: float = 0.0
        variance: float = 1.0
        seeds: int | None = None  # None passes: it means "the default"

    rules = ("--stride >= 1", "--threshold in (0, 1)", "--min-area (min_area_m2) >= 0", "--variance in (0, 1]",
             "seeds >= 0")
    check_ranges(Options(), *rules)
    for bad, message in ((Options(stride=0), "--stride must be >= 1, got 0"),
                         (Options(threshold=1.0), "--threshold must be in (0, 1), got 1"),
                         (Options(min_area_m2=-1), "--min-area must be >= 0, got -1"),
                         (Options(variance=0.0), "--variance must be in (0, 1], got 0")):
        with pytest.raises(UserError, match=re.escape(message)):
            check_ranges(bad, *rules)
    with pytest.raises(ValueError, match="not a range rule"):
        check_ranges(Options(), "--stride at least 1")
