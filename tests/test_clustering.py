"""Clustering: k selection, methods, bad input, georeferenced outputs, projector log, CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from shapely.geometry import box

from schoolvision.book.verdicts import framing_profile, framing_verdict, structure_verdict
from schoolvision.cluster.algorithms import (
    ClusterConfig,
    cluster_features,
    k_range,
    nearest_to_centre,
)
from schoolvision.cluster.runner import ClusterRunConfig, cluster_chips, read_cams, write_cluster_vectors
from schoolvision.commands.cluster import write_figures
from schoolvision.errors import UserError
from schoolvision.io.folders import ClusterFolder


def blobs(n_per: int = 40, centres: int = 4, dim: int = 32, spread: float = 0.3, seed: int = 0):
    """Well-separated Gaussian blobs in ``dim`` dimensions and their true labels."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 10, size=(centres, dim))
    x = np.concatenate([m + rng.normal(0, spread, size=(n_per, dim)) for m in means])
    return x.astype(np.float32), np.repeat(np.arange(centres), n_per)


def fast(**kw) -> ClusterConfig:
    return ClusterConfig(tsne=False, stability_seeds=2, **kw)


@pytest.mark.parametrize("method", ["kmeans", "gmm"])
def test_auto_k_finds_the_blobs(method):
    from sklearn.metrics import adjusted_rand_score

    x, truth = blobs(centres=4)
    res = cluster_features(x, fast(method=method, k_max=7))
    assert res.k == 4
    assert adjusted_rand_score(truth, res.labels) > 0.95
    assert list(res.k_selection["k"]) == list(range(2, 8))
    assert {"silhouette", "davies_bouldin", "bic"} <= set(res.k_selection.columns)
    assert res.k_selection.loc[res.k_selection["k"] == 4, "silhouette"].item() == pytest.approx(res.silhouette)
    assert len(res.stability) == 2 and min(res.stability) > 0.9
    assert res.centres.shape == (4, res.dims) and np.isfinite(res.distances).all()


def test_given_k_and_determinism():
    x, _ = blobs(n_per=15, centres=3, seed=1)
    a = cluster_features(x, ClusterConfig(k=5, stability_seeds=1, seed=3))
    b = cluster_features(x, ClusterConfig(k=5, stability_seeds=1, seed=3))
    assert a.k == 5 and len(np.unique(a.labels)) == 5
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.embedding_2d, b.embedding_2d)
    assert a.embedding_2d.shape == (len(x), 2)
    gallery = nearest_to_centre(a, 3)
    for c, idx in gallery.items():
        assert (a.labels[idx] == c).all()
        assert np.all(np.diff(a.distances[idx]) >= 0)


def test_hdbscan_labels_well_separated_blobs():
    from sklearn.metrics import adjusted_rand_score

    x, truth = blobs(n_per=30, centres=3, seed=2)
    res = cluster_features(x, fast(method="hdbscan"))
    assert res.k == 3
    assert res.noise_fraction < 0.1
    assert adjusted_rand_score(truth[res.labels >= 0], res.labels[res.labels >= 0]) > 0.95
    assert res.silhouette > 0.5


def test_hdbscan_all_noise_is_reported():
    x = np.random.default_rng(0).uniform(size=(30, 8))
    with pytest.warns(UserWarning, match="noise"):
        res = cluster_features(x, fast(method="hdbscan", min_cluster_size=20))
    assert res.k == 0 and (res.labels == -1).all()
    assert any("min-cluster-size" in m for m in res.messages)
    assert res.summary()["noise_fraction"] == 1.0


def test_identical_features_are_a_clear_error():
    with pytest.raises(UserError, match="identical"):
        cluster_features(np.ones((20, 16)), fast())


def test_few_chips_clip_the_k_range():
    x, _ = blobs(n_per=2, centres=3)  # 6 chips, k_max 8
    with pytest.warns(UserWarning, match="clipped"):
        res = cluster_features(x, fast(k_max=8))
    assert res.k_selection["k"].max() == 5
    with pytest.raises(UserError, match="at least 3"):
        k_range(2, 2, 8)
    with pytest.raises(UserError, match="does not fit"):
        cluster_features(x, fast(k=9))


def test_pca_keeps_dims_by_variance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3)) @ rng.normal(size=(3, 50)) + 1e-3 * rng.normal(size=(100, 50))
    res = cluster_features(x, fast(k=2, variance=0.95))
    assert res.dims == 3
    assert res.explained[res.dims - 1] >= 0.95 and np.all(np.diff(res.explained) >= -1e-12)


def test_projector_log_loads(tmp_path):
    from google.protobuf import text_format
    from PIL import Image
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    from schoolvision.cluster.projector import write_projector

    n, d = 23, 16
    vectors = np.random.default_rng(0).normal(size=(n, d))
    meta = pd.DataFrame({"chip_id": [f"c{i}" for i in range(n)], "cluster": np.arange(n) % 3, "label": ["a\tb"] * n})
    thumbs = np.random.default_rng(1).integers(0, 255, size=(n, 20, 20, 3), dtype=np.uint8)
    write_projector(tmp_path, vectors, meta, thumbs)
    config = text_format.Parse((tmp_path / "projector_config.pbtxt").read_text(), ProjectorConfig())
    emb = config.embeddings[0]
    assert list(emb.tensor_shape) == [n, d]
    tensor = np.loadtxt(tmp_path / emb.tensor_path, delimiter="\t")
    assert tensor.shape == (n, d)
    np.testing.assert_allclose(tensor, vectors, rtol=1e-5)
    rows = (tmp_path / emb.metadata_path).read_text().splitlines()
    assert len(rows) == n + 1 and rows[0].split("\t") == ["chip_id", "cluster", "label"]
    assert all(len(r.split("\t")) == 3 for r in rows)
    sprite = Image.open(tmp_path / emb.sprite.image_path)
    assert list(emb.sprite.single_image_dim) == [20, 20]
    assert sprite.size == (5 * 20, 5 * 20)  # ceil(sqrt(23)) = 5 cells a side


@pytest.fixture(scope="module")
def clustered(small_chips, small_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("clusters") / "out"
    cfg = ClusterRunConfig(
        small_run, small_chips, out, subset="all", split="all", device="cpu",
        clustering=ClusterConfig(k_max=5, stability_seeds=2), cache_dir=out.parent / "cache", gallery_size=4,
    )
    report = cluster_chips(cfg, progress=False, save_figures=lambda r: write_figures(r, small_chips, cfg.gallery_size))
    return cfg, report


def test_outputs_are_complete_and_consistent(clustered, small_chips):
    cfg, report = clustered
    out = cfg.out_dir
    table = pd.read_csv(out / "clusters.csv")
    chips = pd.read_csv(small_chips / "chips.csv")
    assert len(table) == len(chips)
    for col in ("chip_id", "path", "cluster", "distance", "label", "prediction", "prob", "scene", "split"):
        assert col in table.columns
    summary = ClusterFolder(out).read_summary()
    assert summary["n_chips"] == len(table) and summary["k"] == table["cluster"].nunique()
    assert 2 <= summary["k"] <= 5 and -1 <= summary["silhouette"] <= 1
    assert summary["pca_dims"] >= 1 and len(summary["stability_ari"]) == 2
    assert summary["gallery_cams"] > 0  # live Grad-CAM overlays on the gallery chips
    assert set(report.cams) == set(report.gallery) and len(report.gallery) == summary["gallery_cams"]
    assert all(img.ndim == 3 and img.shape[-1] == 3 for img in report.gallery.values())
    ksel = pd.read_csv(out / "k_selection.csv")
    assert list(ksel["k"]) == [2, 3, 4, 5]
    figures = ("k_selection.png", "pca_variance.png", "composition.png", "embedding.png", "gallery.png",
               "map_town_00.png")
    for name in figures:
        assert (out / name).stat().st_size > 1000, name
    assert summary["figures"] == [*figures, "map_town_01.png", "map_town_02.png"]


def test_geojson_has_one_polygon_per_chip_inside_its_scene(clustered, small_chips):
    cfg, report = clustered
    gdf = gpd.read_file(cfg.out_dir / "clusters.geojson")
    assert gdf.crs.to_epsg() == 4326
    assert len(gdf) == len(report.table) and (gdf.geom_type == "Polygon").all()
    assert sorted(gdf["chip_id"]) == sorted(report.table["chip_id"])
    scenes = json.loads((small_chips / "dataset.json").read_text())["scenes"]
    for scene, part in gdf.groupby("scene"):
        info = scenes[scene]
        footprint = box(*info["bounds"]).buffer(0.5)  # half a pixel for reprojection round-off
        assert part.to_crs(info["crs"]).within(footprint).all(), scene
    layer = gpd.read_file(cfg.out_dir / "clusters.gpkg", layer="clusters")
    assert layer.crs.to_epsg() == 32636 and len(layer) == len(gdf)
    assert (layer["cluster"].to_numpy() == report.table["cluster"].to_numpy()).all()


def test_projector_of_a_run(clustered):
    from google.protobuf import text_format
    from PIL import Image
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    cfg, report = clustered
    log = cfg.out_dir / "projector"
    emb = text_format.Parse((log / "projector_config.pbtxt").read_text(), ProjectorConfig()).embeddings[0]
    assert list(emb.tensor_shape) == [len(report.table), report.vectors.shape[1]]
    grid = int(np.ceil(np.sqrt(len(report.table))))
    assert Image.open(log / "sprite.png").size == (grid * emb.sprite.single_image_dim[0],) * 2


def test_rerun_needs_overwrite_and_reuses_features(clustered, monkeypatch):
    cfg, report = clustered
    with pytest.raises(UserError, match="overwrite"):
        cluster_chips(cfg, progress=False)

    def boom(*a, **k):
        raise AssertionError("the model ran although the features were cached")

    monkeypatch.setattr("schoolvision.cluster.embeddings.extract_features", boom)
    folder = cfg.out_dir.parent / "rerun"
    shutil.copytree(cfg.out_dir, folder)  # the fixture's own folder stays as the other tests expect it
    assert list(folder.glob("map_*.png")) and (folder / "gallery.png").exists()
    rerun = dataclasses.replace(cfg, out_dir=folder, overwrite=True, gallery=False, projector=False,
                                subset="true-school", clustering=ClusterConfig(k=2, stability_seeds=1, tsne=False))
    again = cluster_chips(rerun, progress=False)
    assert (again.table["label"] == "school").all() and again.result.k == 2
    assert again.gallery == {} and again.cams == {}
    # the first run's figures and projector describe other clusters: an overwrite must not leave them behind
    leftovers = [p.name for p in folder.iterdir() if p.suffix == ".png" or p.name == "projector"]
    assert leftovers == [], leftovers
    assert ClusterFolder(folder).read_summary()["k"] == 2


def test_cli_prints_k_table(small_chips, small_run, tmp_path, capsys):
    from schoolvision.cli import main

    out = tmp_path / "cli"
    args = ["cluster", "--run", str(small_run), "--chips", str(small_chips), "--out", str(out), "--subset", "all",
            "--split", "test", "--k-max", "4", "--device", "cpu", "--cache", str(tmp_path / "cache"),
            "--stability-seeds", "1", "--no-tsne"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "silhouette" in text and "k=" in text
    assert main(args) == 2  # refuses to overwrite
    assert "overwrite" in capsys.readouterr().err
    bad_k = ["cluster", "--run", str(small_run), "--chips", str(small_chips), "--out", str(tmp_path / "x"),
             "--k", "many"]
    assert main(bad_k) == 2


@pytest.mark.slow
def test_real_run_on_demo_chips(chips_dir, trained_run, tmp_path):
    cfg = ClusterRunConfig(trained_run, chips_dir, tmp_path / "demo", subset="true-school", split="all", device="cpu",
                           clustering=ClusterConfig(stability_seeds=2))
    report = cluster_chips(cfg, progress=False)
    gdf = gpd.read_file(tmp_path / "demo" / "clusters.geojson")
    assert len(gdf) == len(report.table) > 3
    assert report.result.k >= 2 and np.isfinite(report.result.silhouette)


def test_read_cams_scales_and_masks_nodata(tmp_path):
    from affine import Affine

    from schoolvision.io.rasters import write_geotiff

    heat = np.linspace(0, 2, 64, dtype=np.float32).reshape(8, 8)
    heat[0, 0] = -9999.0
    write_geotiff(tmp_path / "gradcam" / "heatmaps" / "chip_a.tif", heat, "EPSG:32636",
                  Affine(1, 0, 500000, 0, -1, 100000), nodata=-9999.0)
    cams = read_cams(tmp_path, ["chip_a", "chip_b"])
    assert set(cams) == {"chip_a"}
    assert cams["chip_a"].min() == 0 and cams["chip_a"].max() == 1 and cams["chip_a"][0, 0] == 0


def test_several_crs_give_one_layer_each(tmp_path):
    table = pd.DataFrame({
        "chip_id": ["a", "b"], "cluster": [0, 1], "scene": ["s1", "s2"],
        "minx": [500000.0, 400000.0], "miny": [100000.0, 200000.0],
        "maxx": [500064.0, 400064.0], "maxy": [100064.0, 200064.0],
        "crs": ["EPSG:32636", "EPSG:32637"],
    })
    write_cluster_vectors(table, tmp_path / "c.gpkg", tmp_path / "c.geojson")
    main_layer = gpd.read_file(tmp_path / "c.gpkg", layer="clusters")
    assert main_layer.crs.to_epsg() == 4326 and len(main_layer) == 2
    exact = gpd.read_file(tmp_path / "c.gpkg", layer="clusters_epsg_32637")
    assert exact.crs.to_epsg() == 32637 and exact["chip_id"].tolist() == ["b"]
    assert exact.geometry.iloc[0].bounds == (400000.0, 200000.0, 400064.0, 200064.0)
    assert len(gpd.read_file(tmp_path / "c.geojson")) == 2


def test_auto_k_does_not_split_off_an_outlier_pair():
    x, _ = blobs(n_per=40, centres=3, dim=16, seed=4)
    outliers = x[:2] + 12.0  # two chips off their blob
    res = cluster_features(np.concatenate([x, outliers]), fast(k_max=6))
    table = res.k_selection.set_index("k")
    assert table.loc[4, "silhouette"] > table.loc[3, "silhouette"]  # silhouette alone would split them off
    assert table.loc[4, "smallest"] == 2
    assert res.k == 3 and np.bincount(res.labels).min() >= 40


def test_a_unit_firing_for_one_chip_does_not_make_a_cluster():
    x, truth = blobs(n_per=40, centres=2, dim=16, seed=5)
    sparse = np.zeros((len(x), 40), dtype=np.float32)
    sparse[7] = 1.0  # 40 dead units that fire for chip 7 only: z = sqrt(n) after standardising
    res = cluster_features(np.concatenate([x, sparse], axis=1), fast(k_max=4))
    assert res.k == 2 and np.bincount(res.labels).min() >= 40


def test_centred_view_keeps_only_the_chips_cut_around_a_school(clustered, small_chips, monkeypatch):
    cfg, report = clustered

    def boom(*a, **k):
        raise AssertionError("the model ran although the features were cached")

    monkeypatch.setattr("schoolvision.cluster.embeddings.extract_features", boom)
    centred = dataclasses.replace(cfg, out_dir=cfg.out_dir.parent / "centred", view="centred", gallery=False,
                                  projector=False,
                                  clustering=ClusterConfig(k=2, k_max=4, stability_seeds=1, tsne=False))
    again = cluster_chips(centred, progress=False)
    chips = pd.read_csv(small_chips / "chips.csv")
    assert len(again.table) == (chips["view"] == "centred").sum() > 0
    assert (again.table["view"] == "centred").all() and (again.table["label"] == "school").all()
    assert ClusterFolder(centred.out_dir).read_summary()["view"] == "centred"
    assert (framing_profile(again.table)["centred"] == 1).all()
    mixed = framing_profile(report.table)  # every view: grid chips hold schools anywhere, often cut by the edge
    assert list(mixed.columns) == ["chips", "centred", "whole_school", "school_fraction"]
    assert mixed["chips"].sum() == len(report.table) and (mixed["centred"] < 1).all()
    with pytest.raises(UserError, match="view"):
        dataclasses.replace(cfg, view="diagonal")


def test_structure_verdict_follows_the_silhouette():
    assert structure_verdict(0.7).startswith("a clear structure")
    assert structure_verdict(0.3).startswith("a weak structure")
    assert structure_verdict(0.2).startswith("no substantial structure")
    assert structure_verdict(None) == structure_verdict(float("nan")) == "no measurable structure"


def test_recluster_view_uses_the_features_in_memory(clustered):
    from schoolvision.cluster.runner import recluster_view

    cfg, report = clustered
    table, result, thumbs = recluster_view(report, "centred", ClusterConfig(k=2, k_max=4, stability_seeds=1,
                                                                           tsne=False))
    assert (table["view"] == "centred").all() and len(table) == (report.table["view"] == "centred").sum()
    assert list(table["cluster"]) == list(result.labels) and set(thumbs) == set(table["chip_id"].astype(str))
    with pytest.raises(UserError, match="view"):
        recluster_view(report, "hard_negative", ClusterConfig(k=2))


def test_framing_verdict_reads_the_profile():
    split = pd.DataFrame({"chips": [10, 10], "centred": [0.1, 0.8], "whole_school": [0.3, 0.4],
                          "school_fraction": [0.7, 0.9]})
    alike = split.assign(centred=[0.5, 0.55])
    assert "separate framings" in framing_verdict(split)
    assert "does not separate" in framing_verdict(alike)
