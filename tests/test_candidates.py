"""Candidates from probability rasters, border de-duplication, evaluation against known schools, the map."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import torch
from affine import Affine
from shapely.geometry import Point, box

from schoolvision.io.folders import read_probability
from schoolvision.io.imagery import list_sources
from schoolvision.io.rasters import write_geotiff
from schoolvision.model.checkpoint import CheckpointMeta
from schoolvision.scan.candidates import (
    MIN_AREA_M2,
    default_min_separation,
    extract_all,
    extract_candidates,
    merge_duplicates,
    write_candidates,
)
from schoolvision.scan.evaluation import evaluate_scan, match, rejected_lookalikes, scores, weakest_finds
from schoolvision.scan.peaks import explain_lookalikes, explain_points, has_heat
from schoolvision.scan.scene import SceneScan

from fixtures import write_red_scene

CRS = "EPSG:32636"


def blobs(shape, centres, sigma=10.0):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    p = np.zeros(shape, np.float32)
    for r, c, peak in centres:
        p = np.maximum(p, peak * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * sigma**2)).astype(np.float32))
    return p


def scene_scan(tmp_path, name, prob, x0=500_000.0, y0=100_000.0, gsd=1.0):
    tf = Affine(gsd, 0, x0, 0, -gsd, y0)
    path = write_geotiff(tmp_path / f"{name}_probability.tif", prob, CRS, tf, nodata=-1.0, overviews=True)
    return SceneScan(name, "", str(path), CRS, prob.shape[1], prob.shape[0], gsd, 0, 0, 0.0, 0.0), tf


def test_regions_become_ranked_candidates_at_their_peaks():
    prob = blobs((200, 300), [(50, 60, 0.9), (150, 220, 0.7), (150, 60, 0.4)])
    tf = Affine(2.0, 0, 1000.0, 0, -2.0, 5000.0)
    pts, regions = extract_candidates(prob, tf, CRS, 0.5, "s")
    # the layer's shape: columns in order, their kinds, points and regions in the scene's CRS
    assert list(pts.columns) == ["rank", "scene", "max_prob", "mean_prob", "area_m2", "peak", "geometry", "label"]
    assert {c: pts[c].dtype.kind for c in ("rank", "label", "max_prob", "mean_prob", "area_m2")} == {
        "rank": "i", "label": "i", "max_prob": "f", "mean_prob": "f", "area_m2": "f"}
    assert pts.crs == CRS and regions.crs == CRS and list(regions.columns) == ["scene", "label", "geometry"]
    assert set(pts.geom_type) == {"Point"} and set(regions.geom_type) == {"Polygon"}
    assert list(pts["rank"]) == [1, 2] and pts["max_prob"].iloc[0] == pytest.approx(0.9, abs=1e-3)
    assert (pts["max_prob"] >= pts["mean_prob"]).all() and (pts["mean_prob"] >= 0.5).all()
    first = pts.geometry.iloc[0]
    assert (first.x, first.y) == pytest.approx((1000 + 60.5 * 2, 5000 - 50.5 * 2))
    # area of a thresholded Gaussian: pi * r^2 with r = sigma * sqrt(2 ln(peak / t)), in m^2 (4 m^2 per pixel)
    r = 10 * np.sqrt(2 * np.log(0.9 / 0.5))
    assert pts["area_m2"].iloc[0] == pytest.approx(np.pi * r**2 * 4, rel=0.1)
    assert len(regions) == 2 and sorted(regions["label"]) == sorted(pts["label"])
    region_of = dict(zip(regions["label"], regions.geometry))
    assert all(region_of[label].contains(p) for label, p in zip(pts["label"], pts.geometry))  # each peak in its region
    assert not region_of[pts["label"].iloc[1]].contains(first)


def test_neighbouring_schools_blurred_together_are_split_but_a_plateau_is_not():
    tf = Affine(1.0, 0, 0.0, 0, -1.0, 0.0)
    logit = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    yy, xx = np.mgrid[0:100, 0:200]
    two = np.maximum(9 - ((yy - 50) ** 2 + (xx - 70) ** 2) / 300, 9 - ((yy - 50) ** 2 + (xx - 130) ** 2) / 300)
    prob = logit(two).astype(np.float32)
    assert prob[50, 100] > 0.99  # one region above 0.5 and saturated: only log-odds see the valley
    from scipy import ndimage

    assert ndimage.label(prob >= 0.5)[1] == 1
    pts, _ = extract_candidates(prob, tf, CRS, 0.5)
    assert len(pts) == 2 and sorted(round(g.x) for g in pts.geometry) == [70, 130]
    plateau = logit(np.minimum(12.0, 9 - ((yy - 50) ** 2 + (xx - 100) ** 2) / 400)).astype(np.float32)
    assert len(extract_candidates(plateau, tf, CRS, 0.5)[0]) == 1


def test_nothing_above_threshold_gives_an_empty_layer_that_still_writes(tmp_path):
    pts, _ = extract_candidates(np.full((50, 50), 0.1, np.float32), Affine(1, 0, 0, 0, -1, 0), CRS, 0.5)
    assert len(pts) == 0 and pts.crs == CRS
    assert list(pts.columns) == ["rank", "scene", "max_prob", "mean_prob", "area_m2", "peak", "geometry"]
    write_candidates(pts, tmp_path)
    assert gpd.read_file(tmp_path / "candidates.gpkg").empty
    assert json.loads((tmp_path / "candidates.geojson").read_text())["features"] == []


def test_nodata_is_never_a_candidate():
    prob = np.full((40, 40), np.nan, np.float32)
    assert len(extract_candidates(prob, Affine(1, 0, 0, 0, -1, 0), CRS, 0.0)[0]) == 0


def test_overlapping_scenes_give_one_candidate_per_school(tmp_path):
    # two 200 m scenes overlapping by 100 m, one school in the overlap: seen by both
    a, _ = scene_scan(tmp_path, "a", blobs((200, 200), [(100, 150, 0.9)]))
    b, _ = scene_scan(tmp_path, "b", blobs((200, 200), [(100, 52, 0.8)]), x0=500_100.0)
    cands, _ = extract_all([a, b], 0.5, merge_distance=30)
    assert len(cands) == 1 and cands["scene"].iloc[0] == "a"
    assert cands["max_prob"].iloc[0] == pytest.approx(0.9, abs=1e-3)
    # two distinct schools 80 m apart in one scene are kept apart (within a scene only half the distance merges)
    c, _ = scene_scan(tmp_path, "c", blobs((200, 200), [(100, 60, 0.9), (100, 140, 0.9)]))
    assert len(extract_all([c], 0.5, merge_distance=150)[0]) == 2
    assert len(extract_all([c], 0.5, merge_distance=170)[0]) == 1


def test_merge_only_joins_different_scenes():
    g = gpd.GeoDataFrame({"scene": ["a", "a", "b"], "max_prob": [0.9, 0.8, 0.7], "mean_prob": [0.6] * 3,
                          "area_m2": [1.0] * 3, "rank": [1, 2, 3]},
                         geometry=[Point(0, 0), Point(10, 0), Point(5, 0)], crs=CRS)
    merged = merge_duplicates(g, 20)
    assert len(merged) == 1 and merged["max_prob"].iloc[0] == 0.9


def test_read_probability_decimates_big_rasters(tmp_path):
    s, tf = scene_scan(tmp_path, "big", blobs((600, 500), [(300, 250, 0.9)], sigma=40))
    prob, tf2, crs = read_probability(s.probability, max_side=100)
    assert prob.shape == (100, 83) or max(prob.shape) <= 100
    assert tf2.a == pytest.approx(tf.a * 500 / prob.shape[1])
    assert np.nanmax(prob) > 0.8


def test_a_scan_raster_is_read_at_a_sixteenth_of_its_window_stride(tmp_path):
    import rasterio

    from schoolvision.io.scans import STRIDE_TAG
    from schoolvision.scan.candidates import FIELD_PER_STRIDE

    s, tf = scene_scan(tmp_path, "strided", blobs((256, 192), [(100, 90, 0.9)], sigma=30))
    full, _, _ = read_probability(s.probability)
    with rasterio.open(s.probability, "r+") as ds:
        ds.update_tags(**{STRIDE_TAG: "64"})
    prob, tf2, _ = read_probability(s.probability, per_stride=FIELD_PER_STRIDE)
    assert prob.shape == (64, 48) and tf2.a == tf.a * 4 and (tf2.c, tf2.f) == (tf.c, tf.f)
    np.testing.assert_array_equal(prob, full[2::4, 2::4])  # the raster's own values: a plateau stays flat
    assert read_probability(s.probability)[0].shape == full.shape  # other readers get every pixel


def test_a_plateau_flat_to_float_noise_is_one_candidate():
    from scipy import ndimage

    from schoolvision.scan.candidates import ProbabilityField
    from schoolvision.scan.maxima import EIGHT, h_maxima

    prob = np.full((200, 200), 0.01, np.float32)
    values = np.float32(0.8542508) + np.array([-1, 0, 1], np.float32) * np.spacing(np.float32(0.8542508))
    prob[40:120, 50:150] = np.random.default_rng(0).choice(values, (80, 100))  # windows a float32 unit apart
    field = ProbabilityField(prob, Affine(1.0, 0, 500_000.0, 0, -1.0, 100_000.0), CRS, "s")
    exact = h_maxima(field.logit, field.dip)  # tolerance 0: every pixel at the top value is its own top
    assert ndimage.label(exact, structure=EIGHT)[1] > 10
    points, _ = field.candidates(0.5, min_area_m2=0)
    assert len(points) == 1 and points["area_m2"].iloc[0] == 80 * 100


def test_evaluation_counts_found_missed_and_false_alarms(tmp_path):
    s, tf = scene_scan(tmp_path, "t", blobs((300, 300), [(50, 50, 0.95), (150, 150, 0.8), (250, 250, 0.6)]))
    cands, _ = extract_all([s], 0.5, min_area_m2=0)  # toy blobs, some smaller than a school at 0.9
    x0, y0 = 500_000.0, 100_000.0
    schools = gpd.GeoDataFrame(
        {"name": ["near", "second", "far"]},
        geometry=[box(x0 + 40, y0 - 60, x0 + 60, y0 - 40),      # contains candidate 1
                  box(x0 + 180, y0 - 140, x0 + 200, y0 - 120),  # 30 m from candidate 2
                  box(x0 + 20, y0 - 280, x0 + 40, y0 - 260)],   # nowhere near a candidate
        crs=CRS,
    ).to_crs("EPSG:4326")
    path = tmp_path / "schools.geojson"
    schools.to_file(path)
    ev, layers = evaluate_scan(cands, [s], path, distance=50, threshold=0.5, min_area_m2=0)
    assert (ev["schools"], ev["candidates"], ev["true_positives"]) == (3, 3, 2)
    assert ev["recall"] == pytest.approx(2 / 3, abs=1e-3) and ev["precision"] == pytest.approx(2 / 3, abs=1e-3)
    assert [m["name"] for m in ev["missed_schools"]] == ["far"]
    assert [u["rank"] for u in ev["unmatched_candidates"]] == [3]
    assert len(layers["missed_schools"]) == 1 and len(layers["false_alarms"]) == 1
    weakest = weakest_finds(cands, layers["known_schools"], n=5)
    assert list(weakest["school"]) == ["second", "near"]  # found schools only, least probable first
    assert list(weakest["max_prob"]) == sorted(weakest["max_prob"])
    ev20, _ = evaluate_scan(cands, [s], path, distance=20, threshold=0.5, min_area_m2=0)
    assert ev20["true_positives"] == 1  # "second" is 30 m away
    curve = {round(p["threshold"], 2): p for p in ev["pr_curve"]}
    assert curve[0.9]["candidates"] == 1 and curve[0.9]["precision"] == 1.0
    assert curve[0.5]["recall"] == pytest.approx(2 / 3, abs=1e-3)


def test_rejected_lookalikes_are_below_the_threshold_and_away_from_schools(tmp_path):
    # peaks: 0.95 (a candidate), 0.45 and 0.3 (turned down), 0.4 on a known school, 0.02 (under the floor)
    prob = blobs((300, 400), [(50, 50, 0.95), (150, 150, 0.45), (250, 250, 0.3), (60, 300, 0.4), (250, 60, 0.02)])
    s, _ = scene_scan(tmp_path, "t", prob)
    x0, y0 = 500_000.0, 100_000.0
    schools = gpd.GeoDataFrame({"name": ["known"]}, geometry=[box(x0 + 290, y0 - 70, x0 + 310, y0 - 50)],
                               crs=CRS).to_crs("EPSG:4326")
    near = rejected_lookalikes([s], schools, threshold=0.5, distance=50, floor=0.05)
    assert near.crs.to_epsg() == 4326
    assert list(near["max_prob"].round(2)) == [0.45, 0.3]  # strongest first; the school and the floor are out
    pts = near.to_crs(CRS).geometry
    got = np.array([(y0 - p.y, p.x - x0) for p in pts])
    assert np.abs(got - [(150.5, 150.5), (250.5, 250.5)]).max() <= 1.0  # at the peaks' pixel centres
    assert len(rejected_lookalikes([s], schools, threshold=0.5, n=1)) == 1
    assert len(rejected_lookalikes([s], schools, threshold=0.2)) == 0


def test_matching_is_one_to_one():
    c = gpd.GeoDataFrame({"max_prob": [0.9, 0.8]}, geometry=[Point(0, 0), Point(1, 0)], crs=CRS)
    s = gpd.GeoDataFrame({"name": ["x"]}, geometry=[Point(0.5, 0)], crs=CRS)
    assert match(c, s, 10) == [(0, 0, 0.5)]
    assert scores(0, 0, 0) == {"recall": 0.0, "precision": 0.0, "f1": 0.0}


def test_map_is_self_contained(tmp_path):
    from schoolvision.io.imagery import list_sources
    from schoolvision.scan.webmap import save_map, scan_map

    img = np.random.default_rng(0).integers(0, 255, (3, 200, 200), dtype=np.uint8)
    write_geotiff(tmp_path / "t.tif", img, CRS, Affine(1, 0, 500_000.0, 0, -1, 100_000.0))
    s, _ = scene_scan(tmp_path, "t", blobs((200, 200), [(100, 100, 0.9)]))
    cands, _ = extract_all([s], 0.5)
    the_map = scan_map([s], cands, {"t": list_sources([tmp_path / "t.tif"])[0]})
    html = save_map(the_map, tmp_path / "map.html").read_text()
    assert "cdn." not in html and "https://code.jquery" not in html
    assert all(part in html for part in ("L.imageOverlay", "sv-candidate", "bindPopup", "data:image/png;base64"))
    assert "data:image/webp;base64" in html  # the scene photo: WebP with its alpha, a tenth of a PNG's bytes


def test_map_threads_leak_no_warning_that_rasterio_silences(tmp_path, monkeypatch):
    """rasterio silences NotGeoreferencedWarning with catch_warnings, which threads undo for each other."""
    import time
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    from schoolvision.scan import webmap

    def like_rasterio(enter: float, warn: float, exit_: float, result):
        def overlay(*_args, **_kwargs):
            time.sleep(enter)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                time.sleep(warn)
                warnings.warn("Dataset has no geotransform", NotGeoreferencedWarning, stacklevel=1)
                time.sleep(exit_)
            return result
        return overlay

    img = np.random.default_rng(0).integers(0, 255, (3, 200, 200), dtype=np.uint8)
    write_geotiff(tmp_path / "t.tif", img, CRS, Affine(1, 0, 500_000.0, 0, -1, 100_000.0))
    s, _ = scene_scan(tmp_path, "t", blobs((200, 200), [(100, 100, 0.9)]))
    cands, _ = extract_all([s], 0.5)
    bounds = [[0.0, 0.0], [0.001, 0.001]]
    # the scene's thread enters first and leaves while the probability's thread is still inside
    monkeypatch.setattr(webmap, "scene_png", like_rasterio(0.0, 0.0, 0.2, ("data:,", bounds)))
    monkeypatch.setattr(webmap, "probability_png", like_rasterio(0.1, 0.2, 0.0, ("data:,", bounds)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        webmap.scan_map([s], cands, {"t": list_sources([tmp_path / "t.tif"])[0]})
    assert not [w for w in caught if issubclass(w.category, NotGeoreferencedWarning)]


def test_probability_figure_with_every_school_found_draws_without_warnings(tmp_path):
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    from schoolvision.io.preview import read_band_preview, read_rgb_preview
    from schoolvision.plotting.scan import plot_probability

    rgb = np.full((3, 300, 300), 120, np.uint8)
    tf = Affine(1.0, 0, 500_000.0, 0, -1.0, 100_000.0)
    scene = write_geotiff(tmp_path / "scene.tif", rgb, CRS, tf)
    s, _ = scene_scan(tmp_path, "scene", blobs((300, 300), [(50, 50, 0.95)]))
    cands, _ = extract_all([s], 0.5)
    schools = gpd.GeoDataFrame({"name": ["a"], "found": [True]}, geometry=[box(500_040, 99_940, 500_060, 99_960)],
                               crs=CRS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # an empty "missed" layer must not be plotted (geopandas warns)
        fig = plot_probability(read_rgb_preview(scene), read_band_preview(s.probability), cands, schools,
                               threshold=0.5, title="scene")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["known school, found", "candidate (rank)"]
    assert fig.axes[0].get_title() == "scene" and fig.axes[0].get_xlim() == (500_000.0, 500_300.0)


# --------------------------------------------------------------------------- the sweep's reuse changes no number


def _per_threshold_reference(prob, threshold):
    """The extraction as it ran before the sweep reused the log-odds peaks: everything again at each threshold."""
    from scipy import ndimage
    from skimage.segmentation import watershed

    from schoolvision.scan.candidates import PLATEAU_TOLERANCE
    from schoolvision.scan.maxima import h_maxima  # skimage's at tolerance 0 (test_one_sort_h_maxima_is_skimages)

    finite = np.isfinite(prob)
    p = np.clip(np.where(finite, prob, 0.0), 1 - 0.999, 0.999)
    above = finite & (p >= threshold)
    if not above.any():
        return []
    logit = np.log(p / (1 - p)).astype(np.float64)
    eight = np.ones((3, 3), bool)
    tops = h_maxima(logit, 0.5, PLATEAU_TOLERANCE / (p * (1 - p))).astype(bool)  # a plateau's top within float noise
    markers, n = ndimage.label(tops & above, structure=eight)
    labels = watershed(-logit, markers, mask=above, connectivity=2).astype(np.int32)
    rest, m = ndimage.label(above & (labels == 0), structure=eight)
    labels[rest > 0] = rest[rest > 0] + n
    idx = np.arange(1, n + m + 1)
    vals = np.nan_to_num(prob, nan=0.0)
    return list(zip(ndimage.maximum(vals, labels, idx), ndimage.mean(vals, labels, idx),
                    np.bincount(labels.ravel(), minlength=n + m + 1)[1:], ndimage.maximum_position(vals, labels, idx)))


def _rough_field(seed, shape=(240, 320), levels=200, offset=-2.0):
    """Blurred noise as P(school): many regions, neighbours blurred together, NaN corner; rounded, so maxima tie."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    z = ndimage.gaussian_filter(rng.normal(size=shape), 7) * 45 + offset
    prob = (1 / (1 + np.exp(-z))).astype(np.float32)
    prob[:12, :40] = np.nan
    return np.round(prob * levels).astype(np.float32) / levels


def test_regions_prepared_once_equal_the_per_threshold_extraction():
    from schoolvision.scan.candidates import PLATEAU_TOLERANCE, ProbabilityField
    from schoolvision.scan.maxima import h_maxima

    tf = Affine(1.0, 0, 500_000.0, 0, -1.0, 100_000.0)
    # sparse schools, two pairs blurred together, weak peaks near the sweep's lowest thresholds: the peaks' crop
    sparse = blobs((240, 320), [(50, 60, 0.95), (50, 85, 0.9), (150, 200, 0.3), (160, 225, 0.25), (200, 60, 0.12),
                                (120, 290, 0.6), (125, 300, 0.58)], sigma=9)
    fields = [_rough_field(seed, levels=levels, offset=offset)
              for seed, levels, offset in ((0, 200, -2), (1, 20, -2), (2, 10**6, -2), (3, 5, -2), (4, 10**6, -4))]
    for seed, prob in enumerate([*fields, np.maximum(sparse, 0.001)]):
        field, sweep_field = ProbabilityField(prob, tf, CRS, "s"), ProbabilityField(prob, tf, CRS, "s")
        every_peak = h_maxima(field.logit, 0.5, PLATEAU_TOLERANCE / (field.p * (1 - field.p))).astype(bool)  # whole
        sweep = [float(t) for t in np.round(np.arange(0.05, 1.0, 0.05), 2)]  # python floats, as the sweep passes
        for t in [0.5, *sweep, 0.01]:  # the tuned threshold first, as a scan does; 0.01 recomputes the peaks
            expected = _per_threshold_reference(prob, t)
            above = field.finite & (field.p >= t)
            assert np.array_equal(field.peaks(t) & above, every_peak & above), (seed, t)  # cropped per part: the same
            pts, _ = field.points(t, min_area_m2=0)  # the reference keeps every region
            got = list(zip(pts["max_prob"], pts["mean_prob"], pts["area_m2"], pts.geometry))
            assert len(got) == len(expected), (seed, t)
            peaks = [(float(mx), tf @ (c + 0.5, r + 0.5)) for mx, _, _, (r, c) in expected]
            for (mx, mn, area, _), (emx, emn, ecnt, _) in zip(got, expected):
                assert (mx, mn, area) == (float(emx), float(emn), float(ecnt)), (seed, t)
            assert [(mx, (pt.x, pt.y)) for mx, _, _, pt in got] == peaks, (seed, t)  # ties broken as ndimage does
            # the sweep's reuse of the lowest threshold's basins: the same regions, at the same peaks
            swept, _ = sweep_field.points(t, min_area_m2=0, reuse=True)
            assert [(mx, (pt.x, pt.y)) for mx, pt in zip(swept["max_prob"], swept.geometry)] == peaks, (seed, t)


@pytest.mark.parametrize("separation", [0.0, 16.0])
def test_evaluation_sweep_counts_are_those_of_a_fresh_extraction_at_each_threshold(tmp_path, separation):
    """The sweep (reused peaks and basins, arrays instead of frames) against the plain path, on the same input.

    Rough fields rounded so that maxima tie, two overlapping scenes (merging across them), 25 schools: at every
    threshold the curve counts what :func:`extract_all` and :func:`match` give there, whatever the CPU rounds;
    with a minimum separation too (the peaks it keeps do not depend on the threshold either).
    """
    scenes = []
    for i, x0 in enumerate((500_000.0, 500_200.0)):
        s, _ = scene_scan(tmp_path, f"s{i}", _rough_field(i), x0=x0)
        scenes.append(s)
    xy = np.random.default_rng(7).uniform([500_000, 99_760], [500_520, 100_000], (25, 2))
    schools = gpd.GeoDataFrame({"name": [f"k{i}" for i in range(25)]},
                               geometry=[box(x, y, x + 15, y + 15) for x, y in xy], crs=CRS).to_crs(4326)
    cands, regions = extract_all(scenes, 0.5, merge_distance=32, min_separation=separation)
    assert 0 < len(cands) <= len(regions)  # a region is one candidate at most; merging across scenes drops some
    ev, _ = evaluate_scan(cands, scenes, schools, 30.0, 0.5, 32, min_separation=separation)
    assert (ev["candidates"], ev["true_positives"]) == (len(cands), len(match(cands, schools, 30.0)))
    expected = []
    for t in np.round(np.arange(0.05, 1.0, 0.05), 2):
        fresh, _ = extract_all(scenes, float(t), merge_distance=32, min_separation=separation)
        expected.append((len(fresh), len(match(fresh, schools, 30.0))))
    assert [(p["candidates"], p["true_positives"]) for p in ev["pr_curve"]] == expected
    assert len({n for n, _ in expected}) > 3 and expected[-1][1] < expected[0][1]  # the sweep is not trivial
    assert ev["recall_ceiling"] == max(p["recall"] for p in ev["pr_curve"]) >= ev["recall"]


def test_min_area_drops_a_speck_but_keeps_a_school(tmp_path):
    # a school-sized blob, and an 8 m^2 speck (2 x 4 px at 1 m) just above the threshold: the false alarm of issue 16
    prob = blobs((200, 200), [(60, 60, 0.95)], sigma=12)
    prob[150:152, 140:144] = 0.7
    s, _ = scene_scan(tmp_path, "t", prob)
    every, _ = extract_all([s], 0.5, min_area_m2=0)
    kept, regions = extract_all([s], 0.5, min_area_m2=MIN_AREA_M2)
    assert sorted(every["area_m2"]) == [8.0, pytest.approx(every["area_m2"].max())] and len(every) == 2
    assert len(kept) == 1 and kept["area_m2"].iloc[0] > MIN_AREA_M2 and kept["max_prob"].iloc[0] > 0.9
    assert len(regions) == 1  # the speck's region goes too
    x0, y0 = 500_000.0, 100_000.0
    school = gpd.GeoDataFrame({"name": ["a"]}, geometry=[box(x0 + 50, y0 - 70, x0 + 70, y0 - 50)], crs=CRS)
    ev, layers = evaluate_scan(kept, [s], school.to_crs("EPSG:4326"), threshold=0.5, min_area_m2=MIN_AREA_M2)
    assert (ev["candidates"], ev["precision"], ev["min_area_m2"]) == (1, 1.0, MIN_AREA_M2)
    assert len(layers["false_alarms"]) == 0
    curve = {round(p["threshold"], 2): p for p in ev["pr_curve"]}
    assert curve[0.5]["candidates"] == 1 and curve[0.65]["candidates"] == 1  # the curve drops the speck too
    ev0, _ = evaluate_scan(every, [s], school.to_crs("EPSG:4326"), threshold=0.5, min_area_m2=0)
    assert ev0["precision"] == 0.5 and {round(p["threshold"], 2): p for p in ev0["pr_curve"]}[0.5]["candidates"] == 2


def test_rejected_lookalikes_are_distinct_places(tmp_path):
    # one weak blob whose low shoulders hold several small bumps (regions) close together, and two other places
    bumps = [(100, 100, 0.4), (100, 118, 0.35), (118, 100, 0.33), (84, 90, 0.32), (112, 120, 0.31)]
    prob = blobs((400, 400), bumps + [(300, 300, 0.3), (80, 320, 0.25)], sigma=4)
    prob[5:7, 200:204] = 0.45  # an 8 m^2 speck, stronger than all of them
    s, _ = scene_scan(tmp_path, "t", prob)
    none = gpd.GeoDataFrame({"name": []}, geometry=[], crs="EPSG:4326")
    crowded = rejected_lookalikes([s], none, threshold=0.5, n=6)
    assert len(crowded) == 6  # without separation: the speck and the bumps of one place fill the list
    chip = 64.0
    spread = rejected_lookalikes([s], none, threshold=0.5, n=6, separation=chip, min_area_m2=MIN_AREA_M2)
    pts = spread.to_crs(CRS).geometry
    d = np.hypot(pts.x.to_numpy()[:, None] - pts.x.to_numpy()[None], pts.y.to_numpy()[:, None] - pts.y.to_numpy()[None])
    assert len(spread) == 3 and (d[np.triu_indices(len(pts), 1)] > chip).all()  # distinct places, a chip apart
    assert list(spread["max_prob"].round(2)) == [0.4, 0.3, 0.25]  # the strongest of each place, strongest first
    assert (spread["area_m2"] >= MIN_AREA_M2).all()


class RedCam(torch.nn.Module):
    """P(school) from the red share; its grad-CAM is the red pixels, and all zero on a chip without any."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight[:] = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)
            self.conv.bias[:] = -0.3  # grey ground (RGB 60-120) never reaches 0, a red roof does
        self.target_layer = self.conv
        self.target_layer_name = "conv"

    def forward(self, x):
        s = 40 * (torch.relu(self.conv(x)).mean((1, 2, 3)) - 0.02)
        return torch.stack([torch.zeros_like(s), s], 1)


def test_explained_lookalikes_show_a_heatmap(tmp_path):
    # two faint red roofs (look-alikes) and two places of bare ground, whose grad-CAM is empty
    path = write_red_scene(tmp_path / "t.tif", 256, 256, squares=[(30, 30, 10), (180, 170, 12)], crs=CRS)
    source = list_sources([path])[0]
    x0, y0 = 500_000.0, 100_000.0
    rc = [(120, 120), (35, 35), (220, 40), (186, 176)]  # (row, col) pixel centres: ground, roof, ground, roof
    places = gpd.GeoDataFrame({"scene": source.name, "max_prob": [0.4, 0.3, 0.2, 0.1]},
                              geometry=[Point(x0 + c + 0.5, y0 - r - 0.5) for r, c in rc], crs=CRS)
    meta = CheckpointMeta(backbone="efficientnet_lite0", image_size=64, chip_size=64, gsd=1.0, threshold=0.5)
    model = RedCam()
    _, _, cams = explain_points(model, meta, places, {source.name: source})
    assert list(has_heat(cams)) == [False, True, False, True]  # the blank panels of the issue
    kept, chips, probs, cams = explain_lookalikes(model, meta, places, {source.name: source}, n=6)
    assert list(kept["max_prob"]) == [0.3, 0.1] and len(chips) == len(probs) == len(cams) == 2
    assert has_heat(cams).all() and all((c > 0.5).any() for c in cams)
    assert len(explain_lookalikes(model, meta, places, {source.name: source}, n=1)[0]) == 1


def test_an_empty_case_gallery_is_a_sentence_not_an_image(capsys):
    from schoolvision.plotting.scan import plot_cases

    none = plot_cases(np.zeros((0, 3, 8, 8), np.uint8), np.zeros((0, 8, 8)), [], empty="Every known school was found.")
    assert none is None
    assert capsys.readouterr().out == "Every known school was found.\n"
    fig = plot_cases(np.zeros((2, 3, 8, 8), np.uint8), np.zeros((2, 8, 8)), ["a", "b"])
    assert fig is not None and len(fig.axes) == 4


def test_one_sort_h_maxima_is_skimages():
    """The single-sort h-maxima equals skimage's on smooth fields, with and without plateaus and ties."""
    from skimage.morphology import h_maxima as skimage_h_maxima

    from schoolvision.scan.maxima import h_maxima

    rng = np.random.default_rng(0)
    found = 0
    for trial in range(6):
        field = rng.normal(size=(50 + 7 * trial, 70)).cumsum(0).cumsum(1) / 10
        if trial % 2:
            field = np.round(field, 1)  # plateaus: ties in the sort
        for h in (0.5, 2.0):
            expected = skimage_h_maxima(field, h)
            assert np.array_equal(h_maxima(field, h), expected), (trial, h)
            found += int(expected.sum())
    assert found > 0


# --------------------------------------------------------------------------- one candidate per school, not per blob


def blended_scan(shape, schools, chip=128, stride=64, top=14.0, reach=35.0):
    """A scan's raster of square schools (row, col, side) at 1 m: windows every ``stride`` px, blended as scans do.

    A window's log-odds fall with the distance from its centre to the nearest school's centre; windows between
    two schools a compound apart still see both, so the raster stays saturated from one school to the other.
    """
    from schoolvision.scan.windows import gaussian_weight

    acc, wsum = np.zeros(shape, np.float64), np.zeros(shape, np.float64)
    weight = gaussian_weight(chip)
    for r0 in range(0, shape[0] - chip + 1, stride):
        for c0 in range(0, shape[1] - chip + 1, stride):
            d = min(np.hypot(r0 + chip / 2 - r, c0 + chip / 2 - c) for r, c, _ in schools)
            p = 1 / (1 + np.exp(-(top - (d / reach) ** 2)))
            acc[r0 : r0 + chip, c0 : c0 + chip] += weight * np.float32(p)
            wsum[r0 : r0 + chip, c0 : c0 + chip] += weight
    return (acc / wsum).astype(np.float32)


def school_boxes(schools, x0=500_000.0, y0=100_000.0):
    return gpd.GeoDataFrame({"name": [f"s{i}" for i in range(len(schools))]}, crs=CRS, geometry=[
        box(x0 + c - side / 2, y0 - r - side / 2, x0 + c + side / 2, y0 - r + side / 2) for r, c, side in schools])


@pytest.mark.parametrize("gap", [80.0, 100.0, 120.0])
def test_two_schools_in_one_region_are_two_candidates_each_at_its_school(tmp_path, gap):
    side = 60.0
    schools = [(320, 200, side), (320, 200 + side + gap, side)]  # footprints ``gap`` metres apart, edge to edge
    prob = blended_scan((640, 704), schools)
    from scipy import ndimage

    assert ndimage.label(prob >= 0.5)[1] == 1 and prob[320, int(200 + (side + gap) / 2)] > 0.999  # one saturated blob
    s, _ = scene_scan(tmp_path, "pair", prob)
    known = school_boxes(schools)
    separation = default_min_separation(128, 1.0)
    before, _ = extract_all([s], 0.5, merge_distance=64, min_area_m2=MIN_AREA_M2)
    assert len(before) == 1  # what the valley rule alone gives: one candidate for two schools
    cands, regions = extract_all([s], 0.5, merge_distance=64, min_area_m2=MIN_AREA_M2, min_separation=separation)
    assert len(cands) == 2 and len(regions) == 2
    pairs = match(cands, known.to_crs(4326), 50.0)
    assert sorted(j for _, j, _ in pairs) == [0, 1]  # each school has its own candidate within the match distance
    region_of = dict(zip(regions["label"], regions.geometry))
    assert all(region_of[label].contains(p) for label, p in zip(cands["label"], cands.geometry))
    assert not region_of[cands["label"].iloc[0]].intersects(cands.geometry.iloc[1])  # a footprint per school
    ev, _ = evaluate_scan(cands, [s], known.to_crs(4326), 50.0, 0.5, 64, min_area_m2=MIN_AREA_M2,
                          min_separation=separation)
    assert (ev["recall"], ev["precision"], ev["recall_ceiling"]) == (1.0, 1.0, 1.0)
    assert {round(p["threshold"], 2): p for p in ev["pr_curve"]}[0.5]["candidates"] == 2  # the sweep splits too


def test_one_school_stays_one_candidate(tmp_path):
    for side in (40.0, 120.0):
        schools = [(320, 320, side)]
        s, _ = scene_scan(tmp_path, f"one{side:g}", blended_scan((640, 640), schools, reach=35.0 + side / 4))
        cands, _ = extract_all([s], 0.5, merge_distance=64, min_area_m2=MIN_AREA_M2,
                               min_separation=default_min_separation(128, 1.0))
        assert len(cands) == 1 and len(match(cands, school_boxes(schools).to_crs(4326), 50.0)) == 1
