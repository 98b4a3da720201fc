"""Learning from a review: ``train --init-from`` (fine-tuning) and ``chips --negatives`` (hard negatives)."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
from shapely.geometry import Point
from torch import nn

from schoolvision.cli import main
from schoolvision.data.chips import HARD_NEGATIVE, ChipConfig, make_chips
from schoolvision.errors import UserError
from schoolvision.io.folders import ChipsFolder
from schoolvision.model.checkpoint import CheckpointMeta, load_classifier, read_checkpoint, save_checkpoint
from schoolvision.train import fit as training
from schoolvision.train.fit import TrainConfig, fit, initial_model, read_init

from fixtures import ORIGIN, UTM, tiny_train_config


def tiny(chips, out, **kw) -> TrainConfig:
    """:func:`tiny_train_config` for one epoch: fine-tuning is checked at its start and end, not its quality."""
    return tiny_train_config(chips, out, **{"epochs": 1, "n_boot": 20, **kw})


@pytest.fixture(scope="module")
def base_run(fake_chips, tmp_path_factory):
    """The earlier run that a fine-tuning starts from (32 px, random init, one epoch)."""
    out = tmp_path_factory.mktemp("runs") / "base"
    fit(tiny(fake_chips, out, seed=3))
    return out


def same_input() -> torch.Tensor:
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# --- train --init-from ---------------------------------------------------------------------------


def test_init_from_gives_the_earlier_model_before_the_first_step(base_run, fake_chips, tmp_path):
    earlier, _ = load_classifier(base_run)
    config = tiny(fake_chips, tmp_path / "ft", init_from=base_run, seed=7)
    model = initial_model(config, read_init(config)).eval()
    fresh = initial_model(tiny(fake_chips, tmp_path / "new", seed=7)).eval()
    with torch.no_grad():
        assert torch.equal(model(same_input()), earlier(same_input()))
        assert not torch.equal(fresh(same_input()), earlier(same_input()))  # the test can fail


def test_fit_with_init_from_starts_from_the_earlier_weights(base_run, fake_chips, tmp_path, monkeypatch):
    earlier, meta = load_classifier(base_run)
    seen = {}

    class Stop(Exception):
        pass

    def first_epoch(state):  # what fit is about to train, before any step
        state.model.eval()
        with torch.no_grad():
            seen["logits"] = state.model(same_input().contiguous(memory_format=torch.channels_last))
        seen["image_size"] = state.settings.image_size
        raise Stop

    monkeypatch.setattr(training, "run_epochs", first_epoch)
    with pytest.raises(Stop):
        fit(tiny(fake_chips, tmp_path / "ft", init_from=base_run, image_size=None, seed=11))
    with torch.no_grad():
        assert torch.allclose(seen["logits"], earlier(same_input()), atol=1e-5)
    assert seen["image_size"] == meta.image_size  # the earlier run's input size is kept


def test_fine_tuned_run_records_where_it_started(base_run, fake_chips, tmp_path):
    out = tmp_path / "ft"
    fit(tiny(fake_chips, out, init_from=base_run, lr=1e-4))
    config = json.loads((out / "config.json").read_text())
    assert config["init_from"] == str((base_run / "best.pt").resolve())
    assert len(config["init_from_sha256"]) == 64
    assert read_checkpoint(out / "best.pt")["meta"]["backbone"] == "efficientnet_lite0"
    scratch = json.loads((base_run / "config.json").read_text())
    assert "init_from" not in scratch  # a run from scratch writes config.json as before


def foreign_checkpoint(path, **meta) -> None:
    save_checkpoint(path, nn.Linear(2, 2), CheckpointMeta(**{"backbone": "efficientnet_lite0", "image_size": 32,
                                                            "chip_size": 32, "gsd": 1.0, **meta}))


@pytest.mark.parametrize("meta, words", [({"backbone": "resnet18"}, "resnet18 model, --backbone is efficientnet_lite0"),
                                         ({"classes": ["not_school", "school", "clinic"]}, "classes")])
def test_init_from_another_backbone_or_class_list_is_refused(fake_chips, tmp_path, meta, words):
    other = tmp_path / "other.pt"
    foreign_checkpoint(other, **meta)
    out = tmp_path / "ft"
    with pytest.raises(UserError, match="cannot fine-tune") as info:
        fit(tiny(fake_chips, out, init_from=other))
    assert words in str(info.value)
    assert not out.exists()  # refused before anything is written


def test_init_from_refusal_on_the_command_line(fake_chips, tmp_path, capsys):
    other = tmp_path / "other.pt"
    foreign_checkpoint(other, backbone="resnet18")
    out = tmp_path / "ft"
    rc = main(["train", "--chips", str(fake_chips), "--out", str(out), "--init-from", str(other), "--device", "cpu"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err
    assert "cannot fine-tune" in lines[0] and str(other) in lines[0]
    assert not out.exists()


# --- chips --negatives -----------------------------------------------------------------------------

CHIP = 64
# (town, x px, y px): two clear of the schools of fixtures.make_towns (squares at rows/cols 40-88 and
# 150-190 / 160-200), one on a school (left out), one in the val town, one outside every town
PLACES = [(0, 200.3, 60.7), (0, 120.6, 219.2), (0, 60.0, 60.0), (1, 210.8, 100.4), (9, 100.0, 100.0)]


def place_xy(town: int, x: float, y: float) -> tuple[float, float]:
    return ORIGIN[0] + town * 2 * 256 + x, ORIGIN[1] - y


@pytest.fixture(scope="module")
def negatives_csv(tmp_path_factory):
    """The places as a CSV of WGS84 longitude/latitude, as a labels table from another tool would come."""
    points = gpd.GeoSeries([Point(place_xy(*p)) for p in PLACES], crs=UTM).to_crs("EPSG:4326")
    path = tmp_path_factory.mktemp("negatives") / "rejected.csv"
    pd.DataFrame({"longitude": points.x, "latitude": points.y, "decision": "not_school"}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def hard_chips(town_scenes, negatives_csv, tmp_path_factory):
    scenes, schools = town_scenes
    out = tmp_path_factory.mktemp("hard") / "chips"
    make_chips([scenes], schools, out, ChipConfig(chip_size=CHIP, stride=32), negatives=negatives_csv)
    return out


def test_hard_negative_chips_are_centred_on_the_rejected_places(hard_chips):
    index = ChipsFolder(hard_chips).read_index()
    hard = index[index["view"] == HARD_NEGATIVE]
    assert len(hard) == 3 and set(hard["label"]) == {"not_school"}
    assert sorted(hard["split"]) == ["train", "train", "val"]  # the split of the town each place lies in
    expected = np.array([place_xy(*p) for p in PLACES[:2] + PLACES[3:4]])
    for path in hard["path"]:
        with rasterio.open(hard_chips / path) as ds:
            assert ds.width == ds.height == CHIP
            cx, cy = ds.transform @ (CHIP / 2, CHIP / 2)
            gsd = ds.transform.a
        offsets = np.abs(expected - (cx, cy)) / gsd
        assert offsets.max(axis=1).min() <= 0.5, f"{path}: centre {cx, cy} is not within half a pixel of a place"


def test_hard_negatives_have_provenance_and_skip_schools(hard_chips, negatives_csv):
    meta = ChipsFolder(hard_chips).read_meta()
    assert meta["negatives"]["source"] == str(negatives_csv.resolve())
    assert meta["negatives"]["places"] == len(PLACES) and meta["negatives"]["chips"] == 3
    assert meta["skipped"]["hard_negative_touches_school"] == 1  # the place on a school: the school label wins


def test_chips_without_negatives_are_unchanged(town_scenes, small_chips, hard_chips):
    plain = ChipsFolder(small_chips)
    assert "negatives" not in plain.read_meta()
    assert HARD_NEGATIVE not in set(plain.read_index()["view"])
    grid = ChipsFolder(hard_chips).read_index()
    grid = grid[grid["view"] != HARD_NEGATIVE]
    assert set(grid["chip_id"]) <= set(plain.read_index()["chip_id"])  # the same grid and centred chips
    assert plain.read_meta()["fingerprint"] != ChipsFolder(hard_chips).read_meta()["fingerprint"]


def test_negatives_on_the_command_line(town_scenes, negatives_csv, tmp_path, capsys):
    scenes, schools = town_scenes
    out = tmp_path / "chips"
    rc = main(["chips", "--imagery", str(scenes), "--schools", str(schools), "--out", str(out), "--chip-size", "64",
               "--stride", "32", "--negatives", str(negatives_csv)])
    assert rc == 0, capsys.readouterr().err
    assert "hard negatives: 3 chips from 5 places" in capsys.readouterr().out
    missing = tmp_path / "missing.geojson"
    rc = main(["chips", "--imagery", str(scenes), "--schools", str(schools), "--out", str(tmp_path / "c2"),
               "--chip-size", "64", "--negatives", str(missing)])
    err = capsys.readouterr().err
    assert rc == 2 and str(missing) in err and "Traceback" not in err


def test_review_labels_give_schools_and_hard_negatives(town_scenes, tmp_path):
    """One labels file as ``review import`` writes it: ``label=school`` points and ``label=not_school`` points."""
    scenes, _ = town_scenes
    accepted = [(0, 64.0, 64.0), (0, 180.0, 170.0)]  # the centres of town_00's two schools
    places = accepted + [PLACES[0], PLACES[1]]
    points = gpd.GeoSeries([Point(place_xy(*p)) for p in places], crs=UTM).to_crs("EPSG:4326")
    labels = gpd.GeoDataFrame({"name": [f"review {i}" for i in range(4)], "label": ["school"] * 2 + ["not_school"] * 2,
                               "decision": ["school"] * 2 + ["not_school"] * 2, "provenance": "review"},
                              geometry=points, crs="EPSG:4326")
    path = tmp_path / "labels.geojson"
    labels.to_file(path, driver="GeoJSON")
    out = tmp_path / "chips"
    make_chips([scenes / "town_00.tif"], path, out, ChipConfig(chip_size=CHIP, stride=32, schools_where="label=school"),
               negatives=path, negatives_where="label=not_school")
    index = ChipsFolder(out).read_index()
    assert set(index.loc[index["label"] == "school", "school_name"]) == {"review 0", "review 1"}
    assert (index["view"] == HARD_NEGATIVE).sum() == 1  # the other one's chip reaches the 40 m disc of a school
    meta = ChipsFolder(out).read_meta()
    assert meta["negatives"]["where"] == "label=not_school" and meta["negatives"]["places"] == 2
    assert meta["skipped"]["hard_negative_touches_school"] == 1


def test_review_labels_as_negatives_without_a_filter_are_refused(town_scenes, tmp_path, capsys):
    """Leaving out ``--negatives-where`` would turn the accepted schools into negatives: one line, nothing written."""
    scenes, _ = town_scenes
    points = gpd.GeoSeries([Point(place_xy(*p)) for p in [(0, 64.0, 64.0), PLACES[0]]], crs=UTM).to_crs("EPSG:4326")
    labels = gpd.GeoDataFrame({"name": ["a", "b"], "label": ["school", "not_school"]}, geometry=points, crs="EPSG:4326")
    path = tmp_path / "labels.geojson"
    labels.to_file(path, driver="GeoJSON")
    out = tmp_path / "chips"
    rc = main(["chips", "--imagery", str(scenes / "town_00.tif"), "--schools", str(path), "--schools-where",
               "label=school", "--out", str(out), "--chip-size", "64", "--negatives", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and "--negatives-where label=not_school" in err and str(path) in err and "Traceback" not in err
    assert not out.exists()
