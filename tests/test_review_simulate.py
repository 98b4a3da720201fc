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


