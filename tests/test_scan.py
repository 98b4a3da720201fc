"""Scene scanning: grid coverage, blending, resampling back to the scene grid, bad input, CLI.

Scenes are small seeded GeoTIFFs with a real UTM CRS (``fixtures.write_red_scene``). Most tests use a tiny
"red roof" model (P(school) rises with the share of red pixels in a window) so that where the
probability must be high is known; the CLI test uses a real checkpoint from ``save_checkpoint``.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS

from schoolvision.data.windows import window_offsets
from schoolvision.errors import UserError
from schoolvision.io.imagery import list_sources
from schoolvision.io.rasters import BLOCK
from schoolvision.model.backbones import build_model
from schoolvision.model.checkpoint import CheckpointMeta, save_checkpoint
from schoolvision.scan import scene as scene_module
from schoolvision.scan.probability import RowBlender
from schoolvision.scan.runner import ScanConfig, run_scan
from schoolvision.scan.scene import scan_scene
from schoolvision.scan.windows import gaussian_weight

from fixtures import write_red_scene

UTM = CRS.from_epsg(32636)
ORIGIN = (500_000.0, 100_000.0)


class RedModel(torch.nn.Module):
    """Logit of 'school' = 40 * (share of red pixels - 0.05): a red square is a school."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)  # a target layer, so grad-CAM has something to hook
        self.target_layer = self.conv
        self.target_layer_name = "conv"

    def forward(self, x):
        red = ((x[:, 0] > 0.8) & (x[:, 1] < 0.3)).float().mean((1, 2))
        feat = self.conv(x).mean((1, 2, 3)) * 0
        s = 40 * (red - 0.05) + feat
        return torch.stack([torch.zeros_like(s), s], 1)


def meta(chip=64, gsd=1.0, image_size=64):
    return CheckpointMeta(backbone="efficientnet_lite0", image_size=image_size, chip_size=chip, gsd=gsd, threshold=0.5)


def scan(tmp_path, scene, m=None, **kw):
    src = list_sources([scene])[0]
    out = tmp_path / f"{src.name}_probability.tif"
    res = scan_scene(RedModel(), m or meta(), src, out, progress=False, runtime="torch", **kw)
    with rasterio.open(out) as ds:
        return res, ds.read(1), ds.profile, ds


def test_window_offsets_cover_every_pixel():
    for length in (1, 63, 64, 65, 100, 128, 129, 1000):
        offs = window_offsets(length, 64, 32)
        covered = np.zeros(max(length, 64), bool)
        for o in offs:
            covered[o : o + 64] = True
        assert covered[:length].all(), length
        assert offs == sorted(set(offs)) and offs[0] == 0
        assert all(o + 64 <= max(length, 64) for o in offs)
    with pytest.raises(UserError):
        window_offsets(100, 64, 0)


def test_gaussian_weight_peaks_in_centre_and_is_positive():
    w = gaussian_weight(64)
    assert w.shape == (64, 64) and w.min() > 0
    assert w[31, 31] == w.max() and w[0, 0] == w.min()


def test_probability_raster_matches_scene_grid_and_finds_red(tmp_path):
    scene = write_red_scene(tmp_path / "s.tif", 300, 333, squares=[(100, 150, 30)])
    res, prob, prof, _ = scan(tmp_path, scene, stride=16)
    with rasterio.open(scene) as s:
        assert (prof["crs"], prof["transform"]) == (s.crs, s.transform)
        assert (prof["width"], prof["height"]) == (s.width, s.height)
    assert prof["dtype"] == "float32" and prof["nodata"] == -1
    assert (prob >= 0).all() and (prob <= 1).all()  # every data pixel has a value, border strips included
    assert prob[110:125, 160:175].mean() > 0.8
    assert prob[:40, :40].max() < 0.2 and prob[-40:, -40:].max() < 0.2
    assert res.windows == len(window_offsets(300, 64, 16)) * len(window_offsets(333, 64, 16))


def test_resampled_scan_goes_back_to_scene_grid(tmp_path):
    scene = write_red_scene(tmp_path / "fine.tif", 400, 380, gsd=0.5, squares=[(200, 200, 60)])
    res, prob, prof, _ = scan(tmp_path, scene, m=meta(gsd=1.0))
    assert res.scan_gsd == pytest.approx(1.0)
    with rasterio.open(scene) as s:
        assert (prof["crs"], prof["transform"]) == (s.crs, s.transform)
        assert (prof["width"], prof["height"]) == (s.width, s.height)
    assert (prob >= 0).all()
    assert prob[220:240, 220:240].mean() > 0.6


def test_geographic_scene_is_scanned_in_utm_and_written_in_its_crs(tmp_path, monkeypatch):
    grids = []  # (CRS, pixel size) of the grid the windows are read from
    open_source = scene_module.open_source

    @contextlib.contextmanager
    def spy(*args, **kwargs):
        with open_source(*args, **kwargs) as ds:
            grids.append((ds.crs, ds.transform.a, -ds.transform.e))
            yield ds

    monkeypatch.setattr(scene_module, "open_source", spy)
    tf = Affine(1e-5, 0, 33.0, 0, -1e-5, 1.0)  # lon 33 E, lat 1 N: UTM zone 36 N
    scene = write_red_scene(tmp_path / "geo.tif", 200, 200, crs=CRS.from_epsg(4326), transform=tf,
                            squares=[(80, 80, 40)])
    res, prob, prof, _ = scan(tmp_path, scene)
    assert prof["crs"] == CRS.from_epsg(4326) and prof["transform"] == tf
    assert len(grids) == 1 and grids[0][0] == CRS.from_epsg(32636)
    assert grids[0][1:] == pytest.approx((1.0, 1.0)) and res.scan_gsd == pytest.approx(1.0)  # metres, the run's GSD
    assert res.crs == "EPSG:4326"
    assert (prob >= 0).all()
    assert prob[90:110, 90:110].mean() > 0.6


def test_nodata_is_skipped_not_scored(tmp_path):
    scene = write_red_scene(tmp_path / "nd.tif", 256, 256, nodata_rows=128)
    res, prob, _, _ = scan(tmp_path, scene, stride=32)
    assert (prob[:128] == -1).all()
    assert (prob[128:] >= 0).all()
    assert res.skipped_windows > 0


def test_small_scene_is_padded_with_warning(tmp_path):
    scene = write_red_scene(tmp_path / "tiny.tif", 40, 30, squares=[(5, 5, 20)])
    with pytest.warns(UserWarning, match="smaller than one"):
        res, prob, prof, _ = scan(tmp_path, scene)
    assert prob.shape == (40, 30) and (prob >= 0).all() and res.windows == 1


def test_native_resolution_far_from_training_gsd_warns(tmp_path):
    scene = write_red_scene(tmp_path / "coarse.tif", 128, 128, gsd=3.0)
    with pytest.warns(UserWarning, match="may not transfer"):
        res, *_ = scan(tmp_path, scene, native_resolution=True)
    assert res.scan_gsd == pytest.approx(3.0)


def test_scan_memory_is_a_band_of_rows(tmp_path):
    """The blender holds chip + 256 rows, never the whole scene (the benchmark measures RSS)."""
    class Sink:
        rows = 0

        def write(self, arr, window):
            Sink.rows += window.height

    b = RowBlender(Sink(), 100, 2000, 64)
    for ro in window_offsets(2000, 64, 32):
        for co in window_offsets(100, 64, 32):
            b.add(ro, co, 0.5, np.ones((64, 64), bool))
        assert b.acc.shape == (BLOCK + 64, 100)
    b.finish()
    assert Sink.rows == 2000


# --------------------------------------------------------------------------- whole command


@pytest.fixture
def fake_run(tmp_path):
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", pretrained=False)
    run = tmp_path / "run"
    save_checkpoint(run / "best.pt", model, meta(chip=64, image_size=64))
    return run


def test_cli_scan_with_a_bad_scene_and_existing_output(tmp_path, fake_run):
    from schoolvision.cli import main

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    write_red_scene(scenes / "a.tif", 200, 150, squares=[(50, 50, 30)])
    (scenes / "b.tif").write_bytes(b"not a tiff at all")
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["scan", "--run", str(fake_run), "--imagery", str(scenes), "--out", str(out), "--threshold", "0.01",
                     "--device", "cpu", "--no-map"])
    assert code == 2  # b.tif failed; a.tif was still scanned
    assert (out / "a_probability.tif").is_file() and not (out / "b_probability.tif").exists()
    assert (out / "candidates.gpkg").is_file() and (out / "candidates.geojson").is_file()
    import json

    summary = json.loads((out / "scan.json").read_text())
    assert list(summary["failed"]) == ["b"]
    code = main(["scan", "--run", str(fake_run), "--imagery", str(scenes / "a.tif"), "--out", str(out)])
    assert code == 2  # refuses the existing folder


@pytest.mark.slow
def test_scan_of_the_held_out_demo_town(demo_dir, chips_dir, trained_run, tmp_path):
    """End to end on the shared fixtures: files, grid, evaluation and map of the test town."""
    import json

    import geopandas as gpd

    from schoolvision.cli import main

    dataset = json.loads((chips_dir / "dataset.json").read_text())
    town = next(name for name, s in dataset["scenes"].items() if s["split"] == "test")
    scene = demo_dir / "scenes" / f"{town}.tif"
    out = tmp_path / "scan"
    code = main(["scan", "--run", str(trained_run), "--imagery", str(scene), "--out", str(out), "--device", "cpu",
                 "--schools", str(chips_dir / "schools.geojson")])
    assert code == 0
    with rasterio.open(out / f"{town}_probability.tif") as p, rasterio.open(scene) as s:
        assert (p.crs, p.transform, p.width, p.height) == (s.crs, s.transform, s.width, s.height)
        prob, data = p.read(1), s.dataset_mask() > 0
        assert (prob[data] >= 0).all() and (prob[data] <= 1).all()
        assert p.overviews(1)
    ev = json.loads((out / "evaluation.json").read_text())
    n_schools = len(gpd.read_file(chips_dir / "schools.geojson").query("scene == @town"))
    assert ev["schools"] == n_schools and 0 <= ev["recall"] <= 1 and len(ev["pr_curve"]) == 19
    assert ev["true_positives"] + len(ev["missed_schools"]) == ev["schools"]
    assert ev["true_positives"] + len(ev["unmatched_candidates"]) == ev["candidates"]
    c = gpd.read_file(out / "candidates.geojson")
    assert c.crs.to_epsg() == 4326 and len(c) == ev["candidates"]
    assert (out / "map.html").stat().st_size > 10_000


def test_run_scan_merges_a_school_seen_by_two_overlapping_scenes(tmp_path):
    import json

    import geopandas as gpd
    from shapely.geometry import box

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    # one 300 x 500 px area cut into two scenes overlapping by 200 px; a red school in the overlap
    for name, c0 in (("west", 0), ("east", 200)):
        sq = [(130, 240 - c0, 40)] + ([(40, 40, 40)] if name == "west" else [])
        write_red_scene(scenes / f"{name}.tif", 300, 300, squares=sq,
                    transform=Affine(1.0, 0, ORIGIN[0] + c0, 0, -1.0, ORIGIN[1]), seed=c0)
    schools = gpd.GeoDataFrame(
        {"name": ["overlap", "west only", "not drawn"]},
        geometry=[box(ORIGIN[0] + 240, ORIGIN[1] - 170, ORIGIN[0] + 280, ORIGIN[1] - 130),
                  box(ORIGIN[0] + 40, ORIGIN[1] - 80, ORIGIN[0] + 80, ORIGIN[1] - 40),
                  box(ORIGIN[0] + 400, ORIGIN[1] - 280, ORIGIN[0] + 430, ORIGIN[1] - 250)], crs=UTM).to_crs(4326)
    schools.to_file(tmp_path / "schools.geojson")
    out = tmp_path / "out"
    summary = run_scan(ScanConfig(run=tmp_path, imagery=[scenes], out_dir=out, schools=tmp_path / "schools.geojson",
                                  cam_peaks=False, progress=False, runtime="torch"), model=RedModel(), meta=meta())
    assert [s.scene for s in summary.scenes] == ["east", "west"] and not summary.failed
    ev = json.loads((out / "evaluation.json").read_text())
    assert (ev["schools"], ev["candidates"], ev["true_positives"]) == (3, 2, 2)  # the overlap school once
    assert [m["name"] for m in ev["missed_schools"]] == ["not drawn"]
    layers = set(gpd.list_layers(out / "candidates.gpkg")["name"])
    assert {"candidates", "known_schools", "missed_schools", "regions"} <= layers
    assert (out / "map.html").is_file() and (out / "scan.json").is_file()
    with pytest.raises(UserError, match="not empty"):
        run_scan(ScanConfig(run=tmp_path, imagery=[scenes], out_dir=out), model=RedModel(), meta=meta())


def test_onnx_and_torch_runtimes_give_the_same_candidates(demo_dir, trained_run, tmp_path):
    """``scan --runtime onnx`` (CLI) and ``--runtime torch`` on a demo town: the same candidates; scan.json says so."""
    import json

    import geopandas as gpd

    from schoolvision.cli import main

    pytest.importorskip("onnxruntime")
    scene = sorted((demo_dir / "scenes").glob("*.tif"))[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["scan", "--run", str(trained_run), "--imagery", str(scene), "--out", str(tmp_path / "onnx"),
                     "--device", "cpu", "--runtime", "onnx", "--no-map"]) == 0
        torch_scan = run_scan(ScanConfig(run=trained_run, imagery=[scene], out_dir=tmp_path / "torch", device="cpu",
                                         runtime="torch", make_map=False, progress=False))
    by = {name: gpd.read_file(tmp_path / name / "candidates.gpkg", layer="candidates") for name in ("onnx", "torch")}
    assert torch_scan.runtime == "torch"
    assert json.loads((tmp_path / "onnx" / "scan.json").read_text())["runtime"] == "onnx"
    assert 2 <= len(by["torch"]) == len(by["onnx"])  # the check needs candidates
    assert list(by["onnx"]["rank"]) == list(by["torch"]["rank"])
    np.testing.assert_allclose(by["onnx"]["max_prob"], by["torch"]["max_prob"], atol=1e-4)
    # Where only one row of windows covers (a scene's border strip) the blended raster is flat along the strip,
    # and P(school) differing by 1e-6 picks another pixel of that ridge as the peak (and may split its region,
    # changing area and mean): the same candidate, within a stride (a peak may move along its plateau to the
    # other side of a window centre now that regions split at their peaks), what the raster resolves.
    assert by["onnx"].geometry.distance(by["torch"].geometry).max() <= 64
    with rasterio.open(tmp_path / "onnx" / f"{scene.stem}_probability.tif") as a, \
            rasterio.open(tmp_path / "torch" / f"{scene.stem}_probability.tif") as b:
        np.testing.assert_allclose(a.read(1), b.read(1), atol=1e-4)


def test_int8_scan_records_its_runtime_and_stays_near_float32(demo_dir, trained_run, tmp_path):
    """``scan --runtime onnx-int8`` (CLI): the int8 graph is made in RUN/onnx and scores the windows near float32."""
    import json
    import shutil

    from schoolvision.cli import main

    pytest.importorskip("onnxruntime")
    run = tmp_path / "run"  # the int8 graph is written into the run folder
    shutil.copytree(trained_run, run)
    scene = sorted((demo_dir / "scenes").glob("*.tif"))[-1]
    rasters = {}
    for name in ("onnx", "onnx-int8"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main(["scan", "--run", str(run), "--imagery", str(scene), "--out", str(tmp_path / name),
                         "--device", "cpu", "--runtime", name, "--no-map"]) == 0
        with rasterio.open(tmp_path / name / f"{scene.stem}_probability.tif") as src:
            rasters[name] = src.read(1)
    summary = json.loads((tmp_path / "onnx-int8" / "scan.json").read_text())
    assert summary["runtime"] == "onnx-int8" and list((run / "onnx").glob("best-*-int8.onnx"))
    moved = np.abs(rasters["onnx-int8"] - rasters["onnx"])
    assert moved.max() > 0 and moved.mean() < 0.05  # quantised, and close to float32 (README: 0.025 on the demo run)


def test_min_area_reaches_the_candidates_and_the_evaluation(tmp_path):
    import json

    import geopandas as gpd
    from shapely.geometry import box

    from schoolvision.scan.candidates import MIN_AREA_M2

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    write_red_scene(scenes / "one.tif", 200, 200, squares=[(80, 80, 40)])
    school = box(ORIGIN[0] + 80, ORIGIN[1] - 120, ORIGIN[0] + 120, ORIGIN[1] - 80)
    gpd.GeoDataFrame({"name": ["red"]}, geometry=[school], crs=UTM).to_crs(4326).to_file(tmp_path / "s.geojson")
    assert ScanConfig(run=tmp_path, imagery=[scenes], out_dir=tmp_path).min_area_m2 == MIN_AREA_M2
    for area, found in ((MIN_AREA_M2, 1), (1e6, 0)):  # a region larger than the whole scene: nothing is kept
        out = tmp_path / f"out_{found}"
        run_scan(ScanConfig(run=tmp_path, imagery=[scenes], out_dir=out, schools=tmp_path / "s.geojson",
                            cam_peaks=False, make_map=False, progress=False, runtime="torch", min_area_m2=area),
                 model=RedModel(), meta=meta())
        ev = json.loads((out / "evaluation.json").read_text())
        assert (ev["candidates"], ev["true_positives"], ev["min_area_m2"]) == (found, found, area)
        assert len(gpd.read_file(out / "candidates.gpkg", layer="candidates")) == found


def test_evaluation_from_the_units_kept_sweeps_equals_the_one_from_the_rasters(demo_dir, chips_dir, trained_run,
                                                                               tmp_path):
    """Each unit keeps its sweep in the done-record; the curve from them is the curve from re-read rasters."""
    import json

    from schoolvision.io.folders import ScanFolder
    from schoolvision.scan.candidates import read_fields
    from schoolvision.scan.evaluation import load_schools, pr_curve
    from schoolvision.scan.runner import kept_sweeps

    scenes = sorted((demo_dir / "scenes").glob("*.tif"))[:2]
    out = tmp_path / "scan"
    summary = run_scan(ScanConfig(run=trained_run, imagery=scenes, out_dir=out, device="cpu",
                                  schools=chips_dir / "schools.geojson", cam_peaks=False, make_map=False,
                                  progress=False))
    folder = ScanFolder(out)
    sweeps = kept_sweeps(folder, summary.scenes)
    assert sorted(sweeps) == sorted(s.scene for s in summary.scenes)
    assert summary.seconds["evaluation"] > 0
    schools = load_schools(chips_dir / "schools.geojson", summary.scenes)  # those of the scanned scenes
    separation = folder.read_summary()["min_separation"]  # the default's, from the run's chip size
    assert separation > 0
    kept = read_fields(summary.scenes, sweeps, summary_min_area := 100.0, separation)
    assert all(type(f).__name__ == "PeakSweep" for f in kept)
    assert not any(type(f).__name__ == "PeakSweep" for f in read_fields(summary.scenes, sweeps, summary_min_area))
    from_rasters = pr_curve(summary.scenes, schools, 50.0, min_area_m2=summary_min_area, min_separation=separation)
    from_sweeps = pr_curve(summary.scenes, schools, 50.0, fields=kept, min_area_m2=summary_min_area)
    assert from_sweeps == from_rasters and any(p["candidates"] for p in from_rasters)
    assert json.loads((out / "evaluation.json").read_text())["pr_curve"] == from_rasters
    without = tmp_path / "no_schools"
    run_scan(ScanConfig(run=trained_run, imagery=scenes[:1], out_dir=without, device="cpu", cam_peaks=False,
                        make_map=False, progress=False))
    assert "sweep" not in ScanFolder(without).read_done(scenes[0].stem)  # no schools: no sweep to keep
