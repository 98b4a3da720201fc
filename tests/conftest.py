"""Shared, session-scoped fixtures: a small seeded demo, its chips and a tiny trained run.

They are built once per test session in a temporary folder and reused by every area's tests.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """Three small synthetic towns (one per split) with school footprints."""
    from schoolvision.data.synthetic import make_demo

    out = tmp_path_factory.mktemp("demo") / "demo"
    make_demo(out, towns=3, seed=0, size=768, gsd=1.0)
    return out


@pytest.fixture(scope="session")
def chips_dir(demo_dir, tmp_path_factory):
    """Labelled chips of :func:`demo_dir` (train / val / test = one town each)."""
    from schoolvision.data.chips import ChipConfig, make_chips

    out = tmp_path_factory.mktemp("chips") / "chips"
    make_chips([demo_dir / "scenes"], demo_dir / "schools.geojson", out, ChipConfig())
    return out


@pytest.fixture(scope="session")
def trained_run(chips_dir, tmp_path_factory):
    """A one-epoch run at a small image size: a real run folder, not a good model."""
    from schoolvision.train.fit import TrainConfig, fit

    out = tmp_path_factory.mktemp("runs") / "tiny"
    fit(TrainConfig(chips_dir=chips_dir, out_dir=out, epochs=1, image_size=64, batch_size=32, device="cpu", seed=0))
    return out
