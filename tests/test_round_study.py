"""Chapter 8's round measures: both models at both thresholds, pooled over towns with town intervals."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from schoolvision.book import round_study


def _grid(found: dict[tuple[str, str], list[int]], schools=(5, 5, 6), cands=None) -> pd.DataFrame:
    rows = []
    for (model, threshold), per_town in found.items():
        for i, (f, n) in enumerate(zip(per_town, schools)):
            c = (cands or {}).get((model, threshold), [f + 1] * len(per_town))[i]
            rows.append({"model": model, "threshold": threshold, "value": 0.5, "town": f"town_{i}", "schools": n,
                         "candidates": c, "found": f, "recall": f / n, "precision": f / c if c else 0.0})
    return pd.DataFrame(rows)


FOUND = {("home model", "home threshold"): [1, 4, 5], ("home model", "fine-tuned threshold"): [1, 4, 5],
         ("fine-tuned", "home threshold"): [4, 4, 5], ("fine-tuned", "fine-tuned threshold"): [4, 4, 4]}


def test_pooled_sums_towns_and_keeps_the_grid_order():
    table = round_study.pooled(_grid(FOUND))
    assert list(zip(table["model"], table["threshold"])) == list(FOUND)
    first = table.iloc[0]
    assert (first["found"], first["schools"], first["towns"]) == (10, 16, 3)
    assert first["recall"] == pytest.approx(10 / 16, abs=1e-4)
    assert first["precision"] == pytest.approx(10 / 13, abs=1e-4)
    assert (table["recall_low"] <= table["recall"]).all() and (table["recall"] <= table["recall_high"]).all()


def test_town_interval_is_the_spread_between_towns():
    same = round_study.town_interval([2, 2, 2], [4, 4, 4])
    assert same == pytest.approx((0.5, 0.5))
    low, high = round_study.town_interval([0, 2, 4], [4, 4, 4])
    assert low < 0.5 < high and low >= 0 and high <= 1
    assert round_study.town_interval([0, 2, 4], [4, 4, 4], seed=3) == round_study.town_interval(
        [0, 2, 4], [4, 4, 4], seed=3)


def test_the_verdict_names_what_moved_recall():
    table = round_study.pooled(_grid(FOUND))
    verdict = round_study.round_verdict(table)
    assert "3 schools more" in verdict and "finds as many schools" in verdict
    assert "comes from the weights" in verdict
    by_threshold = dict(FOUND) | {("fine-tuned", "home threshold"): [1, 4, 5],
                                  ("home model", "fine-tuned threshold"): [3, 4, 5]}
    assert "comes from the new threshold" in round_study.round_verdict(round_study.pooled(_grid(by_threshold)))
    values = round_study.glue_values(table)
    assert values["recall_after"] == pytest.approx(12 / 16, abs=1e-4)
    assert values["recall_weights"] == pytest.approx(13 / 16, abs=1e-4)
    assert values["recall_threshold"] == pytest.approx(10 / 16, abs=1e-4)


def test_budget_sweep_counts_distinct_schools_per_order():
    rows = []
    for order, hits in (("probability", [1, 1, 0, 0]), ("uncertainty", [0, 1, 0, 1])):
        found = 0
        for n, hit in enumerate(hits, start=1):
            found += hit
            rows.append({"order": order, "reviewed": n, "schools_found": found, "school": bool(hit)})
    sweep = round_study.budget_sweep(pd.DataFrame(rows), [2, 3, 10])
    assert list(sweep.index) == [2, 3, 4]  # the budget is capped at the queue
    assert sweep.loc[2].to_dict() == {"probability": 2, "uncertainty": 1}
    assert sweep.loc[4].to_dict() == {"probability": 2, "uncertainty": 2}


def test_threshold_grid_scans_each_model_at_each_threshold(monkeypatch, tmp_path):
    calls = []

    def fake_scan(run, scene, out, truth, match_distance=50.0, device="auto", threshold=None):
        calls.append((str(run), str(scene), threshold))
        found = 1 if threshold > 0.6 else 2
        return SimpleNamespace(evaluation={"schools": 2, "candidates": 3, "true_positives": found,
                                           "recall": found / 2, "precision": found / 3})

    monkeypatch.setattr(round_study, "scan_town", fake_scan)
    grid = round_study.threshold_grid({"a": "runA", "b": "runB"}, {"low": 0.5, "high": 0.7},
                                      {"t1": "s1.tif", "t2": "s2.tif"}, "truth.geojson", tmp_path)
    assert len(grid) == len(calls) == 8
    assert set(calls) == {(r, s, t) for r in ("runA", "runB") for s in ("s1.tif", "s2.tif") for t in (0.5, 0.7)}
    assert grid.loc[grid["threshold"] == "high", "found"].eq(1).all()
