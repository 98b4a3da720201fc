"""The folder classes: each file format has one reader, which names the file in every error."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from rasterio.transform import from_origin
from shapely.geometry import Point, box

from schoolvision.errors import UserError
from schoolvision.io import manifest
from schoolvision.io.atomic import write_text
from schoolvision.io.folders import (
    ChipsFolder,
    RunFolder,
    ScanFolder,
    prepare_output,
    read_predictions,
    read_probability,
)
from schoolvision.io.rasters import write_geotiff
from schoolvision.io.schools import read_schools
from schoolvision.io.vectors import write_vectors

# --- the output guard ---------------------------------------------------------------------------


def test_prepare_output_refuses_a_non_empty_folder_with_the_commands_message(tmp_path):
    (tmp_path / "other.txt").write_text("x")
    with pytest.raises(UserError, match="run folder is not empty") as err:
        prepare_output(tmp_path, False, message="run folder is not empty; use --overwrite")
    assert err.value.path == str(tmp_path)
    assert (tmp_path / "other.txt").exists()


def test_prepare_output_refuses_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        prepare_output(target, True)


def test_prepare_output_overwrite_removes_only_files_the_manifest_lists(tmp_path):
    assert prepare_output(tmp_path, False, own_files=RunFolder.FILES) is False  # empty: starts a manifest
    write_text(tmp_path / "best.pt", "old")
    manifest.record(tmp_path / "tensorboard")  # a folder another library writes, listed as a whole
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / "events").write_text("old")
    (tmp_path / "notes.txt").write_text("mine")
    assert prepare_output(tmp_path, True, own_files=RunFolder.FILES) is False
    assert sorted(p.name for p in tmp_path.iterdir()) == [manifest.MANIFEST, "notes.txt"]
    assert manifest.read(tmp_path) == []


def test_prepare_output_refuses_a_foreign_file_under_an_own_name(tmp_path):
    (tmp_path / "best.pt").write_text("a run of an older version, or the user's")
    with pytest.raises(UserError, match="holds best.pt, which schoolvision did not write"):
        prepare_output(tmp_path, True, own_files=RunFolder.FILES)
    assert (tmp_path / "best.pt").read_text().startswith("a run")


def test_prepare_output_recognises_the_same_output_and_creates_new_folders(tmp_path):
    (tmp_path / "demo.json").write_text("{}")
    assert prepare_output(tmp_path, False, is_same=lambda out: (out / "demo.json").exists()) is True
    new = tmp_path / "a" / "b"
    assert prepare_output(new, False) is False and new.is_dir()
    assert prepare_output(tmp_path / "c", False, create=False) is False and not (tmp_path / "c").exists()


# --- chips folder -------------------------------------------------------------------------------


def _chips_folder(root):
    folder = ChipsFolder(root)
    root.mkdir(parents=True, exist_ok=True)
    folder.write_index("chip_id,path,label,split,scene,school_name\n"
                       "001,train/a.tif,school,train,town_00,Hill School\n"
                       "002,test/b.tif,not_school,test,town_01,\n")
    scenes = {"town_00": {"path": "/abs/town_00.tif"}, "town_01": "../s/town_01.tif"}
    folder.write_meta({"chip_size": 64, "scenes": scenes, "schools": "schools.geojson"})
    return folder


def test_chips_index_round_trip_keeps_ids_and_empty_names(tmp_path):
    folder = _chips_folder(tmp_path / "chips")
    frame = folder.read_index()
    assert frame["chip_id"].tolist() == ["001", "002"]  # ids stay strings, leading zeros kept
    assert frame["school_name"].tolist() == ["Hill School", ""]
    assert folder.read_index("test")["chip_id"].tolist() == ["002"]
    assert len(folder.index_sha256()) == 64
    assert ChipsFolder(tmp_path / "none").index_sha256() == ""


def test_chips_index_errors_name_the_file(tmp_path):
    folder = _chips_folder(tmp_path / "chips")
    with pytest.raises(UserError, match="split 'val' has no chips") as err:
        folder.read_index("val")
    assert err.value.path.endswith("chips.csv")
    folder.index_path.write_text("chip_id,split\n1,train\n")
    with pytest.raises(UserError, match="lacks column.*path, label") as err:
        folder.read_index()
    assert err.value.path.endswith("chips.csv")
    with pytest.raises(UserError, match="chips.csv not found.*schoolvision chips"):
        ChipsFolder(tmp_path / "empty").read_index()


def test_chips_meta_scene_paths_and_schools(tmp_path):
    folder = _chips_folder(tmp_path / "chips")
    assert folder.read_meta()["chip_size"] == 64
    paths = folder.scene_paths()
    assert paths["town_00"].as_posix() == "/abs/town_00.tif"
    assert paths["town_01"] == folder.root / "../s/town_01.tif"
    assert folder.read_schools() is None  # named but not there
    schools = gpd.GeoDataFrame({"name": ["a"]}, geometry=[box(0, 0, 1, 1)], crs="EPSG:4326")
    schools.to_file(folder.root / "schools.geojson")
    assert len(folder.read_schools()) == 1
    assert ChipsFolder(tmp_path / "none").read_meta() == {}
    with pytest.raises(UserError, match="dataset.json not found"):
        ChipsFolder(tmp_path / "none").read_meta(required=True)


def test_unreadable_dataset_json_is_a_user_error(tmp_path):
    folder = ChipsFolder(tmp_path)
    folder.meta_path.write_text("{not json")
    with pytest.raises(UserError, match="dataset.json is not readable JSON") as err:
        folder.read_meta()
    assert err.value.path == str(folder.meta_path)
    folder.meta_path.write_text("[1, 2]")
    with pytest.raises(UserError, match="does not hold a JSON object"):
        folder.read_meta()


# --- run folder ---------------------------------------------------------------------------------


def test_predictions_round_trip_exactly(tmp_path):
    run = RunFolder(tmp_path)
    rng = np.random.default_rng(0)
    probs = rng.random(50)
    probs[0], probs[1] = 1 / 3, np.nextafter(0.5, 1)  # repr floats with 17 significant digits
    ids = [f"{i:03d}" for i in range(25)]
    frames = [pd.DataFrame({"chip_id": ids, "split": s, "label": 1, "prob": probs[k * 25:(k + 1) * 25], "pred": 1})
              for k, s in enumerate(("val", "test"))]
    run.write_predictions(frames)
    back = run.read_predictions()
    assert np.array_equal(back["prob"].to_numpy(), probs)  # bit for bit
    assert back["chip_id"].iloc[0] == "000"
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temporary file


def test_predictions_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="predictions.csv not found.*schoolvision train"):
        RunFolder(tmp_path).read_predictions()
    path = tmp_path / "explanations.csv"
    path.write_text("chip_id,prob\n1,0.5\n")
    with pytest.raises(UserError, match="lacks column.*label, pred") as err:
        read_predictions(path)
    assert err.value.path == str(path)


def test_run_metrics_config_history(tmp_path):
    run = RunFolder(tmp_path)
    assert run.metrics_path() == tmp_path / "metrics.json"
    assert run.metrics_path("val") == tmp_path / "metrics_val.json"
    run.write_metrics({"f1": 0.5})
    run.write_metrics({"f1": 0.25}, "val")
    assert run.read_metrics() == {"f1": 0.5} and run.read_metrics("val") == {"f1": 0.25}
    with pytest.raises(UserError, match="metrics_train.json not found.*--split train"):
        run.read_metrics("train")
    assert run.read_metrics("train", required=False) == {}
    assert run.read_config() == {}
    run.write_config({"batch_size": 8})
    assert run.read_config(required=True) == {"batch_size": 8}
    run.write_history([{"epoch": 1}])
    assert run.read_history() == [{"epoch": 1}]
    (tmp_path / "history.json").write_text("{}")
    with pytest.raises(UserError, match="history.json does not hold a list"):
        run.read_history()


def test_checkpoint_of_a_run_folder_or_a_file(tmp_path):
    assert RunFolder.checkpoint(tmp_path) == tmp_path / "best.pt"
    assert RunFolder.checkpoint(tmp_path / "other.pt") == tmp_path / "other.pt"


# --- scan folder --------------------------------------------------------------------------------


def test_probability_rasters_listed_and_read(tmp_path):
    scan = ScanFolder(tmp_path)
    prob = np.full((40, 60), 0.25, np.float32)
    prob[:5] = -1.0
    write_geotiff(scan.probability_path("town_b"), prob, "EPSG:32636", from_origin(500000, 4000000, 2, 2), nodata=-1.0)
    write_geotiff(scan.probability_path("town_a"), prob, "EPSG:32636", from_origin(500000, 4000000, 2, 2), nodata=-1.0)
    assert list(scan.probability_paths()) == ["town_a", "town_b"]
    values, transform, crs = read_probability(scan.probability_path("town_a"))
    assert np.isnan(values[:5]).all() and np.all(values[5:] == 0.25)
    assert crs.to_epsg() == 32636 and transform.a == 2
    small, t2, _ = read_probability(scan.probability_path("town_a"), max_side=30)
    assert small.shape == (20, 30) and t2.a == 4  # decimated, still on the same ground


def test_probability_errors_name_the_file(tmp_path):
    scan = ScanFolder(tmp_path)
    with pytest.raises(UserError, match="probability raster not found") as err:
        read_probability(scan.probability_path("x"))
    assert err.value.path.endswith("x_probability.tif")
    scan.probability_path("y").write_text("not a tiff")
    with pytest.raises(UserError, match="not a readable probability raster"):
        read_probability(scan.probability_path("y"))


def test_scan_summary_evaluation_and_layers(tmp_path):
    scan = ScanFolder(tmp_path)
    with pytest.raises(UserError, match="scan.json not found"):
        scan.read_summary()
    with pytest.raises(UserError, match="evaluation.json not found.*--schools"):
        scan.read_evaluation()
    with pytest.raises(UserError, match="candidates.gpkg"):
        scan.read_layer("candidates")
    scan.write_summary({"scenes": []})
    scan.write_evaluation({"recall": 1.0})
    assert scan.read_summary() == {"scenes": []} and scan.read_evaluation() == {"recall": 1.0}
    cands = gpd.GeoDataFrame({"rank": [1], "scene": ["a"]}, geometry=[Point(500010, 4000010)], crs="EPSG:32636")
    write_vectors(cands, gpkg=scan.candidates_path, layer="candidates", extra_layers={"missed_schools": cands.iloc[:0]})
    assert scan.read_layer("candidates").crs.to_epsg() == 32636
    missed = scan.read_layer("missed_schools")  # empty layers are not written: read back as empty
    assert len(missed) == 0 and {"scene", "name"} <= set(missed.columns)
    assert json.loads((tmp_path / "scan.json").read_text()) == {"scenes": []}


# --- schools: one reader, one CRS rule ------------------------------------------------------------


def test_schools_without_crs_are_wgs84_and_points_can_stay_points(tmp_path):
    path = tmp_path / "schools.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "A"}, "geometry": {"type": "Point", "coordinates": [36.8, -1.3]}}]}))
    discs = read_schools(path)
    points = read_schools(path, point_buffer_m=None)
    assert discs.crs.to_epsg() == points.crs.to_epsg() == 4326
    assert discs.geom_type.tolist() == ["Polygon"] and points.geom_type.tolist() == ["Point"]
    assert points.geometry.iloc[0].equals(Point(36.8, -1.3))


def test_scan_accepts_the_school_files_chips_accept(tmp_path):
    """A GeoJSON without a CRS (RFC 7946: EPSG:4326) is valid for ``chips`` and so for ``scan --schools``."""
    from types import SimpleNamespace

    from schoolvision.scan.evaluation import load_schools

    prob = tmp_path / "town_probability.tif"
    grid = from_origin(700000, 9860000, 10, 10)
    write_geotiff(prob, np.zeros((100, 100), np.float32), "EPSG:32737", grid, nodata=-1.0)
    scene = SimpleNamespace(scene="town", probability=str(prob), crs="EPSG:32737")
    inside = gpd.GeoSeries([Point(700500, 9859500)], crs="EPSG:32737").to_crs("EPSG:4326").iloc[0]
    path = tmp_path / "schools.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": n}, "geometry": {"type": "Point", "coordinates": [x, y]}}
        for n, x, y in (("in", inside.x, inside.y), ("out", 10.0, 10.0))]}))
    read_schools(path)  # what chips accepts
    known = load_schools(path, [scene])
    assert known["name"].tolist() == ["in"] and known.crs.to_epsg() == 4326
    assert known.geom_type.tolist() == ["Point"]  # distances are measured to the point, not a disc
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}}]}))
    with pytest.raises(UserError, match="Points or Polygons"):
        load_schools(path, [scene])
