"""School labels as users bring them: one reader (``read_schools``) for ``chips`` and ``scan``.

Layers of a GeoPackage, CSV tables with longitude/latitude columns under their usual names or a
WKT column, an attribute filter for OSM extracts, and bad files refused in one line before any
long work. The label files are written by ``tests/fixtures.py`` from the towns of ``make_towns``,
whose two schools and two look-alike buildings per town are known to the pixel.
"""

from __future__ import annotations

import json
import warnings

import geopandas as gpd
import pandas as pd
import pytest
import torch

from schoolvision.cli import main
from schoolvision.errors import UserError
from schoolvision.io.schools import find_lonlat_columns, read_schools
from schoolvision.model.backbones import build_model
from schoolvision.model.checkpoint import CheckpointMeta, save_checkpoint

from fixtures import UTM, town_buildings, write_buildings_gpkg, write_osm_extract, write_schools_csv

SMALL = ["--chip-size", "64", "--stride", "32"]


def one_line_error(capsys, rc: int, name) -> str:
    """The error line of a refused command: exit 2, one line naming ``name``, no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(name) in lines[0], lines[0]
    return lines[0]


def near(found: gpd.GeoDataFrame, truth: gpd.GeoDataFrame, metres: float = 1.0) -> bool:
    """Every school of ``truth`` has a school of ``found`` whose centre is within ``metres`` of its centre."""
    a = found.to_crs(UTM).geometry.centroid
    return all(a.distance(c).min() <= metres for c in truth.to_crs(UTM).geometry.centroid)


def school_chips(out) -> gpd.GeoDataFrame:
    """The ``school`` chips of a chips folder as boxes in the scene's CRS."""
    from shapely.geometry import box

    rows = pd.read_csv(out / "chips.csv").query("label == 'school'")
    assert len(rows), "no school chip"
    return gpd.GeoDataFrame(rows, geometry=[box(*r) for r in rows[["minx", "miny", "maxx", "maxy"]].to_numpy()],
                            crs=rows["crs"].iloc[0])


def all_intersect(chips: gpd.GeoDataFrame, polygons) -> bool:
    return all(any(c.intersects(p) for p in polygons) for c in chips.geometry)


# --- CSV tables -------------------------------------------------------------------------------


@pytest.mark.parametrize("lon, lat, lat_first", [
    ("longitude", "latitude", True),
    ("Longitude", "Latitude", True),
    ("lon", "lat", False),
    ("LNG", "LAT", True),
    ("long", "lat", True),
    ("x", "y", False),
    ("X", "Y", True),
    ("gps_longitude", "gps_latitude", True),
])
def test_csv_columns_found_by_common_names(tmp_path, one_town, lon, lat, lat_first):
    truth = gpd.read_file(one_town[1])
    path = write_schools_csv(tmp_path / "schools.csv", one_town[1], lon, lat, lat_first=lat_first)
    got = read_schools(path, point_buffer_m=None)
    assert len(got) == len(truth) and near(got, truth)
    assert list(got["name"]) == list(truth["name"])
    assert got.attrs["source"]["lonlat_columns"] == [lon, lat]


def test_giga_style_table(tmp_path):
    """Giga's school lists: school_name, latitude, longitude among many other columns."""
    path = tmp_path / "giga.csv"
    path.write_text("school_id_giga,school_id_govt,school_name,education_level,latitude,longitude,connectivity\n"
                    "a1,101,Kibera Primary,Primary,-1.3129,36.7876,Yes\n"
                    "a2,102,Olympic Secondary,Secondary,-1.3098,36.7823,No\n", encoding="utf-8-sig")
    got = read_schools(path, point_buffer_m=None)
    assert list(got["name"]) == ["Kibera Primary", "Olympic Secondary"]
    assert got.geometry.iloc[0].x == pytest.approx(36.7876) and got.geometry.iloc[0].y == pytest.approx(-1.3129)


def test_semicolon_table_with_decimal_commas(tmp_path):
    path = tmp_path / "schools.csv"
    path.write_text("nom;lat;lon\nEcole A;0,9;33,002\n", encoding="latin-1")
    got = read_schools(path, point_buffer_m=None)
    assert (got.geometry.iloc[0].x, got.geometry.iloc[0].y) == pytest.approx((33.002, 0.9))


def test_csv_columns_named_explicitly(tmp_path, one_town):
    path = write_schools_csv(tmp_path / "schools.csv", one_town[1], "coord_e", "coord_n")
    with pytest.raises(UserError, match="--lonlat-columns") as info:
        read_schools(path)
    assert str(path) in str(info.value) and "coord_e" in str(info.value)  # names the file and its columns
    got = read_schools(path, point_buffer_m=None, lonlat_columns="coord_e,coord_n")
    assert near(got, gpd.read_file(one_town[1]))
    with pytest.raises(UserError, match="no column 'northing'"):
        read_schools(path, lonlat_columns=("coord_e", "northing"))
    with pytest.raises(UserError, match="two column names"):
        read_schools(path, lonlat_columns="coord_e")


def test_csv_bad_rows_skipped_with_one_warning(tmp_path, one_town):
    bad = [{"name": "empty", "latitude": "", "longitude": ""}, {"name": "text", "latitude": "n/a", "longitude": "33"},
           {"name": "range", "latitude": "95", "longitude": "33"}, {"name": "null island", "latitude": "0",
                                                                    "longitude": "0"}]
    path = write_schools_csv(tmp_path / "schools.csv", one_town[1], extra_rows=bad)
    with pytest.warns(UserWarning, match=r"skipped 4 of 6 rows") as record:
        got = read_schools(path)
    assert len(record) == 1 and str(path) in str(record[0].message)
    assert len(got) == 2 and not set(got["name"]) & {r["name"] for r in bad}
    assert got.attrs["source"]["skipped_rows"] == 4


def test_csv_where_no_row_parses_is_one_line(tmp_path, capsys, one_town):
    path = tmp_path / "schools.csv"
    path.write_text("name,latitude,longitude\nA,,\nB,unknown,unknown\n")
    rc = main(["chips", "--imagery", str(one_town[0]), "--schools", str(path), "--out", str(tmp_path / "out"), *SMALL])
    line = one_line_error(capsys, rc, path)
    assert "longitude, latitude" in line and not (tmp_path / "out").exists()


def test_projected_coordinates_in_a_table_say_so(tmp_path, one_town):
    path = tmp_path / "schools.csv"
    path.write_text("name,x,y\nA,500064,99936\n")
    with pytest.raises(UserError, match="not longitude/latitude degrees"):
        read_schools(path)


def test_wkt_column(tmp_path, one_town):
    truth = gpd.read_file(one_town[1])
    path = write_schools_csv(tmp_path / "schools.csv", one_town[1], wkt="WKT",
                             extra_rows=[{"name": "broken", "WKT": "POLYGON ((1 2"}])
    with pytest.warns(UserWarning, match="skipped 1 of 3 rows"):
        got = read_schools(path, point_buffer_m=None)
    assert list(got.geom_type) == ["Polygon", "Polygon"] and near(got, truth, 0.01)
    areas = got.to_crs(UTM).area.to_numpy()
    assert areas == pytest.approx(truth.to_crs(UTM).area.to_numpy(), rel=1e-3)


def test_find_lonlat_columns_prefers_full_names_and_refuses_ambiguity():
    assert find_lonlat_columns(["id", "Latitude", "Longitude", "x", "y"]) == ("Longitude", "Latitude")
    assert find_lonlat_columns(["a_latitude", "b_latitude", "a_longitude"]) is None
    assert find_lonlat_columns(["name", "lat"]) is None


# --- vector files: formats, layers, attribute filter ----------------------------------------


@pytest.mark.parametrize("suffix, driver", [(".gpkg", "GPKG"), (".shp", "ESRI Shapefile"), (".kml", "KML"),
                                            (".fgb", "FlatGeobuf"), (".parquet", None)])
def test_vector_formats(tmp_path, one_town, suffix, driver):
    truth = gpd.read_file(one_town[1])
    path = tmp_path / f"schools{suffix}"
    if driver is None:
        pytest.importorskip("pyarrow")
        truth.to_crs(UTM).to_parquet(path)  # GeoParquet in its own CRS
    else:
        (truth if driver == "KML" else truth.to_crs(UTM)).to_file(path, driver=driver)
    got = read_schools(path, point_buffer_m=None)
    assert sorted(got["name"]) == sorted(truth["name"]) and near(got, truth, 0.01)  # FlatGeobuf reorders


def test_geopackage_with_several_layers_needs_a_layer(tmp_path, one_town):
    path = write_buildings_gpkg(tmp_path / "labels.gpkg", one_town[1])
    with pytest.raises(UserError, match=r"2 layers \(buildings, schools\).*--schools-layer") as info:
        read_schools(path)
    assert str(path) in str(info.value)
    got = read_schools(path, layer="schools", point_buffer_m=None)
    assert near(got, gpd.read_file(one_town[1])) and got.attrs["source"]["layer"] == "schools"
    with pytest.raises(UserError, match="'roads' is not a layer.*buildings, schools"):
        read_schools(path, layer="roads")


def test_layer_of_a_table_is_refused(tmp_path, one_town):
    path = write_schools_csv(tmp_path / "schools.csv", one_town[1])
    with pytest.raises(UserError, match="no layers"):
        read_schools(path, layer="schools")


def test_where_filter_on_an_osm_extract(tmp_path, one_town):
    truth = gpd.read_file(one_town[1])
    path = write_osm_extract(tmp_path / "osm.geojson", one_town[1])
    assert len(read_schools(path)) == 4  # every building
    got = read_schools(path, where="amenity=school", point_buffer_m=None)
    assert list(got["name"]) == list(truth["name"]) and near(got, truth, 0.01)
    assert set(read_schools(path, where="amenity=school,marketplace")["name"]) == {*truth["name"], "market"}
    assert set(read_schools(path, where="amenity!=school")["name"]) == {"market", "clinic"}
    assert len(read_schools(path, where="Amenity=school")) == 2  # keys are found case-insensitively
    with pytest.raises(UserError, match=r"no column 'shop'; columns: name, amenity, building"):
        read_schools(path, where="shop=school")
    with pytest.raises(UserError, match=r"keeps none of 4 features .*'school'"):
        read_schools(path, where="amenity=hospital")
    with pytest.raises(UserError, match="KEY=VALUE"):
        read_schools(path, where="amenity")


def test_where_filter_before_coordinates_of_a_table(tmp_path, one_town):
    """Rows the filter drops are not counted as bad coordinates."""
    path = write_schools_csv(tmp_path / "schools.csv", one_town[1],
                             extra_rows=[{"name": "office", "latitude": "", "longitude": ""}])
    frame = pd.read_csv(path)
    frame["type"] = ["school", "school", "office"]
    frame.to_csv(path, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_schools(path, where="type=school")) == 2


# --- chips ------------------------------------------------------------------------------------


def test_chips_refuse_a_geopackage_with_several_layers(tmp_path, capsys, one_town):
    path = write_buildings_gpkg(tmp_path / "labels.gpkg", one_town[1])
    out = tmp_path / "out"
    rc = main(["chips", "--imagery", str(one_town[0]), "--schools", str(path), "--out", str(out), *SMALL])
    line = one_line_error(capsys, rc, path)
    assert "buildings, schools" in line and "--schools-layer" in line and not out.exists()
    rc = main(["chips", "--imagery", str(one_town[0]), "--schools", str(path), "--out", str(out), *SMALL,
               "--schools-layer", "roads"])
    assert "buildings, schools" in one_line_error(capsys, rc, path)


def test_chips_from_the_schools_layer_land_on_the_schools(tmp_path, one_town):
    path = write_buildings_gpkg(tmp_path / "labels.gpkg", one_town[1])
    schools = list(gpd.read_file(one_town[1]).to_crs(UTM).geometry)
    out = {}
    for layer in ("schools", "buildings"):
        out[layer] = tmp_path / layer
        rc = main(["chips", "--imagery", str(one_town[0]), "--schools", str(path), "--out", str(out[layer]), *SMALL,
                   "--schools-layer", layer])
        assert rc == 0
    assert all_intersect(school_chips(out["schools"]), schools)
    assert not all_intersect(school_chips(out["schools"]), town_buildings())
    assert all_intersect(school_chips(out["buildings"]), town_buildings())  # the check can tell the layers apart
    meta = json.loads((out["schools"] / "dataset.json").read_text())
    assert meta["config"]["schools_layer"] == "schools" and meta["schools_read"]["layer"] == "schools"


def test_chips_from_a_latitude_longitude_csv(tmp_path, one_town):
    path = write_schools_csv(tmp_path / "schools.csv", one_town[1])
    out = tmp_path / "out"
    assert main(["chips", "--imagery", str(one_town[0]), "--schools", str(path), "--out", str(out), *SMALL]) == 0
    assert all_intersect(school_chips(out), list(gpd.read_file(one_town[1]).to_crs(UTM).geometry))
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["schools_read"]["lonlat_columns"] == ["longitude", "latitude"]
    assert gpd.read_file(out / "schools.geojson").geom_type.eq("Polygon").all()  # points became discs


def test_chips_from_an_osm_extract_with_where(tmp_path, capsys, one_town):
    path = write_osm_extract(tmp_path / "osm.geojson", one_town[1])
    out = tmp_path / "out"
    args = ["chips", "--imagery", str(one_town[0]), "--schools", str(path), "--out", str(out), *SMALL]
    assert main([*args, "--schools-where", "amenity=school"]) == 0
    chips = school_chips(out)
    assert all_intersect(chips, list(gpd.read_file(one_town[1]).to_crs(UTM).geometry))
    assert not any(c.intersects(b) for c in chips.geometry for b in town_buildings())
    assert json.loads((out / "dataset.json").read_text())["config"]["schools_where"] == "amenity=school"
    capsys.readouterr()
    rc = main([*args, "--overwrite", "--schools-where", "shop=school"])
    line = one_line_error(capsys, rc, path)
    assert "columns: name, amenity, building" in line
    assert json.loads((out / "dataset.json").read_text())["config"]["schools_where"] == "amenity=school"  # kept


# --- scan -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scan_run(tmp_path_factory):
    """A run folder with an untrained efficientnet_lite0 at 64 px: enough to scan, not to find schools."""
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("schools_run") / "run"
    save_checkpoint(run / "best.pt", build_model("efficientnet_lite0", pretrained=False),
                    CheckpointMeta(backbone="efficientnet_lite0", image_size=64, chip_size=64, gsd=1.0, threshold=0.5))
    return run


def scan_args(run, scene, out, schools, *extra):
    return ["scan", "--run", str(run), "--imagery", str(scene), "--out", str(out), "--device", "cpu", "--no-map",
            "--no-cam", "--schools", str(schools), *extra]


def test_scan_evaluates_against_a_csv(tmp_path, capsys, one_town, scan_run):
    path = write_schools_csv(tmp_path / "schools.csv", one_town[1], "Longitude", "Latitude")
    out = tmp_path / "scan"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(scan_args(scan_run, one_town[0] / "town_00.tif", out, path))
    assert rc == 0, capsys.readouterr().err
    assert json.loads((out / "evaluation.json").read_text())["schools"] == 2
    assert json.loads((out / "scan.json").read_text())["schools_read"]["lonlat_columns"] == ["Longitude", "Latitude"]


def bad_labels(tmp_path, one_town) -> dict:
    """Label files each refused for one reason, with the extra options of the case."""
    no_coords = tmp_path / "no_coords.csv"
    no_coords.write_text("name,latitude,longitude\nA,,\n")
    no_columns = tmp_path / "no_columns.csv"
    no_columns.write_text("name,district\nA,North\n")
    return {
        "missing": (tmp_path / "missing.geojson", []),
        "no coordinates": (no_coords, []),
        "no coordinate columns": (no_columns, []),
        "several layers": (write_buildings_gpkg(tmp_path / "labels.gpkg", one_town[1]), []),
        "unknown where key": (write_osm_extract(tmp_path / "osm.geojson", one_town[1]), ["--schools-where", "shop=x"]),
        "unknown layer": (write_buildings_gpkg(tmp_path / "l2.gpkg", one_town[1]), ["--schools-layer", "roads"]),
    }


@pytest.mark.parametrize("case", ["missing", "no coordinates", "no coordinate columns", "several layers",
                                  "unknown where key", "unknown layer"])
def test_scan_refuses_bad_labels_before_scanning(tmp_path, capsys, one_town, scan_run, monkeypatch, case):
    from schoolvision.scan.scene import SceneScanner

    def never(*args, **kwargs):
        raise AssertionError("a scene was scanned before the labels were checked")

    monkeypatch.setattr(SceneScanner, "scan", never)
    path, extra = bad_labels(tmp_path, one_town)[case]
    out = tmp_path / "scan"
    rc = main(scan_args(scan_run, one_town[0], out, path, *extra))
    one_line_error(capsys, rc, path)
    assert not out.exists() or not list(out.glob("*_probability.tif"))


def test_scan_labels_options_need_schools(tmp_path, capsys, one_town, scan_run):
    rc = main(["scan", "--run", str(scan_run), "--imagery", str(one_town[0]), "--out", str(tmp_path / "scan"),
               "--schools-where", "amenity=school"])
    line = one_line_error(capsys, rc, "--schools-where")
    assert "--schools" in line and not (tmp_path / "scan").exists()
