"""Synthetic towns: georeference, determinism, footprints on the compounds, hard negatives, CLI."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize
from scipy import ndimage, stats
from shapely import affinity
from shapely.geometry import box

from schoolvision.cli import main
from schoolvision.demo import NEGATIVE_KINDS, generate_town, make_demo
from schoolvision.errors import UserError


@pytest.fixture(scope="module")
def town():
    return generate_town(0, 768, 1.0, index=0)


def test_town_in_memory(town):
    assert town.image.shape == (3, 768, 768) and town.image.dtype == np.uint8
    assert town.crs.startswith("EPSG:327") or town.crs.startswith("EPSG:326")
    assert len(town.schools) >= 2
    left, top = town.transform.c, town.transform.f
    for poly in town.schools:
        minx, miny, maxx, maxy = poly.bounds
        # at least 64 px away from the scene edge, and 50-120 m across
        assert minx >= left + 64 and maxx <= left + 768 - 64 and maxy <= top - 64 and miny >= top - 768 + 64
        assert 45 <= max(maxx - minx, maxy - miny) <= 120 * 1.5
    for i, a in enumerate(town.schools):  # spaced apart, never touching
        for b in town.schools[i + 1 :]:
            assert a.distance(b) > 10
    kinds = {lm.kind for lm in town.landmarks}
    assert len(kinds) >= 4 and kinds <= set(NEGATIVE_KINDS)
    assert all(not lm.polygon.intersects(s) for lm in town.landmarks for s in town.schools)
    # a real-looking image: not flat colour blocks
    assert town.image.std(axis=(1, 2)).min() > 10
    assert len(np.unique(town.image[:, ::4, ::4].reshape(3, -1), axis=1)[0]) > 100


def test_towns_differ_in_look_and_place():
    a, b = generate_town(0, 384, 1.0, index=0), generate_town(0, 384, 1.0, index=1)
    assert a.crs != b.crs
    assert a.style["sun_azimuth_deg"] != b.style["sun_azimuth_deg"]
    assert not np.array_equal(a.image, b.image)


def test_same_seed_gives_byte_identical_files(tmp_path):
    out1, out2, out3 = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    make_demo(out1, towns=2, seed=3, size=384)
    make_demo(out2, towns=2, seed=3, size=384)
    make_demo(out3, towns=2, seed=4, size=384)
    files = sorted(p.relative_to(out1) for p in out1.rglob("*") if p.is_file())
    # 2 scenes, schools, landmarks, buildings, registry, registry_truth, demo.json, and .schoolvision-manifest
    assert len(files) == 9, files
    assert files == sorted(p.relative_to(out2) for p in out2.rglob("*") if p.is_file())
    for rel in files:
        assert (out1 / rel).read_bytes() == (out2 / rel).read_bytes(), rel
    assert (out1 / "scenes/town_00.tif").read_bytes() != (out3 / "scenes/town_00.tif").read_bytes()


def test_geotiffs_are_tiled_projected_rgb_with_overviews(demo_dir):
    scenes = sorted((demo_dir / "scenes").glob("*.tif"))
    assert [p.stem for p in scenes] == ["town_00", "town_01", "town_02"]
    crss = set()
    for path in scenes:
        with rasterio.open(path) as src:
            assert src.crs.is_projected and src.crs.to_epsg() in range(32601, 32761)
            crss.add(src.crs.to_epsg())
            assert src.count == 3 and src.dtypes == ("uint8",) * 3
            assert src.profile.get("tiled") and src.block_shapes[0] == (256, 256)
            assert src.overviews(1)
            assert src.res == (1.0, 1.0) and (src.width, src.height) == (768, 768)
            assert src.colorinterp[0].name == "red"
    assert len(crss) == 3  # every town in its own UTM zone


def test_schools_geojson_matches_scenes(demo_dir):
    schools = gpd.read_file(demo_dir / "schools.geojson")
    marks = gpd.read_file(demo_dir / "landmarks.geojson")
    meta = json.loads((demo_dir / "demo.json").read_text())
    assert schools.crs.to_epsg() == 4326 and marks.crs.to_epsg() == 4326
    assert {"name", "scene"} <= set(schools.columns) and schools["name"].is_unique
    assert set(marks["kind"]) <= set(NEGATIVE_KINDS) and len(set(marks["kind"])) >= 5
    expected = {"towns": 3, "seed": 0, "size": 768, "gsd": 1.0}
    assert {k: meta["parameters"][k] for k in expected} == expected
    assert meta["parameters"]["config"]["edge_margin_px"] == 64
    for town in meta["towns"]:
        assert town["schools"] >= 2
        assert (schools["scene"] == town["name"]).sum() == town["schools"]
        with rasterio.open(demo_dir / town["path"]) as src:
            local = schools[schools["scene"] == town["name"]].to_crs(src.crs)
            left, bottom, right, top = src.bounds
            assert local.within(box(left, bottom, right, top)).all()


def _boundary_score(grad, poly, transform, shape):
    line = rasterize([(poly.exterior, 1)], out_shape=shape, transform=transform).astype(bool)
    return float(grad[line].mean())


def test_footprints_fall_on_school_compounds(demo_dir):
    """The wall lies on each footprint's outline, and pixels inside differ from the rest of the town."""
    schools = gpd.read_file(demo_dir / "schools.geojson")
    wins, total, inside_px, outside_px = 0, 0, [], []
    for path in sorted((demo_dir / "scenes").glob("*.tif")):
        with rasterio.open(path) as src:
            img = src.read().astype(np.float32)
            transform, crs = src.transform, src.crs
        gray = img.mean(0)
        grad = np.hypot(ndimage.sobel(gray, 0), ndimage.sobel(gray, 1))
        local = schools[schools["scene"] == path.stem].to_crs(crs)
        for poly in local.geometry:
            true = _boundary_score(grad, poly, transform, gray.shape)
            shifted = [_boundary_score(grad, affinity.translate(poly, dx, dy), transform, gray.shape)
                       for dx, dy in ((12, 0), (-12, 0), (0, 12), (0, -12))]
            wins += true > 1.3 * np.mean(shifted)
            total += 1
        mask = rasterize([(g, 1) for g in local.geometry], out_shape=gray.shape, transform=transform).astype(bool)
        inside_px.append(grad[mask])
        outside_px.append(grad[~mask][::7])
    assert total >= 6 and wins >= 0.8 * total, (wins, total)
    # compounds (flat yards, long roofs, lines) have a different edge-strength distribution
    assert stats.ks_2samp(np.concatenate(inside_px), np.concatenate(outside_px)).statistic > 0.05


def test_cli_writes_and_refuses_a_different_output(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--towns", "1", "--size", "384", "--seed", "1"]) == 0
    assert (out / "scenes/town_00.tif").exists() and (out / "schools.geojson").exists()
    first = (out / "scenes/town_00.tif").read_bytes()
    assert main(["demo", "--out", str(out), "--towns", "1", "--size", "384", "--seed", "1"]) == 0  # same demo: fine
    assert (out / "scenes/town_00.tif").read_bytes() == first
    capsys.readouterr()
    assert main(["demo", "--out", str(out), "--towns", "1", "--size", "384", "--seed", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and "--overwrite" in err
    assert (out / "scenes/town_00.tif").read_bytes() == first  # untouched
    assert main(["demo", "--out", str(out), "--towns", "1", "--size", "384", "--seed", "2", "--overwrite"]) == 0
    assert (out / "scenes/town_00.tif").read_bytes() != first
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(other), "--towns", "1", "--size", "384"]) == 2


def test_bad_parameters_are_user_errors(tmp_path):
    with pytest.raises(UserError):
        make_demo(tmp_path / "x", towns=0)
    with pytest.raises(UserError):
        make_demo(tmp_path / "y", towns=1, size=64)
