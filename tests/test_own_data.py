"""The book's later chapters on a user's own data: held-out area, prefilter, review round, nothing from the demo.

One small foreign area (a demo town delivered as a GeoTIFF and a school CSV, the demo folder gone) is
chipped as one mosaic split by blocks and trained for one epoch; the library functions behind chapters
6 and 8 then run on it.
"""

from __future__ import annotations

import geopandas as gpd
import pytest
import shapely

from schoolvision.book.heldout import held_out_area
from schoolvision.book.own import OwnRoundConfig, review_own_data
from schoolvision.book.prefilter import SKIPPED, prefilter_study
from schoolvision.book.results import Source, gather_results
from schoolvision.book.simulate import simulate_review
from schoolvision.data.chips import ChipConfig, make_chips
from schoolvision.data.sources import demo_of
from schoolvision.io.folders import ChipsFolder, RunFolder, ScanFolder
from schoolvision.scan.runner import ScanConfig, run_scan
from schoolvision.train.fit import TrainConfig, fit

from fixtures import make_small_area


@pytest.fixture(scope="module")
def area(tmp_path_factory):
    return make_small_area(tmp_path_factory.mktemp("area") / "received")


@pytest.fixture(scope="module")
def own_chips(area, tmp_path_factory):
    out = tmp_path_factory.mktemp("own") / "chips"
    make_chips([area.imagery], area.schools_csv, out, ChipConfig(chip_size=128, stride=64, gsd=1.0, block_size=384))
    return out


@pytest.fixture(scope="module")
def own_run(own_chips, tmp_path_factory):
    out = tmp_path_factory.mktemp("own_run") / "run"
    fit(TrainConfig(own_chips, out, epochs=1, batch_size=16, image_size=64, pretrained=False, device="cpu",
                    n_boot=20))
    return out


def test_the_users_chips_are_not_the_demo(own_chips):
    assert demo_of(own_chips) is None
    assert {s["split"] for s in ChipsFolder(own_chips).read_meta()["scenes"].values()} == {"blocks"}


def test_held_out_area_is_the_test_blocks_and_their_schools(own_chips, tmp_path):
    held = held_out_area(own_chips, tmp_path / "area")
    test = ChipsFolder(own_chips).read_index("test")
    crs = str(test["crs"].iloc[0])
    area = gpd.read_file(held.area).to_crs(crs).union_all()
    tested = shapely.union_all([shapely.box(r.minx, r.miny, r.maxx, r.maxy) for r in test.itertuples()])
    assert area.within(tested.buffer(1.0))  # inside the test blocks, never in a training block
    schools = gpd.read_file(held.schools).to_crs(crs)
    everyone = gpd.read_file(ChipsFolder(own_chips).schools_path()).to_crs(crs)
    assert 0 < len(schools) < len(everyone)
    assert schools.representative_point().within(tested).all()
    assert held.scan_options()["mask"] == held.area and "test blocks" in held.describe()
    whole = held_out_area(own_chips, tmp_path / "whole", scene=held.scene)  # a named scene: all of it
    assert whole.area is None and whole.schools == ChipsFolder(own_chips).schools_path()


def test_scan_of_the_held_out_area_skips_training_blocks_and_prefilter_needs_a_mask(own_chips, own_run, tmp_path):
    held = held_out_area(own_chips, tmp_path / "area")
    config = ScanConfig(run=own_run, out_dir=tmp_path / "scan", device="cpu", cam_peaks=False, make_map=False,
                        progress=False, **held.scan_options())
    summary = run_scan(config)
    scanned = summary.scenes[0]
    assert 0 < scanned.masked_windows < scanned.windows + scanned.masked_windows  # training blocks not scored
    assert summary.evaluation["schools"] == len(gpd.read_file(held.schools))
    study = prefilter_study(config, summary, held.source, "", 150.0, tmp_path / "prefilter")
    assert study.note == SKIPPED and study.masked is None and not (tmp_path / "prefilter").exists()


def test_review_round_stops_after_the_page_then_fine_tunes_with_decisions(own_chips, own_run, area, tmp_path):
    out = tmp_path / "review"
    config = OwnRoundConfig(own_run, own_chips, out, k=12, epochs=1, device="cpu")
    first = review_own_data(config)
    assert ScanFolder(first.scan.out_dir).read_summary()["registry"]["in_scenes"] == area.n_schools
    assert (out / "queue" / "review.html").is_file() and first.round is None
    assert "-p decisions" in first.summary(config) and "review retrain --queue" in first.summary(config)
    assert not (out / "round").exists()
    results = gather_results([Source("review", out / "review_round.json", "08_review")])
    assert not results.missing and results.value("review", "status").startswith("review queue built")
    assert results.value("review", "queue.items") == first.queue.items
    truth = gpd.read_file(ChipsFolder(own_chips).schools_path())
    mapped = simulate_review(out / "queue", truth, tmp_path / "d.geojson")  # a person's answers, exported
    answers = mapped.answers
    config.decisions = mapped.decisions
    second = review_own_data(config)
    assert sum(second.round.record["decided"].values()) == len(answers)
    assert RunFolder(out / "round" / "run").read_config()["init_from"].endswith("best.pt")
    assert "test AUPRC" in second.summary(config)
    results = gather_results([Source("review", out / "review_round.json", "08_review")])
    assert results.value("review", "status").startswith("fine-tuned")
    after = second.round.record["home_test"]["after"]["auprc"]
    assert results.value("review", "home_test_after.auprc") == pytest.approx(after)
    tuned = ChipsFolder(out / "round" / "chips").read_index()  # review retrain's: the home val and test kept
    assert set(tuned["split"]) == {"train", "val", "test"}
