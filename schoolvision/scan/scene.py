"""Scan whole scenes with a chip classifier: a probability raster per scene, never the scene in memory.

How a scene is scanned
- The scene is opened through :func:`schoolvision.io.imagery.open_source` at the run's ground sampling
  distance (GSD), in a projected CRS (geographic and Web Mercator scenes go through a warped view in
  the local UTM zone). ``native_resolution=True`` keeps the scene's own GSD, with a warning when it is
  more than 1.5x away from the training chips'.
- Chip-size windows at ``stride`` (default half a chip) tile the scan grid; the last row and column
  of windows are shifted in to end exactly on the border, so no strip is skipped; a scene smaller than
  one chip is padded (reflection) and scanned with a warning. Windows that hold only nodata are skipped.
- A background thread reads windows and stacks batches while the model runs on the previous batch
  (GDAL releases the GIL), so reading, inference and writing overlap.
- Each window's P(school) is spread over its pixels with a Gaussian weight (sigma = chip/4) and
  blended: ``prob = sum(w * p) / sum(w)``. Rows are written to a tiled GeoTIFF as soon as no later
  window can touch them, so memory is one band of ``chip + 256`` rows, whatever the scene size.
- When the scan grid differs from the scene's (resampled or warped), the scan-grid raster is warped
  back block by block onto the scene's exact CRS, transform, width and height.

Sizing a country-scale run (``benchmarks/scan_throughput.py``; measured on the 2-core CPU dev machine,
shared with other jobs, so best-of-3 interleaved runs): efficientnet_lite0, 128 px chips at 1 m, stride 64
(every window adds 64 x 64 m = 0.0041 km^2):

- model input 128 px: bare ~19 windows/s, scan ~19 windows/s (0.99 of bare), ~5.4 km^2/min;
- model input 64 px (the quick run): bare ~54 windows/s, scan ~47 windows/s (0.87 of bare),
  ~13 km^2/min, ~0.8 thousand km^2/hour per machine.

km^2/hour = windows/s x 0.0041 x 3600 ~ 14.7 x windows/s. No GPU was available to measure; lite0 at
128 px typically runs at several thousand windows/s on one data-centre GPU (e.g. 3000/s ->
~44,000 km^2/hour), where reading and decoding become the limit: give each GPU rank enough CPU cores
(GDAL releases the GIL in the reader thread) and put scenes on local disk. A 1.1 million km^2 country at
1 m and stride 64 is ~270 million windows: ~25 GPU-hours at 3000 windows/s, ~1,400 machine-hours on
2 CPU cores. Use ``torchrun --nproc-per-node N -m schoolvision -- scan ...`` (the ``--`` keeps torchrun
from reading ``--run``) to split scenes across GPUs (each rank scans scenes ``rank, rank + N, ...``:
no duplicate, no gap; rank 0 gathers the results and writes candidates, evaluation and map).

Memory (``benchmarks/scan_memory.py``): peak RSS 0.85 GB at 2048 px and 1.29 GB at 8192 px, of which
~0.6 GB is torch itself; the rest is GDAL's block cache (capped at ``GDAL_CACHE_MB``) and the blending
band of ``chip + 256`` rows (grows with scene *width* only: 25 MB at 8192 px).
"""

from __future__ import annotations

import os
import queue
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from tqdm.auto import tqdm

from schoolvision import SCHOOL
from schoolvision.io.atomic import atomic_path, write_json
from schoolvision.errors import UserError

NODATA = -1.0
"""Nodata value of probability rasters (P(school) is in [0, 1])."""

BLOCK = 256
"""GeoTIFF tile size; rows are flushed in multiples of it."""

GDAL_CACHE_MB = 128
"""GDAL block cache while scanning."""

MIN_CAM_CELLS = 4
"""Grad-CAM places candidates only when the feature map is at least this many cells a side."""

GSD_TRANSFER_RATIO = 1.5
"""A native GSD further than this factor from the training GSD gets a warning."""


@dataclass
class ScanConfig:
    """Everything ``schoolvision scan`` needs."""

    run: Path
    imagery: list[Path]
    out_dir: Path
    stride: int | None = None  # pixels at the scan GSD; default chip_size // 2
    batch_size: int = 32
    threshold: float | None = None  # default: the run's tuned threshold
    device: str = "auto"
    schools: Path | None = None
    match_distance: float = 50.0
    native_resolution: bool = False
    overwrite: bool = False
    cam_peaks: bool = True  # place candidates at their grad-CAM peak (else the probability peak)
    make_map: bool = True
    prefetch: int = 4  # batches read ahead
    progress: bool = True


@dataclass
class SceneScan:
    """Result of scanning one scene."""

    scene: str
    source: str
    probability: str  # path of the probability GeoTIFF
    crs: str
    width: int
    height: int
    scan_gsd: float
    windows: int
    skipped_windows: int
    area_km2: float
    seconds: float
    warnings: list[str] = field(default_factory=list)


@dataclass
class ScanSummary:
    """What a scan did: per-scene results, failures, and the files written."""

    out_dir: str
    scenes: list[SceneScan]
    failed: dict[str, str]  # scene/source -> error message
    threshold: float
    candidates: int = 0
    files: dict[str, str] = field(default_factory=dict)
    evaluation: dict | None = None
    rank: int = 0  # under torchrun, only rank 0 holds the merged results


# --------------------------------------------------------------------------- windows


def window_offsets(length: int, chip: int, stride: int) -> list[int]:
    """Offsets of chip-size windows along one axis so that ``[0, length)`` is fully covered.

    The last window is shifted in to end on the border (no skipped strip, no padding needed);
    a length shorter than a chip gives one window at 0 (it is padded when read).
    """
    if stride <= 0:
        raise UserError(f"stride must be positive, got {stride}")
    if length <= chip:
        return [0]
    offs = list(range(0, length - chip + 1, stride))
    if offs[-1] + chip < length:
        offs.append(length - chip)
    return offs


def gaussian_weight(chip: int, sigma: float = 0.25) -> np.ndarray:
    """(chip, chip) blending weight peaking at the window centre, sigma = ``sigma`` x chip, never zero."""
    x = np.arange(chip, dtype=np.float64) - (chip - 1) / 2
    g = np.maximum(np.exp(-0.5 * (x / (chip * sigma)) ** 2), 1e-6)
    return np.outer(g, g).astype(np.float32)


def shard(items: Sequence, rank: int, world: int) -> list:
    """Items of ``rank`` out of ``world``: every item in exactly one rank (round robin)."""
    return list(items[rank::world])


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) under torchrun, (0, 1) otherwise; initialises a gloo group when needed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------------- reading


def _to_float(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def _pad(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pad (C, h0, w0) up to (C, h, w) by reflection (edge values when a side is 1 px)."""
    ph, pw = h - arr.shape[-2], w - arr.shape[-1]
    if ph <= 0 and pw <= 0:
        return arr
    mode = "reflect" if min(arr.shape[-2:]) > 1 else "edge"
    return np.pad(arr, [(0, 0)] * (arr.ndim - 2) + [(0, max(ph, 0)), (0, max(pw, 0))], mode=mode)


def _batches(ds, windows: list[tuple[int, int]], chip: int, batch_size: int, skipped: list[int]) -> Iterator:
    """Yield (offsets, images (B,3,chip,chip) float32, masks (B,chip,chip) bool) from windowed reads."""
    offs, imgs, masks = [], [], []
    for ro, co in windows:
        win = Window(co, ro, min(chip, ds.width - co), min(chip, ds.height - ro))
        mask = ds.dataset_mask(window=win) > 0
        if not mask.any():
            skipped[0] += 1
            continue
        img = ds.read((1, 2, 3), window=win)
        offs.append((ro, co))
        imgs.append(_pad(_to_float(img), chip, chip))
        masks.append(_pad(mask[None], chip, chip)[0] if mask.shape != (chip, chip) else mask)
        if len(offs) == batch_size:
            yield offs, np.stack(imgs), np.stack(masks)
            offs, imgs, masks = [], [], []
    if offs:
        yield offs, np.stack(imgs), np.stack(masks)


def prefetch(iterator: Iterator, depth: int) -> Iterator:
    """Run ``iterator`` in a background thread, ``depth`` items ahead; exceptions are re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    done = object()
    stop = threading.Event()

    def work():
        try:
            for item in iterator:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(exc)
            return
        q.put(done)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)


# --------------------------------------------------------------------------- inference


@torch.inference_mode()
def predict_windows(model: torch.nn.Module, images: np.ndarray, image_size: int, temperature: float, device) -> np.ndarray:
    """P(school) of a batch of (B,3,H,W) float images in [0,1], resized to the model's input size."""
    x = torch.from_numpy(images).to(device, non_blocking=True)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    logits = model(x).float()
    return torch.softmax(logits / temperature, dim=1)[:, SCHOOL].cpu().numpy()


# --------------------------------------------------------------------------- writing


def _profile(ds, width: int, height: int, crs, transform) -> dict:
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": "float32",
        "crs": crs, "transform": transform, "nodata": NODATA, "compress": "deflate", "predictor": 3,
    }
    if width >= BLOCK and height >= BLOCK:
        profile.update(tiled=True, blockxsize=BLOCK, blockysize=BLOCK)
    return profile


def _build_overviews(dst, width: int, height: int) -> None:
    factors = [f for f in (2, 4, 8, 16, 32) if min(width, height) // f >= 64]
    if factors:
        dst.build_overviews(factors, Resampling.average)
        dst.update_tags(ns="rio_overview", resampling="average")


class _RowBlender:
    """Blend window probabilities into a rolling band of rows and flush finished rows to ``dst``."""

    def __init__(self, dst, width: int, height: int, chip: int):
        self.dst, self.width, self.height, self.chip = dst, width, height, chip
        self.rows = BLOCK + chip
        self.acc = np.zeros((self.rows, width), np.float32)
        self.wsum = np.zeros((self.rows, width), np.float32)
        self.top = 0
        self.weight = gaussian_weight(chip)

    def add(self, ro: int, co: int, p: float, mask: np.ndarray) -> None:
        if ro - self.top >= BLOCK:
            self._flush(((ro - self.top) // BLOCK) * BLOCK)
        h, w = min(self.chip, self.height - ro), min(self.chip, self.width - co)
        wgt = self.weight[:h, :w] * mask[:h, :w]
        r0 = ro - self.top
        self.acc[r0 : r0 + h, co : co + w] += wgt * p
        self.wsum[r0 : r0 + h, co : co + w] += wgt

    def _flush(self, n: int) -> None:
        n = min(n, self.height - self.top)
        if n <= 0:
            return
        with np.errstate(invalid="ignore", divide="ignore"):
            prob = np.where(self.wsum[:n] > 0, self.acc[:n] / self.wsum[:n], NODATA).astype(np.float32)
        self.dst.write(prob[None], window=Window(0, self.top, self.width, n))
        self.acc = np.roll(self.acc, -n, axis=0)
        self.wsum = np.roll(self.wsum, -n, axis=0)
        self.acc[-n:] = 0
        self.wsum[-n:] = 0
        self.top += n

    def finish(self) -> None:
        while self.top < self.height:
            self._flush(min(self.rows, self.height - self.top))


def _warp_back(scan_path: Path, scene, out_path: Path) -> None:
    """Resample the scan-grid raster onto the scene's exact grid, block rows at a time, nodata outside data."""
    prof = _profile(scene, scene.width, scene.height, scene.crs, scene.transform)
    with rasterio.open(scan_path) as src, rasterio.open(out_path, "w", **prof) as dst:
        opts = dict(crs=scene.crs, transform=scene.transform, width=scene.width, height=scene.height,
                    src_nodata=NODATA, nodata=NODATA)
        with WarpedVRT(src, resampling=Resampling.bilinear, **opts) as vb, WarpedVRT(src, resampling=Resampling.nearest, **opts) as vn:
            for top in range(0, scene.height, BLOCK):
                win = Window(0, top, scene.width, min(BLOCK, scene.height - top))
                prob = vb.read(1, window=win)
                data = scene.dataset_mask(window=win) > 0
                hole = data & (prob == NODATA)
                if hole.any():  # bilinear needs neighbours; border pixels take the nearest value
                    prob = np.where(hole, vn.read(1, window=win), prob)
                prob[~data] = NODATA
                dst.write(prob[None], window=win)
        _build_overviews(dst, scene.width, scene.height)


# --------------------------------------------------------------------------- one scene


def scene_grid(source):
    """Open the scene's own grid (the file as it is; an XYZ folder as its Web Mercator mosaic)."""
    from schoolvision.io.imagery import xyz_vrt_xml

    if getattr(source, "kind", "raster") == "xyz":
        return rasterio.open(xyz_vrt_xml(source))
    try:
        return rasterio.open(source.path)
    except RasterioError as exc:
        raise UserError(f"not a readable raster ({str(exc).splitlines()[0][:120]})", source.path) from None


def scan_scene(
    model: torch.nn.Module,
    meta,
    source,
    out_path: str | Path,
    *,
    stride: int | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    native_resolution: bool = False,
    prefetch_depth: int = 4,
    progress: bool = True,
) -> SceneScan:
    """Scan one imagery source; write its float32 probability GeoTIFF on the scene grid to ``out_path``.

    GDAL's block cache is capped at ``GDAL_CACHE_MB`` (its default is 5% of RAM, gigabytes on a big
    machine) so memory stays flat whatever the scene size.
    """
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 2**20):
        return _scan_scene(model, meta, source, Path(out_path), stride=stride, batch_size=batch_size, device=device,
                           native_resolution=native_resolution, prefetch_depth=prefetch_depth, progress=progress)


def _scan_scene(model, meta, source, out_path: Path, *, stride, batch_size, device, native_resolution, prefetch_depth,
                progress) -> SceneScan:
    from schoolvision.io.imagery import native_gsd, open_source

    out_path = Path(out_path)
    chip = int(meta.chip_size)
    stride = int(stride or max(1, chip // 2))
    notes: list[str] = []
    t0 = time.perf_counter()
    with scene_grid(source) as scene, open_source(source, gsd=None if native_resolution else meta.gsd) as ds:
        gsd = abs(ds.transform.a)
        if native_resolution and meta.gsd:
            ratio = native_gsd(scene) / meta.gsd
            if ratio > GSD_TRANSFER_RATIO or ratio < 1 / GSD_TRANSFER_RATIO:
                notes.append(f"native GSD {native_gsd(scene):.2f} m is {ratio:.2f}x the training GSD {meta.gsd} m; "
                             "the model may not transfer (drop --native-resolution to resample)")
        if ds.width < chip or ds.height < chip:
            notes.append(f"scene is {ds.width}x{ds.height} px at {gsd:g} m, smaller than one {chip} px chip; padded")
        for note in notes:
            warnings.warn(f"{source.name}: {note}", stacklevel=2)
        windows = [(r, c) for r in window_offsets(ds.height, chip, stride) for c in window_offsets(ds.width, chip, stride)]
        same_grid = (ds.crs == scene.crs and ds.transform == scene.transform
                     and (ds.width, ds.height) == (scene.width, scene.height))
        area_km2 = ds.width * ds.height * gsd * gsd / 1e6
        skipped = [0]
        with atomic_path(out_path) as final:
            grid_path = final if same_grid else final.with_name(final.stem + ".scan.tif")
            try:
                with rasterio.open(grid_path, "w", **_profile(ds, ds.width, ds.height, ds.crs, ds.transform)) as dst:
                    blender = _RowBlender(dst, ds.width, ds.height, chip)
                    bar = tqdm(total=len(windows), unit="win", desc=source.name, disable=not progress, leave=False)
                    for offs, imgs, masks in prefetch(_batches(ds, windows, chip, batch_size, skipped), prefetch_depth):
                        probs = predict_windows(model, imgs, meta.image_size, meta.temperature, device)
                        for (ro, co), p, m in zip(offs, probs, masks):
                            blender.add(ro, co, float(p), m)
                        bar.update(len(offs))
                        bar.set_postfix(km2=f"{area_km2 * (bar.n + skipped[0]) / len(windows):.2f}/{area_km2:.2f}", refresh=False)
                    bar.update(skipped[0])
                    bar.close()
                    blender.finish()
                    if same_grid:
                        _build_overviews(dst, ds.width, ds.height)
                if not same_grid:
                    _warp_back(grid_path, scene, final)
            finally:
                if grid_path != final and grid_path.exists():
                    grid_path.unlink()
        return SceneScan(
            scene=source.name, source=str(source.path), probability=str(out_path), crs=scene.crs.to_string(),
            width=scene.width, height=scene.height, scan_gsd=gsd, windows=len(windows) - skipped[0],
            skipped_windows=skipped[0], area_km2=round(area_km2, 4), seconds=round(time.perf_counter() - t0, 3),
            warnings=notes,
        )


# --------------------------------------------------------------------------- many scenes


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a folder that already holds something unless ``overwrite``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError("output path exists and is not a folder", out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UserError("output folder is not empty; pass --overwrite or choose another --out", out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def run_scan(config: ScanConfig, model: torch.nn.Module | None = None, meta=None) -> ScanSummary:
    """Scan every scene, then (on rank 0) extract candidates, evaluate against known schools, draw the map.

    ``model`` and ``meta`` replace the run's checkpoint when given (tests, notebooks holding a model).
    """
    from schoolvision.scan.candidates import extract_all, write_candidates
    from schoolvision.model.checkpoint import load_classifier
    from schoolvision.model.device import resolve_device
    from schoolvision.io.imagery import list_sources

    out_dir = Path(config.out_dir)
    rank, world = distributed_rank()
    if world > 1 and torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    else:
        device = resolve_device(config.device)
    if rank == 0:
        prepare_out_dir(out_dir, config.overwrite)
    _barrier(world)
    if model is None or meta is None:
        model, meta = load_classifier(config.run, device)
    model = model.to(device).eval()
    threshold = float(meta.threshold if config.threshold is None else config.threshold)
    sources = list_sources([Path(p) for p in config.imagery])
    if not sources:
        raise UserError("no imagery found (GeoTIFF files, folders of them, or XYZ tile folders)", config.imagery[0])
    scenes, failed = [], {}
    mine = shard(sources, rank, world)
    for source in tqdm(mine, unit="scene", desc="scan", disable=not config.progress or len(mine) < 2):
        try:
            scenes.append(scan_scene(
                model, meta, source, out_dir / f"{source.name}_probability.tif", stride=config.stride,
                batch_size=config.batch_size, device=device, native_resolution=config.native_resolution,
                prefetch_depth=config.prefetch, progress=config.progress,
            ))
        except (UserError, RasterioError, OSError) as exc:
            failed[source.name] = str(exc).splitlines()[0]
            warnings.warn(f"scan failed for {source.path}: {failed[source.name]}", stacklevel=2)
    if world > 1:
        import torch.distributed as dist

        gathered: list = [None] * world
        dist.all_gather_object(gathered, (scenes, failed))
        scenes = sorted((s for part in gathered for s in part[0]), key=lambda s: s.scene)
        failed = {k: v for part in gathered for k, v in part[1].items()}
    summary = ScanSummary(out_dir=str(out_dir), scenes=scenes, failed=failed, threshold=threshold, rank=rank)
    if rank != 0:
        return summary
    by_name = {s.name: s for s in sources}
    merge_distance = meta.chip_size * (meta.gsd or 1.0) / 2
    cands, regions = extract_all(scenes, threshold, merge_distance=merge_distance)
    if config.cam_peaks and len(cands):
        cands = place_at_cam_peaks(model, meta, cands, {s.scene: by_name[s.scene] for s in scenes}, device, regions)
    evaluation = None
    extra = {"regions": regions}
    if config.schools is not None:
        from schoolvision.scan.evaluation import evaluate_scan, write_evaluation

        evaluation, layers = evaluate_scan(cands, scenes, config.schools, config.match_distance, threshold, merge_distance)
        write_evaluation(out_dir / "evaluation.json", evaluation)
        extra.update(layers)
        summary.files["evaluation"] = str(out_dir / "evaluation.json")
        summary.evaluation = evaluation
    write_candidates(cands, out_dir, extra_layers=extra)
    summary.candidates = len(cands)
    summary.files.update(candidates_gpkg=str(out_dir / "candidates.gpkg"), candidates_geojson=str(out_dir / "candidates.geojson"))
    if config.make_map and scenes:
        from schoolvision.scan.webmap import save_map, scan_map

        save_map(scan_map(scenes, cands, {s.scene: by_name[s.scene] for s in scenes}, schools=config.schools,
                          evaluation_layers=extra), out_dir / "map.html")
        summary.files["map"] = str(out_dir / "map.html")
    write_json(out_dir / "scan.json", {**asdict(summary), "run": str(config.run), "gsd": meta.gsd,
                                        "chip_size": meta.chip_size, "stride": config.stride or meta.chip_size // 2})
    return summary


# --------------------------------------------------------------------------- candidate peaks


def read_chip_at(source, meta, x: float, y: float, crs, *, native_resolution: bool = False):
    """Read the chip centred on map point (x, y in ``crs``) at the run's GSD: (uint8 (3,c,c), CRS, Affine)."""
    from rasterio.warp import transform as warp_points

    from schoolvision.io.imagery import open_source

    chip = int(meta.chip_size)
    with open_source(source, gsd=None if native_resolution else meta.gsd) as ds:
        xs, ys = warp_points(crs, ds.crs, [x], [y])
        row, col = ds.index(xs[0], ys[0])
        r0 = int(np.clip(row - chip // 2, 0, max(ds.height - chip, 0)))
        c0 = int(np.clip(col - chip // 2, 0, max(ds.width - chip, 0)))
        win = Window(c0, r0, min(chip, ds.width - c0), min(chip, ds.height - r0))
        img = _pad(ds.read((1, 2, 3), window=win), chip, chip)
        return img, ds.crs, ds.window_transform(Window(c0, r0, chip, chip))


def cam_maps(model: torch.nn.Module, images: np.ndarray, image_size: int, device, batch_size: int = 16) -> np.ndarray:
    """Grad-CAM of the school class for uint8 (N,3,H,W) chips, returned at (N,H,W) in [0,1].

    Uses :func:`schoolvision.explain.methods.explainer` (log-odds target, the model's own target layer).
    """
    from schoolvision.explain.methods import explainer, resize_maps

    out = []
    h, w = images.shape[-2:]
    with explainer(model, "gradcam") as explain:
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(_to_float(images[i : i + batch_size])).to(device)
            if (h, w) != (image_size, image_size):
                x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
            out.append(resize_maps(explain(x), h, w))
    return np.concatenate(out) if out else np.zeros((0, h, w), np.float32)


def explain_points(model, meta, points, sources: dict, device="cpu", native_resolution: bool = False):
    """Chips centred on ``points`` (GeoDataFrame with a ``scene`` column), their P(school) and grad-CAM.

    Returns (chips uint8 (N,3,c,c), probabilities (N,), cams (N,c,c)): what a mapper looks at to
    judge a missed school or a false alarm.
    """
    chip = int(meta.chip_size)
    if not len(points):
        return np.zeros((0, 3, chip, chip), np.uint8), np.zeros(0, np.float32), np.zeros((0, chip, chip), np.float32)
    geoms = [g if g.geom_type == "Point" else g.representative_point() for g in points.geometry]
    chips = np.stack([read_chip_at(sources[scene], meta, g.x, g.y, points.crs, native_resolution=native_resolution)[0]
                      for g, scene in zip(geoms, points["scene"])])
    device = torch.device(device) if isinstance(device, str) else device
    probs = predict_windows(model.to(device).eval(), _to_float(chips), meta.image_size, meta.temperature, device)
    return chips, probs, cam_maps(model, chips, meta.image_size, device)


def cam_cells(model: torch.nn.Module, image_size: int, device) -> int:
    """Side of the model's last feature map at ``image_size``: the grid grad-CAM can localise on."""
    try:
        with torch.no_grad():
            fm = model.feature_map(torch.zeros(1, 3, image_size, image_size, device=device))
        return int(min(fm.shape[-2:]))
    except (AttributeError, RuntimeError):
        return image_size


def place_at_cam_peaks(model, meta, cands, sources: dict, device, regions=None, native_resolution: bool = False):
    """Move each candidate point to the grad-CAM peak of the chip centred on its probability peak.

    The CAM says where inside the window the evidence for "school" is, which can be sharper than the
    blended probability (whose resolution is the stride) - but only when the feature map has at least
    ``MIN_CAM_CELLS`` cells a side (at 64 px, efficientnet's 2 x 2 map would snap every point to a cell
    centre 45 m from the school). A CAM peak outside the candidate's region (when ``regions`` is given)
    or a flat CAM keeps the probability peak. The ``peak`` column says which one each point is.
    """
    from rasterio.warp import transform as warp_points
    from shapely.geometry import Point

    cands = cands.copy()
    if not len(cands) or cam_cells(model, meta.image_size, device) < MIN_CAM_CELLS:
        return cands
    chips = [read_chip_at(sources[scene], meta, g.x, g.y, cands.crs, native_resolution=native_resolution)
             for g, scene in zip(cands.geometry, cands["scene"])]
    heats = cam_maps(model, np.stack([c[0] for c in chips]), meta.image_size, device)
    shapes = {}
    if regions is not None and len(regions) and "label" in cands.columns:
        shapes = {(sc, int(lb)): g for sc, lb, g in zip(regions["scene"], regions["label"], regions.to_crs(cands.crs).geometry)}
    points, kinds = [], []
    for geom, scene, label, (_, ccrs, ctf), heat in zip(cands.geometry, cands["scene"], cands.get("label", [None] * len(cands)),
                                                         chips, heats):
        point, kind = geom, "probability"
        if np.isfinite(heat).all() and heat.max() > heat.min():
            r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
            px, py = ctf @ (c + 0.5, r + 0.5)
            xs, ys = warp_points(ccrs, cands.crs, [px], [py])
            cam_point = Point(xs[0], ys[0])
            region = shapes.get((scene, int(label))) if label is not None else None
            if region is None or region.contains(cam_point):
                point, kind = cam_point, "cam"
        points.append(point)
        kinds.append(kind)
    cands["geometry"] = points
    cands["peak"] = kinds
    return cands
