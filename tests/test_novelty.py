"""The trust map: a run's novelty summary, and the novelty raster, field and share a scan writes with it.

The model is ImageNet's efficientnet_lite0 with an untrained head, at 96 px (at 32 px ImageNet
features barely tell noise from the hand-made towns): its embeddings are all a novelty summary
needs. Its chips are ``small_chips`` (three hand-made towns, 64 px chips).
"""

from __future__ import annotations

import json
import shutil
import warnings

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch

from schoolvision.cli import main
from schoolvision.data.dataset import ChipDataset
from schoolvision.io.folders import ClusterFolder, ExplainFolder
from schoolvision.io.imagery import list_sources
from schoolvision.model.backbones import build_model
from schoolvision.model.checkpoint import CheckpointMeta, load_classifier, save_checkpoint
from schoolvision.model.runtime import make_runtime
from schoolvision.scan.scene import scan_scene
from schoolvision.train.novelty import (
    FLAG_PERCENTILE,
    NoveltyConfig,
    build_run_summary,
    chip_embeddings,
    fit_summary,
    read_summary,
    scene_warning,
)

from fixtures import write_scene


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """A run folder without a novelty summary (as trained before summaries existed)."""
    run = tmp_path_factory.mktemp("novelty") / "plain"
    torch.manual_seed(0)
    save_checkpoint(run / "best.pt", build_model("efficientnet_lite0", pretrained=True),
                    CheckpointMeta("efficientnet_lite0", 96, 64, 1.0))
    return run


@pytest.fixture(scope="module")
def run_with_summary(plain_run, small_chips, tmp_path_factory):
    """A copy of ``plain_run`` with ``novelty.npz`` built from ``small_chips`` by the library entry point."""
    run = tmp_path_factory.mktemp("novelty") / "run"
    shutil.copytree(plain_run, run)
    build_run_summary(run, small_chips, device="cpu", runtime="torch", progress=False)
    return run


def _percentiles(run, images: np.ndarray) -> np.ndarray:
    model, meta = load_classifier(run, "cpu")
    runtime = make_runtime("torch", model, meta, "cpu")
    x = torch.nn.functional.interpolate(torch.from_numpy(images), size=(meta.image_size,) * 2, mode="bilinear",
                                        antialias=True, align_corners=False)
    return read_summary(run).percentile(runtime.features(x)[0])


def test_a_training_chip_scores_at_the_bottom_and_noise_at_the_top(run_with_summary, small_chips):
    train = ChipDataset(small_chips, split="train")
    chips = np.stack([train.read_chip(i) for i in (0, 5, len(train) - 1)]).astype(np.float32) / 255
    rng = np.random.default_rng(0)
    noise = rng.random((3, *chips.shape[1:]), dtype=np.float32)
    p_train, p_noise = _percentiles(run_with_summary, chips), _percentiles(run_with_summary, noise)
    assert (p_train == 0).all()  # its own embedding is in the bank: no home chip is closer
    assert (p_noise > FLAG_PERCENTILE).all()  # farther than every held-out home chip


def test_the_reference_is_the_held_out_chips_and_flags_one_percent_of_them(run_with_summary, small_chips):
    summary = read_summary(run_with_summary)
    assert summary.record["reference_splits"] == ["val", "test"]
    model, meta = load_classifier(run_with_summary, "cpu")
    runtime = make_runtime("torch", model, meta, "cpu")
    held_out = [ChipDataset(small_chips, split=s, image_size=meta.image_size, require_classes=False)
                for s in ("val", "test")]
    assert summary.record["reference_chips"] == sum(len(ds) for ds in held_out) == len(summary.reference)
    assert np.all(np.diff(summary.reference) >= 0)
    p = summary.percentile(np.concatenate([chip_embeddings(runtime, ds, progress=False) for ds in held_out]))
    assert (p > FLAG_PERCENTILE).mean() <= 0.01 + 1 / len(p)


@pytest.mark.parametrize("method", ["knn", "gaussian"])
def test_both_summaries_separate_a_shifted_cloud(method):
    rng = np.random.default_rng(1)
    home = rng.normal(size=(600, 16)).astype(np.float32) + 3
    labels = (np.arange(600) % 3 == 0).astype(int)
    shifted = home[:100] + rng.normal(0, 4, size=(100, 16)).astype(np.float32)
    summary = fit_summary(home[:400], labels[:400], home[400:], NoveltyConfig(method=method, k=3))
    assert np.median(summary.percentile(home[400:])) < 70
    assert (summary.percentile(shifted) > FLAG_PERCENTILE).mean() > 0.8


def test_scene_warning_only_above_the_documented_share():
    assert scene_warning("town_07", 0.05) is None
    line = scene_warning("town_07", 0.63)
    assert line.startswith("scene town_07: 63% of its windows look unlike the training data")


def test_novelty_raster_is_on_the_probability_grid_with_nodata_where_not_scanned(run_with_summary, tmp_path):
    # half a metre per pixel: scanned at the run's 1 m GSD, then warped back onto this grid
    path = tmp_path / "fine.tif"
    write_scene(path, seed=3, size=200, gsd=0.5, schools_px=((40, 40, 60),))
    with rasterio.open(path, "r+") as ds:
        ds.nodata = 0
        ds.write(np.zeros((3, 40, 200), np.uint8), window=rasterio.windows.Window(0, 0, 200, 40))
    model, meta = load_classifier(run_with_summary, "cpu")
    out = tmp_path / "fine_probability.tif"
    res = scan_scene(model, meta, list_sources([path])[0], out, progress=False, runtime="torch",
                     novelty=read_summary(run_with_summary))
    assert res.novelty == str(tmp_path / "fine_novelty.tif") and 0 <= res.novelty_share <= 1
    with rasterio.open(out) as p, rasterio.open(res.novelty) as n:
        assert (n.crs, n.transform, n.width, n.height) == (p.crs, p.transform, p.width, p.height)
        prob, nov = p.read(1), n.read(1)
        assert n.nodata == p.nodata
        assert np.array_equal(nov == n.nodata, prob == p.nodata)
        assert (nov[:40] == n.nodata).all()
        assert ((nov[40:] >= 0) & (nov[40:] <= 100 + 1e-3)).all()  # a weighted mean of percentiles (float32)


def test_scan_writes_the_trust_map_and_a_run_without_summary_says_so(plain_run, run_with_summary, town_scenes,
                                                                      tmp_path, capsys):
    scenes, _ = town_scenes
    scene = scenes / "town_00.tif"
    args = ["--imagery", str(scene), "--threshold", "0.01", "--device", "cpu", "--runtime", "torch"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["scan", "--run", str(plain_run), "--out", str(tmp_path / "plain"), *args]) == 0
    lines = [str(w.message) for w in caught if "novelty summary" in str(w.message)]
    assert len(lines) == 1 and "schoolvision novelty --run" in lines[0]
    assert not list((tmp_path / "plain").glob("*_novelty.tif"))
    assert json.loads((tmp_path / "plain" / "scan.json").read_text())["novelty"] == {"summary": None}

    out = tmp_path / "trust"
    assert main(["scan", "--run", str(run_with_summary), "--out", str(out), *args]) == 0
    summary = json.loads((out / "scan.json").read_text())
    share = summary["scenes"][0]["novelty_share"]
    assert summary["novelty"]["summary"] == "knn" and 0 <= share <= 1
    assert (summary["novelty"]["scenes_warned"] == ["town_00"]) == (share > summary["novelty"]["warn_share"])
    assert (out / "town_00_novelty.tif").is_file()
    cands = gpd.read_file(out / "candidates.gpkg", layer="candidates")
    assert len(cands) and "novelty" in cands.columns
    assert ((cands["novelty"] >= 0) & (cands["novelty"] <= 100)).all()
    assert "novelty (unlike the training data)" in (out / "map.html").read_text()


def test_novelty_command_refuses_to_replace_a_summary_without_overwrite(run_with_summary, small_chips, tmp_path,
                                                                        capsys):
    run = shutil.copytree(run_with_summary, tmp_path / "run")
    assert main(["novelty", "--run", str(run), "--chips", str(small_chips), "--device", "cpu"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["novelty", "--run", str(run), "--chips", str(small_chips), "--device", "cpu",
                 "--method", "gaussian", "--overwrite"]) == 0
    assert read_summary(run).record["method"] == "gaussian"


def test_review_orders_by_novelty_and_by_uncertainty_weighted_by_novelty():
    from schoolvision.errors import UserError
    from schoolvision.review.queue import order_items

    items = [{"id": "a", "probability": 0.50, "novelty": 10.0}, {"id": "b", "probability": 0.50, "novelty": 99.5},
             {"id": "c", "probability": 0.95, "novelty": 100.0}, {"id": "d", "probability": 0.60, "novelty": None}]
    assert [it["id"] for it in order_items(items, "novelty", 0.5)] == ["c", "b", "a", "d"]
    # a and b are equally uncertain: the unfamiliar one first; c is unfamiliar but nearly certain
    assert [it["id"] for it in order_items(items, "uncertainty-novelty", 0.5)] == ["b", "a", "d", "c"]
    assert [it["id"] for it in order_items(items, "uncertainty", 0.5)][:2] == ["a", "b"]
    with pytest.raises(UserError, match="novelty summary"):
        order_items([{**it, "novelty": None} for it in items], "novelty", 0.5)


def test_plot_novelty_draws_the_flag_contour():
    import matplotlib

    matplotlib.use("Agg")
    from schoolvision.io.preview import Preview
    from schoolvision.plotting.scan import plot_novelty

    extent = (500_000.0, 500_100.0, 99_900.0, 100_000.0)
    rgb = np.full((50, 50, 3), 120, np.uint8)
    nov = np.ma.masked_less(np.tile(np.linspace(-1, 100, 50, dtype=np.float32), (50, 1)), 0)
    fig = plot_novelty(Preview(rgb, extent, "EPSG:32636"), Preview(nov, extent, "EPSG:32636"), title="t")
    assert fig.axes[1].collections  # the contour at the flag percentile
    assert "99th percentile" in fig.axes[1].get_title()


def test_cluster_reports_each_chips_novelty(run_with_summary, small_chips, tmp_path):
    import pandas as pd

    out = tmp_path / "clusters"
    assert main(["cluster", "--run", str(run_with_summary), "--chips", str(small_chips), "--out", str(out),
                 "--subset", "all", "--split", "all", "--k-max", "3", "--device", "cpu", "--cache",
                 str(tmp_path / "cache"), "--stability-seeds", "1", "--no-tsne"]) == 0
    table = pd.read_csv(out / "clusters.csv")
    train = table["split"] == "train"
    assert (table.loc[train, "novelty"] == 0).all()  # every training chip is in the bank
    assert table.loc[~train, "novelty"].between(0, 100).all() and table.loc[~train, "novelty"].max() > 0
    medians = ClusterFolder(out).read_summary()["novelty_median_by_cluster"]
    assert set(medians) == {str(k) for k in table["cluster"].unique()}


def test_explain_reports_each_chips_novelty(run_with_summary, small_chips, tmp_path):
    import pandas as pd

    from schoolvision.explain.runner import ExplainConfig, explain_chips

    out = tmp_path / "explain"
    explain_chips(ExplainConfig(run_with_summary, small_chips, out, split="train", limit=4, device="cpu",
                                write_maps=False, runtime="torch"))
    table = pd.read_csv(out / "explanations.csv")
    assert (table["novelty"] == 0).all()  # training chips: each is its own nearest neighbour
    assert ExplainFolder(out).read_faithfulness()["novelty_median"] == 0
