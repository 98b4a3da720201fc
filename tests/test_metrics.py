"""Metrics on P(school) with school as the positive class, threshold tuning, calibration, bootstrap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from schoolvision.model.inference import school_probability
from schoolvision.train.evaluation import bootstrap_groups
from schoolvision.train.metrics import (
    METRIC_KEYS,
    bootstrap_ci,
    classification_metrics,
    expected_calibration_error,
    fbeta,
    fit_temperature,
    tune_threshold,
)


def test_metrics_by_hand():
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    probs = np.array([0.1, 0.2, 0.6, 0.3, 0.7, 0.4, 0.9])
    m = classification_metrics(labels, probs, threshold=0.5)
    # predicted school: 0.6 (FP), 0.7 (TP), 0.9 (TP); missed 0.4 (FN)
    assert m["confusion_matrix"] == [[3, 1], [1, 2]]
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["f2"] == pytest.approx(fbeta(2 / 3, 2 / 3, 2.0))
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["n_chips"] == {"not_school": 4, "school": 3}
    assert set(METRIC_KEYS) <= set(m)
    # 11 of 12 (negative, positive) pairs ranked right
    assert m["roc_auc"] == pytest.approx(11 / 12)


def test_school_is_the_positive_class():
    labels = np.array([0, 0, 1, 1])
    good = np.array([0.1, 0.2, 0.8, 0.9])
    assert classification_metrics(labels, good)["roc_auc"] == 1.0
    assert classification_metrics(labels, good)["auprc"] == 1.0
    assert classification_metrics(labels, 1 - good)["roc_auc"] == 0.0


def test_school_probability_is_not_the_max_class():
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0]])
    p = school_probability(logits)
    assert p[0] < 0.1 and p[1] > 0.9  # max-class probability would be > 0.9 for both
    assert school_probability(logits, temperature=100.0)[0] == pytest.approx(0.5, abs=0.02)


def test_threshold_maximises_fbeta():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    probs = np.clip(labels * 0.3 + rng.random(300) * 0.7, 0, 1)
    thr = tune_threshold(labels, probs, beta=1.0)
    f1_at = classification_metrics(labels, probs, thr)["f1"]
    best = max(classification_metrics(labels, probs, t)["f1"] for t in np.unique(probs))
    assert f1_at == pytest.approx(best)
    assert tune_threshold(labels, probs, beta=2.0) <= thr  # F2 favours recall: lower threshold


def test_calibration_error_and_temperature():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, (4000, 2))
    true_p = torch.softmax(torch.tensor(z) / 2.0, 1)[:, 1].numpy()
    labels = (rng.random(4000) < true_p).astype(int)
    assert expected_calibration_error(labels, true_p) < 0.03
    overconfident = school_probability(z, 1.0)
    assert expected_calibration_error(labels, overconfident) > 0.05
    assert fit_temperature(z, labels) == pytest.approx(2.0, rel=0.1)


def test_bootstrap_interval_is_seeded_and_contains_the_estimate():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 200)
    probs = np.clip(labels * 0.4 + rng.random(200) * 0.6, 0, 1)
    a = bootstrap_ci(labels, probs, 0.5, n_boot=200, seed=3)
    assert a == bootstrap_ci(labels, probs, 0.5, n_boot=200, seed=3)
    m = classification_metrics(labels, probs, 0.5)
    assert a["f1"][0] <= m["f1"] <= a["f1"][1]
    assert a["auprc"][0] <= m["auprc"] <= a["auprc"][1]
    assert a["f1"][0] < a["f1"][1]


def test_bootstrap_by_school_widens_the_interval_of_duplicated_chips():
    # 12 schools seen 8 times each (overlapping views: the same evidence) and 60 negatives; 3 schools are missed
    rng = np.random.default_rng(5)
    school_p = np.repeat(np.r_[np.full(9, 0.9), np.full(3, 0.2)], 8)
    labels = np.r_[np.ones(len(school_p), int), np.zeros(60, int)]
    probs = np.r_[school_p, rng.random(60) * 0.6]
    groups = np.r_[np.repeat([f"s{i}" for i in range(12)], 8), [f"n{i}" for i in range(60)]]
    chips = bootstrap_ci(labels, probs, 0.5, n_boot=400, seed=0)
    schools = bootstrap_ci(labels, probs, 0.5, n_boot=400, seed=0, groups=groups)
    assert schools["groups"] == 72 and chips["groups"] == len(labels)
    width = lambda ci: ci["f1"][1] - ci["f1"][0]  # noqa: E731
    assert width(schools) > 1.5 * width(chips)
    one_each = bootstrap_ci(labels, probs, 0.5, n_boot=400, seed=0, groups=[f"{i:03d}" for i in range(len(labels))])
    assert one_each["f1"] == chips["f1"]  # a group per chip is the chip bootstrap


def test_bootstrap_groups_keep_a_schools_chips_together():
    frame = pd.DataFrame({
        "label": ["school", "school", "school", "not_school", "not_school", "not_school"],
        "scene": ["a", "a", "b", "a", "a", "a"],
        "school_name": ["S1", "S1", "S1", "", "", ""],
        "minx": [0.0, 64.0, 0.0, 0.0, 64.0, 300.0],
        "maxy": [1000.0] * 6,
    })
    g = bootstrap_groups(frame, block_m=256.0)
    assert g[0] == g[1] != g[2]  # same school name in another scene is another school
    assert g[3] == g[4] != g[5]  # neighbouring negatives share a cell
    assert len(set(bootstrap_groups(frame[["label"]]))) == 6  # no columns: one group per chip
