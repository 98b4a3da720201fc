"""One chip per place: the book's galleries never show the same school twice."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from schoolvision.book.samples import pick_chips
from schoolvision.cluster.algorithms import ClusterConfig, cluster_features, nearest_to_centre
from schoolvision.data.places import distinct_places, repeated_places
from schoolvision.io.folders import ChipsFolder


def _frame() -> pd.DataFrame:
    rows = [  # chip_id, label, scene, school, minx, miny (128 m chips)
        ("a", "school", "t0", "s1", 0, 0), ("b", "school", "t0", "s1", 64, 0), ("c", "school", "t0", "s2", 512, 0),
        ("d", "school", "t1", "s1", 0, 0), ("e", "not_school", "t0", "", 1000, 1000),
        ("f", "not_school", "t0", "", 1064, 1000), ("g", "not_school", "t0", "", 1200, 1000),
        ("h", "not_school", "t1", "", 1064, 1000),
    ]
    frame = pd.DataFrame(rows, columns=["chip_id", "label", "scene", "school_name", "minx", "miny"])
    frame = frame.assign(maxx=frame["minx"] + 128, maxy=frame["miny"] + 128)
    return frame.set_index("chip_id", drop=False)


def test_one_chip_per_school_and_non_schools_a_chip_apart():
    frame = _frame()
    kept = distinct_places(frame, frame.index)
    assert kept == ["a", "c", "d", "e", "g", "h"]  # b: s1 again; f: 64 m from e; d and h: another town
    assert distinct_places(frame, ["b", "a", "c"], n=2) == ["b", "c"]  # the ranking's first chip of a place wins
    assert repeated_places(frame, ["a", "b", "c"]) == ["t0/s1"]
    assert repeated_places(frame, kept) == []


def test_pick_chips_gallery_shows_distinct_schools(small_chips):
    index = ChipsFolder(small_chips).read_index("test")
    schools = index[index["label"] == "school"]
    assert schools["school_name"].duplicated().any()  # the folder does hold several chips of one school
    predictions = small_chips.parent / "predictions.csv"
    rows = index.assign(label=(index["label"] == "school").astype(int), prob=np.linspace(0.99, 0.01, len(index)))
    rows.assign(pred=(rows["prob"] >= 0.5).astype(int))[["chip_id", "split", "label", "prob", "pred"]].to_csv(
        predictions, index=False)
    sample = pick_chips(predictions, small_chips, 32, label=1, n=8, by="prob")
    assert len(sample.chip_ids) == schools["school_name"].nunique()
    assert repeated_places(index, sample.chip_ids) == []


def test_cluster_gallery_shows_distinct_schools():
    rng = np.random.default_rng(0)
    frame = pd.concat([_frame().reset_index(drop=True)] * 3, ignore_index=True)
    frame["chip_id"] = [f"{c}{i}" for i, c in enumerate(frame["chip_id"])]
    vectors = rng.normal(size=(len(frame), 8)) + (frame["label"] == "school").to_numpy()[:, None] * 6.0
    result = cluster_features(vectors, ClusterConfig(k_min=2, k_max=2, stability_seeds=2, seed=0))
    for members in nearest_to_centre(result, 8, frame).values():
        assert len(members) and repeated_places(frame, frame["chip_id"].iloc[members]) == []
    plain = nearest_to_centre(result, 8)  # without the places, the same school does come back
    assert any(repeated_places(frame, frame["chip_id"].iloc[m]) for m in plain.values())


@pytest.mark.parametrize("order", [[], ["e"]])
def test_empty_and_single(order):
    assert distinct_places(_frame(), order) == order
