"""Scan throughput per inference runtime beside bare inference, and the share of a scan spent after the windows.

Bare: the runtime's ``probability()`` on batches already in memory at the model's input size (what the
hardware can do with that runtime). Scan: ``scan_scene`` with the same runtime on a generated GeoTIFF
(windowed reads, prefetching, the resize to the input size, blending, the tiled GeoTIFF with overviews).
Defaults are the book's profile: efficientnet_lite0, 128 px chips at 1 m, 224 px input, stride 64, batch 32.
Runs are interleaved and the best of each kind counts, so load from other processes on a shared machine
biases none of them. Targets on CPU: the best scan >= 0.85 x the fastest bare path, and >= 3 x the scan
windows/s of ``torch`` (float32 eager: what scan ran before runtimes). With ``onnx-int8`` in ``--runtimes``
every runtime runs the trained ``--run`` (int8 is calibrated on its chips): target int8 scan >= 1.6 x the
float32 ``onnx`` scan (``int8_over_fp32_onnx_scan``).

The after-window share: ``run_scan`` with ``--schools`` on a demo town: candidate extraction, grad-CAM
peaks (for a pooled linear head: the plain CAM, from the runtime's forward pass, ``scan.peaks``) and the
evaluation with its precision-recall sweep over ``run_scan``'s wall time (target <= 0.20), and everything
after the windows (those, the files and the map; also reported, with the same target). It needs a
trained run: ``--run`` and ``--demo`` (default ``runs/quick`` and ``data/demo``, what the book's chapters make);
without them the section is skipped. With two ``--after-runtime`` values (e.g. ``onnx onnx-int8``) each is
measured and ``same_schools_found`` says whether both found the same known schools. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_scene(path: Path, size: int, seed: int = 0) -> Path:
    """A ``size`` x ``size`` RGB GeoTIFF at 1 m in UTM 36N, written block by block (cheap texture)."""
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(seed)
    tile = rng.integers(40, 200, (3, 256, 256), dtype=np.uint8)
    prof = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32636",
        "transform": Affine(1.0, 0, 500_000.0, 0, -1.0, 100_000.0),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
    }
    with rasterio.open(path, "w", **prof) as dst:
        for r in range(0, size, 256):
            for c in range(0, size, 256):
                h, w = min(256, size - r), min(256, size - c)
                dst.write(np.roll(tile, (r + c) // 256 * 17, axis=2)[:, :h, :w], window=((r, r + h), (c, c + w)))
    return path


def throughput(args, device) -> dict:
    """Bare and scan windows/s of every runtime, interleaved."""
    from schoolvision.data.windows import window_offsets
    from schoolvision.io.imagery import list_sources
    from schoolvision.model.backbones import build_model
    from schoolvision.model.checkpoint import CheckpointMeta, load_classifier
    from schoolvision.model.runtime import make_runtime, onnx_available
    from schoolvision.scan.scene import scan_scene

    torch.manual_seed(0)
    checkpoint = None
    if "onnx-int8" in args.runtimes:  # int8 calibrates on a trained run's chips: every runtime runs its weights
        checkpoint = Path(args.run)
        model, meta = load_classifier(checkpoint, device)
    else:
        model = build_model(args.backbone, pretrained=False).to(device).eval()
        meta = CheckpointMeta(backbone=args.backbone, image_size=args.image_size, chip_size=args.chip_size, gsd=1.0)
    names = [n for n in args.runtimes if not n.startswith("onnx") or onnx_available()]
    # one copy of the weights each: torch-fast converts its model to channels_last in place
    runtimes = {n: make_runtime(n, copy.deepcopy(model), meta, device, checkpoint=checkpoint) for n in names}
    n_windows = len(window_offsets(args.size, args.chip_size, args.stride)) ** 2
    images = torch.from_numpy(
        np.random.default_rng(0).random((args.batch_size, 3, args.image_size, args.image_size), dtype=np.float32))

    def bare_run(rt) -> float:
        t0, done = time.perf_counter(), 0
        while done < n_windows:
            rt.probability(images)  # includes the copy back to the host
            done += args.batch_size
        return done / (time.perf_counter() - t0)

    bares: dict[str, list[float]] = {n: [] for n in names}
    scans: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        source = list_sources([make_scene(Path(tmp) / "scene.tif", args.size)])[0]

        def scan_run(name: str, out: str) -> float:
            t0 = time.perf_counter()
            res = scan_scene(runtimes[name].model, meta, source, Path(tmp) / out, stride=args.stride,
                             batch_size=args.batch_size, device=device, progress=False, runtime=runtimes[name])
            return res.windows / (time.perf_counter() - t0)

        for name in names:  # warm-up: sessions, oneDNN primitives, the autocast check
            runtimes[name].probability(images)
            scan_run(name, f"warm-{name}.tif")
        for i in range(args.repeats):
            for name in names:
                bares[name].append(bare_run(runtimes[name]))
                scans[name].append(scan_run(name, f"{name}-{i}.tif"))
    bare = {n: max(v) for n, v in bares.items()}
    scan = {n: max(v) for n, v in scans.items()}
    fastest = max(bare, key=bare.get)
    best_scan = max(scan, key=scan.get)
    return {
        "windows": n_windows,
        "runtimes": {n: runtimes[n].describe() for n in names},
        "bare_windows_per_s": {n: round(v, 2) for n, v in bare.items()},
        "scan_windows_per_s": {n: round(v, 2) for n, v in scan.items()},
        "scan_over_own_bare": {n: round(scan[n] / bare[n], 3) for n in names},
        "fastest_bare": fastest,
        "scan_over_fastest_bare": {n: round(scan[n] / bare[fastest], 3) for n in names},
        "best_scan": best_scan,
        "best_scan_over_torch_scan": round(scan[best_scan] / scan["torch"], 2) if "torch" in scan else None,
        "int8_over_fp32_onnx_scan": round(scan["onnx-int8"] / scan["onnx"], 2) if {"onnx", "onnx-int8"} <= set(scan)
        else None,  # target >= 1.6
        "km2_per_hour_best_scan": round(scan[best_scan] * (args.stride * 1.0) ** 2 / 1e6 * 3600, 1),
        "bare_runs": {n: [round(b, 2) for b in v] for n, v in bares.items()},
        "scan_runs": {n: [round(b, 2) for b in v] for n, v in scans.items()},
    }


def after_windows(args, device, runtime: str) -> dict:
    """Share of ``run_scan --schools`` wall time spent after the windows, on a demo town with a trained run."""
    from schoolvision.io.folders import ScanFolder
    from schoolvision.scan.runner import ScanConfig, run_scan

    run, demo = Path(args.run), Path(args.demo)
    scenes = sorted((demo / "scenes").glob("*.tif"))
    if not ((run / "best.pt").is_file() or run.is_file()) or not scenes:
        return {"skipped": f"needs a trained run ({run}) and a demo folder ({demo}): pass --run and --demo"}
    scene = demo / "scenes" / f"{args.scene}.tif" if args.scene else scenes[-1]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats + 1):  # the first one exports (and caches) the ONNX graph: not counted
            config = ScanConfig(run=run, imagery=[scene], out_dir=Path(tmp) / f"scan{i}", device=str(device),
                                schools=demo / "schools.geojson", runtime=runtime, progress=False)
            t0 = time.perf_counter()
            summary = run_scan(config)
            wall = time.perf_counter() - t0
            if i:
                runs.append((wall, summary))
        known = ScanFolder(Path(tmp) / "scan1").read_layer("known_schools")
        found = sorted(str(n) for n in known.loc[known["found"].astype(bool), "name"])
    wall, summary = min(runs, key=lambda r: r[0])
    sec = summary.seconds
    issue = sum(sec[k] for k in ("candidates", "cam_peaks", "evaluation"))
    return {
        "scene": scene.stem,
        "runtime": summary.runtime,
        "windows": sum(s.windows for s in summary.scenes),
        "wall_s": round(wall, 2),
        "seconds": sec,
        "candidates_cam_evaluation_share": round(issue / wall, 3),
        "after_windows_share": round(sec["after_windows"] / wall, 3),
        "target_share": 0.20,
        "walls_s": [round(r[0], 2) for r in runs],
        "candidates": summary.candidates,
        "evaluation": {k: summary.evaluation[k] for k in ("schools", "true_positives", "recall", "precision", "f1")},
        "schools_found": found,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024, help="scene side in pixels (1024: 225 windows)")
    ap.add_argument("--chip-size", type=int, default=128)
    ap.add_argument("--image-size", type=int, default=224, help="model input size (the book's: 224)")
    ap.add_argument("--stride", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--runtimes", nargs="+", default=["torch", "torch-fast", "onnx"])
    ap.add_argument("--repeats", type=int, default=3, help="runs of each kind, interleaved; the best counts")
    ap.add_argument("--run", default="runs/quick", help="trained run for the after-window share")
    ap.add_argument("--demo", default="data/demo", help="demo folder (scenes/, schools.geojson) of that run")
    ap.add_argument("--scene", default=None, help="demo town to scan (default: the last one)")
    ap.add_argument("--after-runtime", nargs="+", default=["auto"],
                    help="runtime(s) of the after-window measurement; two: are the same schools found?")
    ap.add_argument("--skip", choices=["throughput", "after-windows"], default=None)
    args = ap.parse_args()

    from schoolvision.model.device import resolve_device

    device = resolve_device(args.device)
    out = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "backbone": args.backbone,
        "chip_size": args.chip_size,
        "image_size": args.image_size,
        "stride": args.stride,
        "batch_size": args.batch_size,
        "gsd_m": 1.0,
        "scene_px": args.size,
        "repeats": args.repeats,
        "load_average_1min": round(os.getloadavg()[0], 2),  # shared CPUs: read the numbers against this
    }
    if args.skip != "throughput":
        out["throughput"] = throughput(args, device)
    if args.skip != "after-windows":
        by_runtime = {name: after_windows(args, device, name) for name in args.after_runtime}
        out["after_windows"] = next(iter(by_runtime.values())) if len(by_runtime) == 1 else by_runtime
        if len(by_runtime) > 1 and all("schools_found" in r for r in by_runtime.values()):
            found = [set(r["schools_found"]) for r in by_runtime.values()]
            out["same_schools_found"] = all(f == found[0] for f in found)
    out["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
