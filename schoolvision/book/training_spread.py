"""Chapter 2's printed intervals: the test sample's, widened by the spread of training runs where it was measured.

A bootstrap of the test split says how much the metrics move with the chips the test town happened to
hold, for one trained model. Training again (another seed, or the same seed on another machine, whose
float rounding differs) moves them too, and on the demo by more: six epochs carry small differences
far. ``benchmarks/training_spread.py`` trains the same recipe with several seeds on the same chips and
pools their bootstrap resamples into one interval; chapter 2 prints the union of that interval and its
own run's bootstrap interval, and only for the chips and recipe it was measured on. Elsewhere (your own
data) it prints the bootstrap interval and says that it covers the test sample only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schoolvision.io.folders import ChipsFolder

RECIPE = ("backbone", "pretrained", "epochs", "batch_size", "lr", "image_size", "weight_decay", "warmup_epochs")
"""The settings that make a run the same recipe as the measured ones (with the same chips)."""


def run_recipe(config: dict[str, Any]) -> dict[str, Any]:
    """A run's recipe from its ``config.json``, as resolved (the image size the run trained at)."""
    resolved = config.get("resolved", {})
    return {key: resolved.get(key, config.get(key)) for key in RECIPE}


@dataclass(frozen=True)
class Intervals:
    """The intervals chapter 2 prints (``auprc``, ``f1``: [low, high]) and what they cover, in a sentence."""

    auprc: tuple[float, float]
    f1: tuple[float, float]
    covers: str
    runs: int = 1


def measured_spread(path: str | Path | None, chips_dir: str | Path, recipe: dict[str, Any]) -> tuple[dict | None, str]:
    """The training-spread record at ``path`` if it was measured on these chips with this recipe, and why not."""
    if not path or not Path(path).is_file():
        return None, "no training-spread measurement for these chips"
    record = json.loads(Path(path).read_text())
    fingerprint = ChipsFolder(chips_dir).read_meta(required=True).get("fingerprint")
    if record.get("chips_fingerprint") != fingerprint:
        return None, "the training-spread measurement is of other chips"
    differ = [key for key in RECIPE if key in recipe and record.get("recipe", {}).get(key) != recipe[key]]
    if differ:
        return None, f"the training-spread measurement used another {', '.join(differ)}"
    return record, ""


def printed_intervals(metrics: dict[str, Any], spread: dict | None, why: str = "") -> Intervals:
    """This run's bootstrap intervals, widened to the pooled intervals of the measured training runs."""
    boot = metrics["bootstrap"]
    level = f"{boot['level']:.0%}"
    if spread is None:
        return Intervals(tuple(boot["auprc"]), tuple(boot["f1"]),
                         f"{level} bootstrap of the test sample, for this one training run ({why})")
    pooled = spread["pooled"]
    widened = {key: (min(boot[key][0], pooled[key][0]), max(boot[key][1], pooled[key][1])) for key in ("auprc", "f1")}
    seeds = sorted(run["seed"] for run in spread["runs"])
    return Intervals(widened["auprc"], widened["f1"],
                     f"{level} of the test sample's bootstrap pooled over {len(seeds)} training runs of this recipe "
                     f"(seeds {', '.join(map(str, seeds))}), and this run's own bootstrap",
                     runs=len(seeds))
