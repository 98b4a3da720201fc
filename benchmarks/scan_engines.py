"""Scan engines, merging and resume at country scale: the numbers behind ``benchmarks/README.md``.

(a) ``engines``: windows/s of ``--engine ray`` with 2 one-thread actors against ``--engine local`` with
    2 torch threads, on the same generated scenes (efficientnet_lite0, 128 px chips at 1 m, 224 px input,
    stride 64: the book's profile). Both run the real scene units (windows, candidates, files); actors
    are started and their model built before the clock starts (a country scan amortises that), runs
    are interleaved and the best of each counts. Target: ray / local >= 0.85.
(c) ``merge``: 100,000 synthetic candidates from 1,000 overlapping scenes merged across scene borders
    (:func:`schoolvision.scan.merge.merge_candidates`, an STRtree), in a fresh process: seconds and peak
    memory (target < 10 s, < 1 GB); ``--files`` also writes and reads them as per-scene GeoPackages.
(d) ``resume``: seconds for ``scan --resume``'s skip logic (the runner's own) to find 1,000 finished
    scenes (fake done-records and files).

Prints one JSON object. The machine's load average is recorded: on shared CPUs read the numbers against it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_scenes(folder: Path, n: int, size: int) -> Path:
    """``n`` textured ``size`` px RGB GeoTIFFs at 1 m in UTM 36N, side by side."""
    import rasterio
    from affine import Affine

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        data = rng.integers(40, 200, (3, size, size), dtype=np.uint8)
        profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8",
                   "crs": "EPSG:32636", "transform": Affine(1.0, 0, 500_000.0 + i * size * 1.5, 0, -1.0, 100_000.0),
                   "tiled": True, "blockxsize": 256, "blockysize": 256}
        with rasterio.open(folder / f"scene_{i:02d}.tif", "w", **profile) as dst:
            dst.write(data)
    return folder


def engines(args) -> dict:
    """(a): windows/s of both engines on the same scenes."""
    import ray
    import torch

    from schoolvision.io.imagery import list_sources
    from schoolvision.model.backbones import build_model
    from schoolvision.model.checkpoint import CheckpointMeta, save_checkpoint
    from schoolvision.scan.engines import LocalEngine, RayEngine
    from schoolvision.scan.options import ScanOptions
    from schoolvision.scan.unit import UnitSettings, expected_record

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        meta = CheckpointMeta("efficientnet_lite0", args.image_size, args.chip_size, 1.0)
        save_checkpoint(tmp / "run" / "best.pt", build_model("efficientnet_lite0", pretrained=False), meta)
        sources = list_sources([write_scenes(tmp / "scenes", args.scenes, args.size)])

        def settings(name):
            options = ScanOptions(runtime=args.runtime, stride=args.stride, batch_size=32)
            return UnitSettings(out_dir=str(tmp / name), run=str(tmp / "run"), options=options,
                                threshold=0.5, merge_distance=64.0, expected=expected_record("bench", {}))

        torch.set_num_threads(args.threads)
        # as the engine's own local instance: actors at niceness 0 like the local engine (Ray's default is 15)
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False,
                 _system_config={"worker_niceness": 0})
        rates = {"local": [], "ray": []}
        try:
            engines = {"local": LocalEngine(settings("local"), progress=False),
                       "ray": RayEngine(settings("ray"), cpus_per_worker=1, workers=args.workers, progress=False)}
            engines["ray"]._start(len(sources))  # actors up, models built: not timed
            runtimes = {"local": engines["local"].describe()[1],
                        "ray": ray.get([a.describe.remote() for a in engines["ray"].actors])[0][1]}
            for _ in range(args.repeats):
                for name, engine in engines.items():
                    for done in (tmp / name / "scenes").glob("*.done.json"):
                        done.unlink()  # scan every scene again
                    t0 = time.perf_counter()
                    outcomes = list(engine.map(sources))
                    wall = time.perf_counter() - t0
                    assert all(o.status == "done" for o in outcomes), [o.error for o in outcomes]
                    windows = sum(o.record["windows"] for o in outcomes)
                    rates[name].append(windows / wall)
            engines["ray"].close()
        finally:
            ray.shutdown()
    best = {k: max(v) for k, v in rates.items()}
    return {"scenes": args.scenes, "scene_px": args.size, "windows": int(windows), "local_threads": args.threads,
            "ray_workers": args.workers, "ray_cpus_per_worker": 1, "runtime": runtimes,
            "windows_per_s": {k: round(v, 2) for k, v in best.items()},
            "runs_windows_per_s": {k: [round(r, 2) for r in v] for k, v in rates.items()},
            "ratio_ray_to_local": round(best["ray"] / best["local"], 3), "target_ratio": 0.85}


def synthetic_candidates(n_scenes: int, per_scene: int, scene_m: float = 5000.0, overlap_m: float = 200.0):
    """``per_scene`` random candidates in each of ``n_scenes`` overlapping square scenes, one GeoDataFrame a scene.

    Scenes lie on a grid with ``overlap_m`` of overlap; candidates in an overlap are also seen by the
    neighbour (a few metres off), as two scenes see one school.
    """
    import geopandas as gpd

    rng = np.random.default_rng(0)
    side = int(np.ceil(np.sqrt(n_scenes)))
    step = scene_m - overlap_m
    parts = []
    for k in range(n_scenes):
        r, c = divmod(k, side)
        x0, y0 = 300_000.0 + c * step, 5_000_000.0 - r * step
        xs, ys = x0 + rng.uniform(0, scene_m, per_scene), y0 - rng.uniform(0, scene_m, per_scene)
        p = rng.uniform(0.5, 1.0, per_scene)
        parts.append(gpd.GeoDataFrame({"scene": f"s{k:04d}", "max_prob": p, "mean_prob": p * 0.9,
                                       "area_m2": 400.0, "peak": "cam", "rank": np.arange(1, per_scene + 1)},
                                      geometry=gpd.points_from_xy(xs, ys), crs="EPSG:32633"))
    return parts


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ``ru_maxrss`` it is not carried over an exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _merge_child(n_scenes: int, per_scene: int, files: bool, queue) -> None:
    import tracemalloc

    from schoolvision.scan.merge import merge_candidates

    parts = synthetic_candidates(n_scenes, per_scene)
    rss_before = _peak_rss_mb()
    tracemalloc.start()
    t0, c0 = time.perf_counter(), time.process_time()
    merged = merge_candidates(parts, 64.0)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    traced = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    out = {"candidates": sum(len(p) for p in parts), "scenes": n_scenes, "merged": len(merged),
           "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3), "python_peak_mb": round(traced, 1),
           "rss_before_merge_mb": round(rss_before, 1),
           "peak_rss_mb": round(_peak_rss_mb(), 1)}
    if files:
        from types import SimpleNamespace

        from schoolvision.io.folders import ScanFolder
        from schoolvision.scan.merge import read_scene_candidates

        with tempfile.TemporaryDirectory() as tmp:
            folder = ScanFolder(tmp)
            empty = parts[0].iloc[:0]
            t0 = time.perf_counter()
            for p in parts:
                folder.write_scene_candidates(p["scene"].iloc[0], p, empty)
            out["write_files_s"] = round(time.perf_counter() - t0, 2)
            scenes = [SimpleNamespace(scene=p["scene"].iloc[0], crs="EPSG:32633") for p in parts]
            t0 = time.perf_counter()
            again, _ = read_scene_candidates(folder, scenes, 64.0)
            out["read_and_merge_files_s"] = round(time.perf_counter() - t0, 2)
            assert len(again) == len(merged)
            out["peak_rss_mb_with_files"] = round(_peak_rss_mb(), 1)
    queue.put(out)


def merge(args) -> dict:
    """(c): merging in a fresh process, so its peak memory is the merge's."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_merge_child, args=(args.merge_scenes, args.per_scene, args.files, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return {**out, "target_seconds": 10, "target_peak_mb": 1024}


def resume(args) -> dict:
    """(d): the runner's skip logic over ``args.resume_scenes`` finished scenes."""
    from schoolvision.io.folders import ScanFolder
    from schoolvision.io.imagery import ImagerySource
    from schoolvision.scan.runner import _check_resume
    from schoolvision.scan.unit import expected_record, source_stamp

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "imagery").mkdir()
        folder = ScanFolder(tmp / "scan")
        expected = expected_record("0" * 64, {"threshold": 0.5, "stride": 64, "runtime": "onnx"})
        sources = []
        for i in range(args.resume_scenes):
            path = tmp / "imagery" / f"scene_{i:04d}.tif"
            path.write_bytes(b"x" * 64)
            source = ImagerySource(path.stem, path)
            sources.append(source)
            folder.probability_path(source.name).parent.mkdir(parents=True, exist_ok=True)
            folder.probability_path(source.name).write_bytes(b"")
            folder.scene_candidates_path(source.name).parent.mkdir(parents=True, exist_ok=True)
            folder.scene_candidates_path(source.name).write_bytes(b"")
            folder.write_done(source.name, {**expected, "scene": source.name, "stamp": source_stamp(source),
                                            "windows": 1000, "scan": {"scene": source.name}})
        t0 = time.perf_counter()
        done = _check_resume(folder, sources, expected)
        seconds = time.perf_counter() - t0
    assert len(done) == args.resume_scenes
    return {"scenes": args.resume_scenes, "skipped": len(done), "seconds": round(seconds, 3),
            "ms_per_scene": round(1000 * seconds / args.resume_scenes, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=6, help="(a) scenes")
    ap.add_argument("--size", type=int, default=512, help="(a) scene side in pixels (512: 49 windows)")
    ap.add_argument("--chip-size", type=int, default=128)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--stride", type=int, default=64)
    ap.add_argument("--runtime", default="auto")
    ap.add_argument("--threads", type=int, default=2, help="(a) torch threads of the local engine")
    ap.add_argument("--workers", type=int, default=2, help="(a) one-CPU Ray actors")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--merge-scenes", type=int, default=1000)
    ap.add_argument("--per-scene", type=int, default=100)
    ap.add_argument("--files", action="store_true", help="(c) also write and read the per-scene GeoPackages")
    ap.add_argument("--resume-scenes", type=int, default=1000)
    ap.add_argument("--only", choices=["engines", "merge", "resume"], nargs="+", default=None)
    args = ap.parse_args()
    only = set(args.only or ("engines", "merge", "resume"))
    out = {"cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)}
    if "engines" in only:
        out["engines"] = engines(args)
    if "merge" in only:
        out["merge"] = merge(args)
    if "resume" in only:
        out["resume"] = resume(args)
    out["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
