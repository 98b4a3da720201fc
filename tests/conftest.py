"""Every fixture shared between test modules, built once per session in a temporary folder.

The data come from the one generator, ``tests/fixtures.py`` (seeded, real EPSG CRS, affine transform).
Two families: tiny hand-made towns (256 px, bright-square schools) for the fast unit tests, and a
seeded synthetic demo with a one-epoch run for the integration tests. Fixtures used by one module
only stay in that module.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from schoolvision.data.chips import ChipConfig, ChipSummary, make_chips
from schoolvision.demo import make_demo
from schoolvision.train.fit import TrainConfig, fit

from fixtures import make_fake_chips, make_towns, save_untrained_run

# --- tiny hand-made towns ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def town_scenes(tmp_path_factory) -> tuple[Path, Path]:
    """Three 256 px towns, two schools each: (scenes folder, schools.geojson in EPSG:4326)."""
    return make_towns(tmp_path_factory.mktemp("towns"))


@pytest.fixture(scope="session")
def one_town(tmp_path_factory) -> tuple[Path, Path]:
    """A single 256 px town (split by blocks, not by scene): (scenes folder, schools.geojson)."""
    return make_towns(tmp_path_factory.mktemp("one_town"), n=1)


@pytest.fixture(scope="session")
def small_chips_summary(town_scenes, tmp_path_factory) -> ChipSummary:
    """What ``make_chips`` returned for :func:`small_chips` (64 px chips, stride 32, one town per split)."""
    scenes, schools = town_scenes
    out = tmp_path_factory.mktemp("small_chips") / "chips"
    return make_chips([scenes], schools, out, ChipConfig(chip_size=64, stride=32))


@pytest.fixture(scope="session")
def small_chips(small_chips_summary) -> Path:
    """The chips folder of :func:`town_scenes`: train / val / test = town_00 / town_01 / town_02."""
    return small_chips_summary.out_dir


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """A fake run folder: ImageNet efficientnet_lite0 with an untrained head, saved as best.pt at 32 px."""
    return save_untrained_run(tmp_path_factory.mktemp("small_run"), pretrained=True, chip_size=64)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """An untrained 32 px efficientnet_lite0 (seed 0, no ImageNet weights) as best.pt: what a command reads."""
    return save_untrained_run(tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture(scope="session")
def fake_chips(tmp_path_factory) -> Path:
    """A chips folder of 32 px GeoTIFF chips without scenes: 10 not_school and 6 school per split."""
    return make_fake_chips(tmp_path_factory.mktemp("fake") / "chips")


# --- the seeded synthetic demo and a tiny trained run -----------------------------------------


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """Three small synthetic towns (one per split) with school footprints."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    make_demo(out, towns=3, seed=0, size=768, gsd=1.0)
    return out


@pytest.fixture(scope="session")
def chips_dir(demo_dir, tmp_path_factory) -> Path:
    """Labelled chips of :func:`demo_dir` (train / val / test = one town each)."""
    out = tmp_path_factory.mktemp("chips") / "chips"
    make_chips([demo_dir / "scenes"], demo_dir / "schools.geojson", out, ChipConfig())
    return out


@pytest.fixture(scope="session")
def trained_run(chips_dir, tmp_path_factory) -> Path:
    """A one-epoch run at a small image size: a real run folder, not a good model."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    fit(TrainConfig(chips_dir=chips_dir, out_dir=out, epochs=1, image_size=64, batch_size=32, device="cpu", seed=0))
    return out
