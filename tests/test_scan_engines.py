"""Scene units, engines and resume: local and Ray give the same files, killed workers and drivers lose nothing.

A local Ray instance with 2 CPUs is started once for the module (``ray_instance``) and shut down at
its end; the engines use it instead of starting their own. Scenes are the tiny towns of
``fixtures.make_towns``; the run is ``small_run`` (an untrained head: a low threshold still gives
candidates to compare).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from shapely.geometry import Point

from schoolvision.cli import main
from schoolvision.errors import UserError
from schoolvision.io.folders import ScanFolder
from schoolvision.io.imagery import list_sources
from schoolvision.scan.candidates import merge_duplicates
from schoolvision.scan.engines import RayEngine
from schoolvision.scan.options import ScanOptions
from schoolvision.scan.runner import ScanConfig, run_scan
from schoolvision.scan.unit import UnitSettings, expected_record

from fixtures import make_towns

THRESHOLD = 0.3
OPTIONS = ["--threshold", str(THRESHOLD), "--runtime", "torch", "--device", "cpu", "--no-map"]


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance for the whole module (2 CPUs, no dashboard)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def four_towns(tmp_path_factory) -> tuple[Path, Path]:
    """Four 256 px towns: (scenes folder, schools.geojson)."""
    return make_towns(tmp_path_factory.mktemp("engine_towns"), n=4)


def config(run, scenes, out, **kw) -> ScanConfig:
    return ScanConfig(run=run, imagery=[scenes], out_dir=out, threshold=THRESHOLD, runtime="torch", device="cpu",
                      progress=False, make_map=False, **kw)


@pytest.fixture(scope="module")
def local_scan(small_run, four_towns, tmp_path_factory) -> Path:
    """An uninterrupted local scan of the towns: the reference the other scans must equal."""
    out = tmp_path_factory.mktemp("local") / "scan"
    summary = run_scan(config(small_run, four_towns[0], out))
    assert summary.scene_counts == {"done": 4, "skipped": 0, "failed": 0} and summary.candidates >= 2
    return out


def same_outputs(a: Path, b: Path) -> None:
    """Identical probability rasters, per-scene candidates and merged candidates."""
    fa, fb = ScanFolder(a), ScanFolder(b)
    names = list(fa.probability_paths())
    assert names == list(fb.probability_paths()) and len(names) == 4
    for name in names:
        with rasterio.open(fa.probability_path(name)) as x, rasterio.open(fb.probability_path(name)) as y:
            assert (x.crs, x.transform, x.overviews(1)) == (y.crs, y.transform, y.overviews(1))
            np.testing.assert_array_equal(x.read(1), y.read(1))
        for left, right in zip(fa.read_scene_candidates(name), fb.read_scene_candidates(name)):
            pd.testing.assert_frame_equal(pd.DataFrame(left), pd.DataFrame(right))
    pd.testing.assert_frame_equal(pd.DataFrame(fa.read_layer("candidates")), pd.DataFrame(fb.read_layer("candidates")))


def test_local_and_ray_engines_write_identical_files(ray_instance, small_run, four_towns, local_scan, tmp_path):
    out = tmp_path / "ray"
    summary = run_scan(config(small_run, four_towns[0], out, engine="ray", cpus_per_worker=1))
    assert summary.engine == "ray" and summary.scene_counts == {"done": 4, "skipped": 0, "failed": 0}
    same_outputs(local_scan, out)
    assert ray_instance.is_initialized()  # the engine used the running instance and left it running
    written = json.loads((out / "scan.json").read_text())
    assert written["scene_counts"] == summary.scene_counts and written["engine"] == "ray"
    done = ScanFolder(out).read_done("town_00")
    assert done["stamp"]["size"] > 0 and done["options"]["threshold"] == THRESHOLD and done["run_sha256"]
    # a rerun with --resume on the other engine skips every scene and changes nothing
    again = run_scan(config(small_run, four_towns[0], out, resume=True))
    assert again.scene_counts == {"done": 0, "skipped": 4, "failed": 0}
    same_outputs(local_scan, out)


def test_a_killed_ray_actor_still_yields_every_scene_once(ray_instance, small_run, four_towns, tmp_path):
    sources = list_sources([four_towns[0]])
    settings = UnitSettings(out_dir=str(tmp_path / "out"), run=str(small_run), options=ScanOptions(runtime="torch"),
                            threshold=THRESHOLD, expected=expected_record("x", {}))
    outcomes = []
    with RayEngine(settings, cpus_per_worker=1, progress=False) as engine:
        for outcome in engine.map(sources):
            if not outcomes:  # the other actor is mid-scene now, this one takes the next scene
                for actor in engine.actors:
                    ray_instance.kill(actor, no_restart=False)
            outcomes.append(outcome)
    assert sorted(o.scene for o in outcomes) == [s.name for s in sources]  # every scene exactly once
    assert {o.status for o in outcomes} == {"done"}
    folder = ScanFolder(tmp_path / "out")
    assert folder.done_scenes() == [s.name for s in sources]
    assert all(folder.scene_candidates_path(s.name).is_file() for s in sources)
    assert not list((tmp_path / "out").rglob(".*.tmp*"))  # no half-written temporary left


def test_a_killed_scan_resumes_where_it_stopped(small_run, four_towns, local_scan, tmp_path):
    out = tmp_path / "scan"
    cmd = [sys.executable, "-m", "schoolvision", "scan", "--run", str(small_run), "--imagery", str(four_towns[0]),
           "--out", str(out), *OPTIONS]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    folder = ScanFolder(out)
    deadline = time.monotonic() + 600
    while not folder.done_scenes() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = folder.done_scenes()
    assert 1 <= len(finished) < 4, "the scan must be killed after its first scene and before its last"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        argv = ["scan", "--run", str(small_run), "--imagery", str(four_towns[0]), "--out", str(out), *OPTIONS]
        assert main(argv) == 2
        assert main([*argv, "--resume"]) == 0
    counts = json.loads((out / "scan.json").read_text())["scene_counts"]
    assert counts["skipped"] >= len(finished) and counts["skipped"] + counts["done"] == 4 and not counts["failed"]
    same_outputs(local_scan, out)


def test_resume_with_another_option_or_run_is_refused(small_run, four_towns, local_scan, tmp_path, capsys):
    args = ["scan", "--run", str(small_run), "--imagery", str(four_towns[0]), "--out", str(local_scan), *OPTIONS]
    assert main([*args, "--resume", "--stride", "16"]) == 2
    err = capsys.readouterr().err
    assert "--resume: option stride (32 then, 16 now)" in err and len(err.strip().splitlines()) == 1
    assert main([*args, "--resume", "--overwrite"]) == 2
    assert "pass one of them" in capsys.readouterr().err
    with pytest.raises(UserError, match="the run"):
        import torch

        from schoolvision.model.checkpoint import load_classifier

        model, meta = load_classifier(small_run)
        with torch.no_grad():
            next(model.parameters()).add_(1.0)
        run_scan(config(small_run, four_towns[0], local_scan, resume=True), model=model, meta=meta)


def test_engine_ray_without_ray_is_one_line(small_run, four_towns, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    out = tmp_path / "scan"
    assert main(["scan", "--run", str(small_run), "--imagery", str(four_towns[0]), "--out", str(out), *OPTIONS,
                 "--engine", "ray"]) == 2
    assert "pip install schoolvision[ray]" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written


def dense_merge(cands: gpd.GeoDataFrame, distance: float, same_scene: float) -> list[int]:
    """The n x n union-find merge this module's STRtree merge replaced: indices kept."""
    xy = np.column_stack([cands.geometry.x, cands.geometry.y])
    scenes, parent = cands["scene"].to_numpy(), list(range(len(cands)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    d = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1])
    for i, j in zip(*np.nonzero(np.triu(d <= distance, 1))):
        if scenes[i] != scenes[j] or d[i, j] <= same_scene:
            parent[find(i)] = find(j)
    roots = np.array([find(i) for i in range(len(cands))])
    probs = cands["max_prob"].to_numpy()
    return sorted(int(np.flatnonzero(roots == r)[np.argmax(probs[roots == r])]) for r in np.unique(roots))


def test_spatial_index_merge_equals_the_dense_merge():
    rng = np.random.default_rng(0)
    n = 600
    xy = rng.uniform(0, 2000, (n, 2))
    cands = gpd.GeoDataFrame({"scene": rng.choice(["a", "b", "c"], n), "max_prob": rng.uniform(0.5, 1, n).round(2),
                              "mean_prob": 0.5, "rank": np.arange(1, n + 1)},
                             geometry=[Point(x, y) for x, y in xy], crs="EPSG:32636")
    merged = merge_duplicates(cands, 64.0, 32.0)
    kept = dense_merge(cands, 64.0, 32.0)
    assert 0 < len(merged) < n
    assert sorted(merged["max_prob"].tolist()) == sorted(cands["max_prob"].iloc[kept].tolist())
    assert {(round(g.x, 6), round(g.y, 6)) for g in merged.geometry} == {
        (round(g.x, 6), round(g.y, 6)) for g in cands.geometry.iloc[kept]}


def test_the_map_shows_the_top_candidates_and_says_so(local_scan):
    from schoolvision.scan.webmap import scan_map_from_dir

    n = len(ScanFolder(local_scan).read_layer("candidates"))
    page = scan_map_from_dir(local_scan, max_markers=1).get_root().render()
    assert f"showing the top 1 of {n} candidates" in page and page.count("sv-candidate") == 1
    assert "showing the top" not in scan_map_from_dir(local_scan).get_root().render()
