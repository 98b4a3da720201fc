"""The review loop through the command line on a region the home model never saw, and ``review retrain``'s rules.

Home: the tiny one-epoch run of ``conftest.trained_run`` (rural demo, seed 0). New region: three urban
demo towns of another seed. A mapper reviews town_00 (answers from the demo's truth, written as the
page exports them), ``review retrain`` fine-tunes, and town_02, which nobody reviewed, is scanned
before and after.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import box

from schoolvision.cli import build_parser, main
from schoolvision.data.synthetic import make_demo
from schoolvision.io.folders import ChipsFolder, ReviewFolder, RunFolder, ScanFolder
from schoolvision.review.decisions import oracle_decisions, write_decisions

SCAN = ["--device", "cpu", "--runtime", "torch", "--no-map"]


@pytest.fixture(scope="module")
def loop(trained_run, tmp_path_factory):
    """Scan town_00 of a new region with --registry, build its queue, decide it from the truth, retrain."""
    root = tmp_path_factory.mktemp("loop")
    demo = root / "urban"
    make_demo(demo, towns=3, seed=7, size=768, region="urban")
    scenes = demo / "scenes"
    assert main(["scan", "--run", str(trained_run), "--imagery", str(scenes / "town_00.tif"), "--out",
                 str(root / "scan"), "--registry", str(demo / "registry.csv"), "--threshold", "0.3", *SCAN]) == 0
    assert main(["review", "build", "--scan", str(root / "scan"), "--out", str(root / "queue"), "--device",
                 "cpu"]) == 0
    truth = gpd.read_file(demo / "schools.geojson")
    answers = oracle_decisions(root / "queue", truth, distance=50.0)
    decisions = write_decisions(root / "decisions.geojson", root / "queue", answers)
    assert main(["review", "retrain", "--queue", str(root / "queue"), "--decisions", str(decisions), "--run",
                 str(trained_run), "--out", str(root / "round"), "--epochs", "2", "--device", "cpu"]) == 0
    return root, demo, answers


@pytest.mark.slow
def test_loop_retrain_helps_a_town_nobody_reviewed(loop, trained_run, capsys):
    root, demo, answers = loop
    record = RunFolder(root / "round" / "run").read_round()
    assert record["queue_id"] == ReviewFolder(root / "queue").read_queue()["queue_id"]
    assert record["decided"]["school"] == sum(d == "school" for d in answers.values()) > 0
    assert record["parent_run"] == str(Path(trained_run).resolve())
    recall = {}
    for name, run in (("before", trained_run), ("after", root / "round" / "run")):
        out = root / f"town_02_{name}"
        assert main(["scan", "--run", str(run), "--imagery", str(demo / "scenes" / "town_02.tif"), "--out", str(out),
                     "--schools", str(demo / "schools.geojson"), *SCAN]) == 0
        recall[name] = ScanFolder(out).read_summary()["evaluation"]["recall"]
    assert recall["after"] > recall["before"], recall


@pytest.mark.slow
def test_no_retrain_chip_comes_from_outside_the_reviewed_neighbourhoods(loop):
    root, _, answers = loop
    items = ReviewFolder(root / "queue").read_items().set_index("id")
    record = RunFolder(root / "round" / "run").read_round()
    half = record["neighbourhood_m"] / 2
    chips = ChipsFolder(root / "round" / "chips").read_index()
    reviewed = chips[chips["origin"] == "review"]
    assert len(reviewed) and set(reviewed["split"]) == {"train"}
    looked = [i for i, d in answers.items() if d in ("school", "not_school")]
    places = gpd.GeoSeries(gpd.points_from_xy(items.loc[looked, "lon"], items.loc[looked, "lat"]), crs="EPSG:4326")
    crs = str(reviewed["crs"].iloc[0])
    squares = [box(p.x - half, p.y - half, p.x + half, p.y + half) for p in places.to_crs(crs)]
    for _, chip in reviewed.iterrows():
        footprint = box(chip["minx"], chip["miny"], chip["maxx"], chip["maxy"])
        assert any(sq.buffer(1.0).contains(footprint) for sq in squares), chip["chip_id"]
        assert answers[str(chip["scene"])] in ("school", "not_school")  # its crop is a decided place
    grid_negatives = reviewed[(reviewed["label"] == "not_school") & (reviewed["view"] != "hard_negative")]
    assert set(grid_negatives["scene"]) <= {i for i, d in answers.items() if d == "not_school"}
    home = chips[chips["origin"] == "home"]
    home_index = ChipsFolder(RunFolder(record["parent_run"]).read_config()["chips_dir"]).read_index()
    for split in ("val", "test"):  # the home val and test splits whole
        assert sorted(home.loc[home["split"] == split, "chip_id"]) == sorted(
            home_index.loc[home_index["split"] == split, "chip_id"])


def test_retrain_refuses_decisions_of_another_queue_and_a_run_of_another_backbone(tmp_path, capsys):
    queue = tmp_path / "queue"
    queue.mkdir()
    (queue / "queue.json").write_text(json.dumps({"queue_id": "q1", "run": str(tmp_path / "scanrun")}))
    (queue / "items.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 0]},
         "properties": {"id": "a", "lon": 0, "lat": 0}}]}))
    dec = tmp_path / "decisions.geojson"
    dec.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": None,
         "properties": {"id": "a", "decision": "school", "timestamp": "2026-01-01T00:00:00Z", "queue_id": "q2"}}]}))
    for name, backbone in (("scanrun", "resnet18"), ("run", "efficientnet_lite0")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"backbone": backbone, "chips_dir": "nowhere"}))
    args = ["review", "retrain", "--queue", str(queue), "--decisions", str(dec), "--run", str(tmp_path / "run"),
            "--out", str(tmp_path / "round")]
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "from queue q2, not from --queue q1" in err[0] and str(dec) in err[0], err
    dec.write_text(dec.read_text().replace('"q2"', '"q1"'))
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "--run is a efficientnet_lite0 model" in err[0] and "resnet18" in err[0], err
    assert not (tmp_path / "round").exists()


def _parsers(parser: argparse.ArgumentParser, name: str = "schoolvision"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_help_of_every_command_shows_every_default():
    checked = 0
    for name, parser in _parsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or action.default is argparse.SUPPRESS:
                continue
            assert "default" in formatter._get_help_string(action).lower(), (name, action.option_strings)
            checked += 1
    assert checked > 50
    chips = " ".join(build_parser()._subparsers._group_actions[0].choices["chips"].format_help().split())
    assert "(default: 40.0)" in chips and "(default: 3.0)" in chips  # --point-buffer, --negative-ratio


def test_registry_audit_carries_the_registry_ids(tmp_path):
    from test_review import META, RedModel

    from fixtures import write_registry_town
    from schoolvision.scan.runner import ScanConfig, run_scan

    scene, registry = write_registry_town(tmp_path)
    table = np.genfromtxt(registry, delimiter=",", names=True, dtype=None, encoding="utf-8")
    ids = [f"TZ-{n:04d}" for n in range(len(table))]
    lines = registry.read_text().splitlines()
    registry.write_text("\n".join([f"School_Code,{lines[0]}"] + [f"{i},{ln}" for i, ln in zip(ids, lines[1:])]) + "\n")
    run_scan(ScanConfig(run=tmp_path, imagery=[scene], out_dir=tmp_path / "scan", registry=registry, runtime="torch",
                        device="cpu", progress=False, make_map=False), model=RedModel(), meta=META)
    audit = ScanFolder(tmp_path / "scan").read_registry_audit()
    reg = audit[audit["kind"] == "registry"].set_index("name")
    names = list(np.atleast_1d(table["name"]))
    for name in reg.index:
        assert reg.loc[name, "registry_id"] == ids[names.index(name)]
    matched = audit[(audit["kind"] == "candidate") & (audit["status"] == "registry")]
    assert len(matched) and set(matched["registry_id"]) <= set(ids)  # a candidate names the school it confirms
    assert ScanFolder(tmp_path / "scan").read_summary()["registry"]["id_column"] == "School_Code"
