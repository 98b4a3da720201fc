"""Spatial cross-validation (``train --folds K``): every chip scored once, by a model that never saw it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from schoolvision.book.small_data import SMALL_TEST_SCHOOLS, small_data_notice
from schoolvision.cli import main
from schoolvision.errors import UserError
from schoolvision.io.folders import ChipsFolder, RunFolder
from schoolvision.train.folds import assign_folds, count_schools, fold_splits

from fixtures import make_fake_chips


def _mosaic_frame(n_schools: int = 6, side: int = 12, chip: float = 100.0) -> pd.DataFrame:
    """Chips of one scene on a grid (stride half a chip), with ``n_schools`` schools of three views each."""
    rows = []
    for r in range(side):
        for c in range(side):
            x, y = c * chip / 2, -r * chip / 2
            rows.append({"chip_id": f"g{r}_{c}", "label": "not_school", "scene": "mosaic", "school_name": "",
                         "minx": x, "maxx": x + chip, "miny": y - chip, "maxy": y})
    rng = np.random.default_rng(1)
    for s in range(n_schools):
        cx, cy = rng.uniform(0, side * chip / 2, 2)
        for v in range(3):
            x, y = cx + 10 * v, -cy - 10 * v
            rows.append({"chip_id": f"s{s}_{v}", "label": "school", "scene": "mosaic", "school_name": f"school {s}",
                         "minx": x - chip / 2, "maxx": x + chip / 2, "miny": y - chip / 2, "maxy": y + chip / 2})
    return pd.DataFrame(rows)


def test_block_folds_keep_schools_whole_and_give_each_fold_a_school():
    frame = _mosaic_frame()
    folds, unit = assign_folds(frame, 3, block_m=200.0, seed=0)
    assert unit == "200 m blocks" and set(folds) == {0, 1, 2}
    schools = frame["label"] == "school"
    per_school = pd.Series(folds[schools]).groupby(frame.loc[schools, "school_name"].to_numpy()).nunique()
    assert (per_school == 1).all()  # a school's views never straddle two folds
    assert all(frame.loc[schools & (folds == f), "school_name"].nunique() >= 1 for f in range(3))
    assert all((~schools & (folds == f)).sum() >= 20 for f in range(3))  # not_school chips spread too
    again, _ = assign_folds(frame, 3, block_m=200.0, seed=0)
    assert np.array_equal(folds, again)  # seeded


def test_no_training_chip_overlaps_a_test_chip():
    frame = _mosaic_frame()
    folds, _ = assign_folds(frame, 3, block_m=200.0)
    for fold in range(3):
        split = fold_splits(frame, folds, fold, 3)
        assert set(split) <= {"train", "val", "test", ""}
        assert (split[folds == fold] == "test").all() and (split[folds == (fold + 1) % 3] != "train").all()
        test, train = frame[split == "test"], frame[split == "train"]
        assert len(train) and (split == "").any()  # the border strip is left out, not the whole fold
        for t in test.itertuples():
            across = (train["minx"] < t.maxx) & (train["maxx"] > t.minx)
            hit = across & (train["miny"] < t.maxy) & (train["maxy"] > t.miny)
            assert not hit.any()


def test_scenes_are_the_folds_when_there_are_enough():
    frame = _mosaic_frame().assign(scene=lambda f: np.where(f.index % 2, "a", "b"))
    frame = pd.concat([frame, frame.assign(scene="c", chip_id=frame["chip_id"] + "c")], ignore_index=True)
    folds, unit = assign_folds(frame, 3, block_m=200.0)
    assert unit == "scenes"
    assert (pd.Series(folds).groupby(frame["scene"]).nunique() == 1).all()


def test_fewer_schools_than_folds_is_a_clear_error():
    with pytest.raises(UserError, match="3 folds need at least 3 schools; the chips hold 2"):
        assign_folds(_mosaic_frame(n_schools=2), 3, block_m=200.0)


def test_small_data_notice_names_the_count_and_the_folds():
    assert small_data_notice(SMALL_TEST_SCHOOLS) is None
    text = small_data_notice(2, folds=3)
    assert "2 school(s)" in text and str(SMALL_TEST_SCHOOLS) in text and "3-fold" in text
    assert "--folds" in small_data_notice(2)


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    chips = make_fake_chips(tmp_path_factory.mktemp("cv") / "chips", counts=(10, 6))
    out = tmp_path_factory.mktemp("cv_runs") / "cv"
    code = main(["train", "--chips", str(chips), "--out", str(out), "--folds", "3", "--epochs", "1",
                 "--no-pretrained", "--batch-size", "8", "--device", "cpu"])
    assert code == 0
    return chips, out


def test_train_folds_scores_every_chip_once_by_a_model_that_never_saw_it(cv_run):
    chips, out = cv_run
    index = ChipsFolder(chips).read_index()
    predictions = RunFolder(out).read_predictions()
    assert sorted(predictions["chip_id"]) == sorted(index["chip_id"])  # every chip, once
    for fold, part in predictions.groupby("fold"):
        seen = ChipsFolder(RunFolder(out).fold_chips(fold)).read_index()
        tested = set(seen.loc[seen["split"] == "test", "chip_id"])
        trained = set(seen.loc[seen["split"] != "test", "chip_id"])
        assert set(part["chip_id"]) == tested and not tested & trained
        assert (RunFolder(out).fold(fold) / "best.pt").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["fold"] for row in metrics["folds"]] == [1, 2, 3]
    assert sum(row["test_chips"] for row in metrics["folds"]) == len(index)
    assert metrics["cross_validation"]["unit"] == "scenes"
    fold_auprc = [row["auprc"] for row in metrics["folds"]]
    assert metrics["cross_validation"]["mean_fold_auprc"] == pytest.approx(np.mean(fold_auprc))
    pooled = average_precision_score(predictions["label"], predictions["prob"])
    assert metrics["auprc"] == pytest.approx(pooled)
    low, high = metrics["bootstrap"]["auprc"]
    assert low <= metrics["auprc"] <= high and metrics["threshold"] is None
    assert count_schools(chips) == 1  # the fake chips name every school "s"


def test_train_folds_refuses_an_existing_run_folder(cv_run):
    chips, out = cv_run
    assert main(["train", "--chips", str(chips), "--out", str(out), "--folds", "3", "--device", "cpu"]) == 2
