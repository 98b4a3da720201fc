"""The footprint prefilter (``scan --mask``): the demo's buildings, mask files, window selection, scans.

Window selection is checked on hand-made grids where the distances are known; the scans on the "red
roof" model of ``test_scan.py`` (where the probability must be high is known) and, for the acceptance
test, the shared demo towns with the one-epoch run: the mask skips a share of the windows and the scan
still finds the same known schools.
"""

from __future__ import annotations

import json
import warnings

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
from affine import Affine
from shapely.geometry import Point, box

from schoolvision.cli import main
from schoolvision.data.windows import window_offsets
from schoolvision.errors import UserError
from schoolvision.io.imagery import list_sources
from schoolvision.io.masks import read_mask
from schoolvision.model.checkpoint import CheckpointMeta
from schoolvision.scan.mask import ScanMask, window_boxes
from schoolvision.scan.runner import ScanConfig, run_scan
from schoolvision.scan.scene import scan_scene

from fixtures import ORIGIN, UTM, write_red_scene


class RedModel(torch.nn.Module):
    """The "red roof" model of ``test_scan.py``: P(school) rises with the share of red pixels in a window."""

    def forward(self, x):
        s = 40 * (((x[:, 0] > 0.8) & (x[:, 1] < 0.3)).float().mean((1, 2)) - 0.05)
        return torch.stack([torch.zeros_like(s), s], 1)


def meta():
    return CheckpointMeta(backbone="efficientnet_lite0", image_size=64, chip_size=64, gsd=1.0, threshold=0.5)


class Grid:
    """What ``ScanMask.select`` reads from a scan grid: CRS, transform, size."""

    def __init__(self, width=256, height=256, crs=UTM, gsd=1.0):
        self.crs, self.width, self.height = rasterio.crs.CRS.from_user_input(crs), width, height
        self.transform = Affine(gsd, 0, ORIGIN[0], 0, -gsd, ORIGIN[1])


def windows_of(grid, chip=64, stride=32):
    return [(r, c) for r in window_offsets(grid.height, chip, stride) for c in window_offsets(grid.width, chip, stride)]


def utm_box(col0, row0, col1, row1):
    """A box in UTM from pixel columns/rows of :class:`Grid` (1 m pixels)."""
    return box(ORIGIN[0] + col0, ORIGIN[1] - row1, ORIGIN[0] + col1, ORIGIN[1] - row0)


# --------------------------------------------------------------------------- the demo's buildings


def test_demo_writes_every_building_footprint(demo_dir):
    buildings = gpd.read_file(demo_dir / "buildings.geojson")
    schools = gpd.read_file(demo_dir / "schools.geojson")
    assert buildings.crs.to_epsg() == 4326 and list(buildings.columns) == ["kind", "scene", "geometry"]
    kinds = set(buildings["kind"])
    assert {"house", "school"} <= kinds and len(kinds - {"house", "school"}) >= 2  # look-alikes' buildings too
    assert (buildings.geom_type == "Polygon").all() and buildings.is_valid.all()
    assert json.loads((demo_dir / "demo.json").read_text())["buildings"] == "buildings.geojson"
    for town, group in buildings.groupby("scene"):
        with rasterio.open(demo_dir / "scenes" / f"{town}.tif") as ds:
            local = group.to_crs(ds.crs)
            assert local.total_bounds[0] >= ds.bounds.left and local.total_bounds[2] <= ds.bounds.right
            area = local.area
            assert area[local["kind"] == "house"].between(25, 150).all()  # 6-15 x 5-9 m
            walls = schools[schools["scene"] == town].to_crs(ds.crs)
            roofs = local[local["kind"] == "school"]
            # every school holds classroom blocks, and every school building stands in a school compound
            assert all(roofs.intersects(w).any() for w in walls.geometry)
            assert all(walls.buffer(1).contains(r).any() for r in roofs.geometry)
            assert not local[local["kind"] == "house"].intersects(walls.union_all()).any()


# --------------------------------------------------------------------------- reading mask files


def test_csv_with_wkt_column_like_google_open_buildings(tmp_path):
    polys = gpd.GeoSeries([utm_box(10, 10, 30, 25), utm_box(100, 100, 140, 130)], crs=UTM).to_crs(4326)
    centres = polys.to_crs(UTM).centroid.to_crs(4326)
    table = pd.DataFrame({"latitude": centres.y, "longitude": centres.x,
                          "area_in_meters": [300.0, 1200.0], "confidence": [0.8, 0.9],
                          "geometry": polys.to_wkt(), "full_plus_code": ["6GCRPR6C+24", "6GCRPR6C+25"]})
    table.to_csv(tmp_path / "open_buildings.csv", index=False)
    mask = read_mask(tmp_path / "open_buildings.csv")
    assert mask.crs.to_epsg() == 4326 and list(mask.geom_type) == ["Polygon", "Polygon"]  # the WKT, not points
    assert mask.attrs["source"]["wkt_column"] == "geometry" and mask.attrs["source"]["features"] == 2


def test_csv_with_lonlat_columns_gives_points(tmp_path):
    pts = gpd.GeoSeries([Point(ORIGIN[0] + 20, ORIGIN[1] - 20)], crs=UTM).to_crs(4326)
    pd.DataFrame({"lon": pts.x, "lat": pts.y, "height": [4.0]}).to_csv(tmp_path / "points.csv", index=False)
    mask = read_mask(tmp_path / "points.csv")
    assert list(mask.geom_type) == ["Point"] and mask.attrs["source"]["lonlat_columns"] == ["lon", "lat"]
    pd.DataFrame({"a": [1], "b": [2]}).to_csv(tmp_path / "nothing.csv", index=False)
    with pytest.raises(UserError, match="nothing.csv.*no longitude/latitude or WKT"):
        read_mask(tmp_path / "nothing.csv")


def test_geoparquet_and_layers_and_bad_files(tmp_path):
    pytest.importorskip("pyarrow")
    gdf = gpd.GeoDataFrame({"kind": ["house"]}, geometry=[utm_box(0, 0, 10, 10)], crs=UTM)
    gdf.to_parquet(tmp_path / "b.parquet")
    mask = read_mask(tmp_path / "b.parquet")
    assert mask.crs == gdf.crs and len(mask) == 1  # kept in its own CRS: the scan reprojects per scene
    gdf.to_file(tmp_path / "two.gpkg", layer="roofs")
    gdf.to_file(tmp_path / "two.gpkg", layer="areas")
    with pytest.raises(UserError, match="2 layers.*--mask-layer NAME"):
        read_mask(tmp_path / "two.gpkg")
    assert len(read_mask(tmp_path / "two.gpkg", layer="areas")) == 1
    with pytest.raises(UserError, match="--mask-layer 'x' is not a layer"):
        read_mask(tmp_path / "two.gpkg", layer="x")
    (tmp_path / "bad.geojson").write_text("{ not json")
    with pytest.raises(UserError, match=r"bad\.geojson"):
        read_mask(tmp_path / "bad.geojson")
    with pytest.raises(UserError, match="does not exist"):
        read_mask(tmp_path / "missing.gpkg")


# --------------------------------------------------------------------------- choosing windows


def test_windows_within_the_distance_of_a_feature_are_kept():
    grid = Grid()
    windows = windows_of(grid)
    mask = ScanMask(gpd.GeoSeries([utm_box(100, 100, 110, 110)], crs=UTM))
    boxes = window_boxes(windows, grid.transform, 64, grid.width, grid.height)
    feature = utm_box(100, 100, 110, 110)
    dist = np.array([b.distance(feature) for b in boxes])
    for d in (0.0, 20.0, 40.0):
        kept = set(mask.select(windows, grid, 64, d))
        assert kept == {w for w, x in zip(windows, dist) if x <= d}, d
        assert 0 < len(kept) < len(windows)
    far = ScanMask(gpd.GeoSeries([utm_box(2000, 2000, 2010, 2010)], crs=UTM))
    assert far.select(windows, grid, 64, 40.0) == []


def test_a_mask_in_another_crs_is_reprojected():
    grid = Grid()
    windows = windows_of(grid)
    feats = gpd.GeoSeries([utm_box(100, 100, 110, 110), utm_box(10, 200, 20, 230)], crs=UTM)
    in_utm = ScanMask(feats).select(windows, grid, 64, 16.0)
    in_4326 = ScanMask(feats.to_crs(4326)).select(windows, grid, 64, 16.0)
    in_3857 = ScanMask(feats.to_crs(3857)).select(windows, grid, 64, 16.0)
    assert in_utm == in_4326 == in_3857 and 0 < len(in_utm) < len(windows)


def test_min_area_leaves_small_polygons_out():
    grid = Grid()
    windows = windows_of(grid)
    feats = gpd.GeoSeries([utm_box(20, 20, 30, 30), utm_box(180, 180, 220, 220)], crs=UTM)  # 100 and 1600 m2
    small_too = set(ScanMask(feats).select(windows, grid, 64, 0.0))
    large_only = set(ScanMask(feats, min_area=150).select(windows, grid, 64, 0.0))
    assert large_only < small_too and (0, 0) in small_too and (0, 0) not in large_only


def test_mask_survives_pickling_without_its_tree():
    import pickle

    mask = ScanMask(gpd.GeoSeries([utm_box(0, 0, 5, 5)], crs=UTM), 10.0)
    assert len(mask.tree) == 1
    copy = pickle.loads(pickle.dumps(mask))
    assert copy._tree is None and copy.select([(0, 0)], Grid(), 64, 10.0) == [(0, 0)]


# --------------------------------------------------------------------------- scans


def test_masked_windows_are_not_scored_and_stay_nodata(tmp_path):
    scene = write_red_scene(tmp_path / "s.tif", 256, 256, squares=[(30, 30, 30), (180, 180, 30)])
    src = list_sources([scene])[0]
    mask = ScanMask(gpd.GeoSeries([utm_box(30, 30, 60, 60)], crs=UTM).to_crs(4326), distance=0.0)
    res = scan_scene(RedModel(), meta(), src, tmp_path / "p.tif", stride=32, progress=False, runtime="torch",
                     mask=mask)
    total = len(window_offsets(256, 64, 32)) ** 2
    assert res.masked_windows > total / 2 and res.windows + res.skipped_windows + res.masked_windows == total
    assert mask.count(src, meta(), stride=32) == (total, total - res.masked_windows)  # sized before scanning
    with rasterio.open(tmp_path / "p.tif") as ds:
        prob = ds.read(1)
    assert prob[35:55, 35:55].mean() > 0.8  # the masked-in school is scored
    assert (prob[150:, 150:] == ds.nodata).all()  # the other is far from the mask: never read, nodata


def test_a_mask_of_another_place_is_one_line_with_both_extents(tmp_path):
    scene = write_red_scene(tmp_path / "s.tif", 128, 128)
    far = gpd.GeoDataFrame(geometry=[box(-70.0, -15.0, -69.99, -14.99)], crs=4326)  # Peru; the scene is in Uganda
    far.to_file(tmp_path / "far.geojson")
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"covers none of the imagery.*-70\.0000, -15\.0000.*33\.") as err:
        run_scan(ScanConfig(run=tmp_path, imagery=[scene], out_dir=out, mask=tmp_path / "far.geojson",
                            progress=False, runtime="torch"), model=RedModel(), meta=meta())
    assert "\n" not in str(err.value) and not list(out.glob("*.tif"))


def test_cli_refuses_a_bad_mask_before_writing_anything(tmp_path, capsys):
    scene = write_red_scene(tmp_path / "s.tif", 128, 128)
    (tmp_path / "bad.gpkg").write_bytes(b"not a geopackage")
    out = tmp_path / "out"
    args = ["scan", "--run", str(tmp_path), "--imagery", str(scene), "--out", str(out)]
    assert main([*args, "--mask", str(tmp_path / "bad.gpkg")]) == 2
    assert "bad.gpkg" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--mask-distance", "10"]) == 2
    assert "--mask FILE" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--mask", str(scene), "--mask-distance", "-1"]) == 2
    assert "--mask-distance must be >= 0" in capsys.readouterr().err


def test_demo_towns_with_their_buildings_as_mask_find_the_same_schools(demo_dir, trained_run, tmp_path):
    """Acceptance: windows far from every large building are skipped; the same known schools are found."""
    scenes = sorted((demo_dir / "scenes").glob("*.tif"))
    found, summaries = {}, {}
    for name, mask in (("all", None), ("masked", demo_dir / "buildings.geojson")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summaries[name] = run_scan(ScanConfig(
                run=trained_run, imagery=scenes, out_dir=tmp_path / name, schools=demo_dir / "schools.geojson",
                device="cpu", runtime="torch", cam_peaks=False, make_map=False, progress=False,
                threshold=0.3, mask=mask, mask_min_area=150.0))
        ev = json.loads((tmp_path / name / "evaluation.json").read_text())
        missed = {m["name"] for m in ev["missed_schools"]}
        found[name] = set(gpd.read_file(demo_dir / "schools.geojson")["name"]) - missed
    record = json.loads((tmp_path / "masked" / "scan.json").read_text())["mask"]
    assert record["windows_masked"] == sum(s.masked_windows for s in summaries["masked"].scenes)
    assert record["windows_total"] == sum(s.windows + s.skipped_windows for s in summaries["all"].scenes)
    assert 0.2 < record["share_masked"] < 0.8 and record["distance_m"] == 64.0 and record["min_area_m2"] == 150.0
    assert found["all"] and found["masked"] == found["all"]
