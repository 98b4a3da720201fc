"""The simulated mapper of chapter 8 and the bookkeeping of a review round (schoolvision.book.simulate)."""

from __future__ import annotations

import geopandas as gpd
import pandas as pd
import pytest
from shapely.geometry import Point, box

from schoolvision.book import simulate

UTM = "EPSG:32636"


@pytest.fixture
def truth() -> gpd.GeoDataFrame:
    """Two 40 m square schools, 1 km apart, in WGS84."""
    squares = [box(500_000, 100_000, 500_040, 100_040), box(501_000, 100_000, 501_040, 100_040)]
    return gpd.GeoDataFrame({"name": ["A", "B"]}, geometry=squares, crs=UTM).to_crs("EPSG:4326")


def items_at(xy, **columns) -> pd.DataFrame:
    pts = gpd.GeoSeries([Point(x, y) for x, y in xy], crs=UTM).to_crs("EPSG:4326")
    return pd.DataFrame({"id": [f"i{n}" for n in range(len(xy))], "lon": pts.x, "lat": pts.y, **columns})


def test_the_mapper_answers_by_distance_to_a_true_footprint(truth):
    items = items_at([(500_020, 100_020), (500_080, 100_020), (500_100, 100_020), (501_020, 99_900)])
    answers = simulate.answer_items(items, truth, match_distance=50.0)
    # inside A; 40 m from A's edge; 60 m from it; 100 m south of B
    assert list(answers["decision"]) == ["school", "school", "not_school", "not_school"]
    assert list(answers["school"]) == ["A", "A", "", ""]
    assert answers["distance_m"].iloc[1] == pytest.approx(40.0, abs=0.5)
    assert list(simulate.answer_items(items, truth, match_distance=70.0)["decision"])[:3] == ["school"] * 3


def test_found_per_hundred_counts_distinct_schools_within_the_budget():
    curve = pd.DataFrame({"order": ["probability"] * 4 + ["uncertainty"] * 4, "reviewed": [1, 2, 3, 4] * 2,
                          "schools_found": [1, 2, 2, 2, 0, 0, 1, 2]})
    table = simulate.found_per_hundred(curve, k=3).set_index("order")
    assert table.loc["probability", "schools_found"] == 2 and table.loc["probability", "reviewed"] == 3
    assert table.loc["probability", "per_100_items"] == pytest.approx(66.7)
    assert table.loc["uncertainty", "per_100_items"] == pytest.approx(33.3)


def test_round_table_measures_the_gap_closed():
    ev = lambda recall: {"schools": 4, "candidates": 4, "true_positives": int(4 * recall),  # noqa: E731
                         "recall": recall, "precision": 1.0}
    table = simulate.round_table({"before": ev(0.25), "after": ev(0.75)}, home_recall=1.0)
    assert list(table["gap"]) == [0.75, 0.25]
    assert table["gap_closed"].iloc[-1] == pytest.approx(2 / 3, abs=1e-4)
    assert table["gap_closed"].iloc[0] == 0.0


def test_training_labels_keep_home_footprints_and_review_points(truth, tmp_path):
    home = tmp_path / "home.geojson"
    truth.to_file(home, driver="GeoJSON")
    review = gpd.GeoDataFrame({"name": ["r1", "r2"], "label": ["school", "not_school"]},
                              geometry=[Point(33.0, 1.0), Point(33.1, 1.0)], crs="EPSG:4326")
    review.to_file(tmp_path / "labels.geojson", driver="GeoJSON")
    out = simulate.training_labels(tmp_path / "labels.geojson", home, tmp_path / "train.geojson", accepted=1)
    labels = gpd.read_file(out)
    assert list(labels["provenance"]) == ["home", "home", "review"]
    assert list(labels["name"]) == ["A", "B", "r1"]  # the rejected place is not a school label
    assert set(labels.geom_type) == {"Polygon", "Point"}
    only_home = simulate.training_labels(tmp_path / "labels.geojson", home, tmp_path / "home_only.geojson", 0)
    assert list(gpd.read_file(only_home)["provenance"]) == ["home", "home"]


def test_review_chips_keep_the_home_held_out_towns(town_scenes, small_chips, tmp_path):
    """The reviewed scene trains; the home chips' validation and test towns stay validation and test."""
    from schoolvision.io.folders import ChipsFolder

    scenes, _ = town_scenes
    home = ChipsFolder(small_chips).read_schools()
    school = home.to_crs(UTM).geometry.iloc[0].centroid  # a school of the reviewed town
    review = gpd.GeoDataFrame({"name": ["r1", "r2"], "label": ["school", "not_school"]},
                              geometry=[school, Point(500_200, 99_800)], crs=UTM)
    review.to_crs("EPSG:4326").to_file(tmp_path / "labels.geojson", driver="GeoJSON")
    schools = simulate.training_labels(tmp_path / "labels.geojson", small_chips / "schools.geojson",
                                       tmp_path / "train.geojson", accepted=1)
    summary = simulate.review_chips(scenes / "town_00.tif", schools, tmp_path / "labels.geojson", small_chips,
                                    tmp_path / "chips", replay=2, eval_negative_ratio=None)
    meta = ChipsFolder(summary.out_dir).read_meta()
    assert {n: s["split"] for n, s in meta["scenes"].items()} == {"town_00": "train", "town_01": "val",
                                                                  "town_02": "test"}
    assert meta["chip_size"] == ChipsFolder(small_chips).read_meta()["chip_size"]  # cut like the home chips
    assert meta["negatives"]["where"] == "label=not_school" and meta["negatives"]["places"] == 1
    assert summary.counts["val"] == ChipsFolder(small_chips).read_meta()["counts"]["val"]
