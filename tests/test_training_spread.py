"""Chapter 2's printed intervals: widened by measured training runs only for the same chips and recipe."""

from __future__ import annotations

import json

import numpy as np
import pytest

from schoolvision.book.training_spread import RECIPE, measured_spread, printed_intervals, run_recipe
from schoolvision.io.folders import ChipsFolder
from schoolvision.train.metrics import bootstrap_ci, bootstrap_draws, percentile_intervals

RUN_RECIPE = {"backbone": "efficientnet_lite0", "pretrained": True, "epochs": 6, "batch_size": 32, "lr": 0.001,
              "image_size": 224, "weight_decay": 0.01, "warmup_epochs": 1.0}
METRICS = {"bootstrap": {"auprc": [1.0, 1.0], "f1": [0.95, 1.0], "level": 0.95}}


@pytest.fixture
def chips(tmp_path):
    folder = ChipsFolder(tmp_path / "chips")
    folder.root.mkdir()
    folder.write_meta({"fingerprint": "abc123", "chip_size": 128, "gsd": 1.0})
    return folder.root


def write_spread(path, fingerprint="abc123", **recipe):
    record = {"chips_fingerprint": fingerprint, "recipe": {**RUN_RECIPE, **recipe},
              "pooled": {"auprc": [0.917, 1.0], "f1": [0.769, 1.0]},
              "runs": [{"seed": 1}, {"seed": 0}, {"seed": 2}]}
    path.write_text(json.dumps(record))
    return path


def test_the_measured_runs_widen_the_bootstrap_for_the_same_chips_and_recipe(chips, tmp_path):
    spread, why = measured_spread(write_spread(tmp_path / "spread.json"), chips, RUN_RECIPE)
    assert spread is not None and why == ""
    shown = printed_intervals(METRICS, spread, why)
    assert shown.auprc == (0.917, 1.0) and shown.f1 == (0.769, 1.0) and shown.runs == 3
    assert "pooled over 3 training runs" in shown.covers and "seeds 0, 1, 2" in shown.covers
    narrow = printed_intervals({"bootstrap": {"auprc": [0.9, 1.0], "f1": [0.6, 0.99], "level": 0.95}}, spread)
    assert narrow.auprc == (0.9, 1.0) and narrow.f1 == (0.6, 1.0)  # the union: never narrower than the run's own


@pytest.mark.parametrize(("fingerprint", "recipe", "reason"), [
    ("other", {}, "other chips"),
    ("abc123", {"epochs": 3}, "another epochs"),
    ("abc123", {"image_size": 128, "lr": 0.01}, "another lr, image_size"),
])
def test_a_measurement_of_other_chips_or_another_recipe_is_not_used(chips, tmp_path, fingerprint, recipe, reason):
    spread, why = measured_spread(write_spread(tmp_path / "spread.json", fingerprint, **recipe), chips, RUN_RECIPE)
    assert spread is None and reason in why
    shown = printed_intervals(METRICS, spread, why)
    assert shown.auprc == (1.0, 1.0) and shown.f1 == (0.95, 1.0)
    assert "test sample, for this one training run" in shown.covers and reason in shown.covers


def test_no_measurement_leaves_the_bootstrap(chips, tmp_path):
    for path in (None, "", tmp_path / "missing.json"):
        spread, why = measured_spread(path, chips, RUN_RECIPE)
        assert spread is None and "no training-spread measurement" in why


def test_a_runs_recipe_is_read_as_resolved():
    config = {**RUN_RECIPE, "image_size": None, "resolved": {"image_size": 224}, "seed": 3}
    assert run_recipe(config) == RUN_RECIPE and set(run_recipe(config)) == set(RECIPE)


def test_pooled_draws_of_one_run_are_its_bootstrap_interval():
    rng = np.random.default_rng(0)
    labels = (rng.random(300) < 0.2).astype(int)
    probs = np.clip(labels * 0.5 + rng.random(300) * 0.6, 0, 1)
    groups = np.arange(300) // 3
    ci = bootstrap_ci(labels, probs, 0.5, n_boot=200, seed=1, groups=groups)
    draws, n_groups = bootstrap_draws(labels, probs, 0.5, n_boot=200, seed=1, groups=groups)
    assert n_groups == 100 and percentile_intervals(draws)["auprc"] == ci["auprc"]
    worse, _ = bootstrap_draws(labels, 1 - probs, 0.5, n_boot=200, seed=1, groups=groups)
    pooled = percentile_intervals({k: np.concatenate([draws[k], worse[k]]) for k in draws})
    assert pooled["auprc"][0] < ci["auprc"][0] and pooled["auprc"][1] <= ci["auprc"][1]  # a worse run widens it down
