"""Scan one scene with a chip classifier into a probability GeoTIFF, streaming: never the scene in memory.

The scene is opened through :func:`schoolvision.io.imagery.open_source` at the run's ground sampling
distance (GSD), in a projected CRS (geographic and Web Mercator scenes go through a warped view in the
local UTM zone). ``native_resolution=True`` keeps the scene's own GSD, with a warning when it is more
than 1.5x away from the training chips'. Windows are read and scored as in
:mod:`schoolvision.scan.windows` and blended into the raster as in :mod:`schoolvision.scan.probability`;
the raster always ends on the scene's own grid (CRS, transform, width, height).

With a run's novelty summary (:mod:`schoolvision.train.novelty`), the same forward pass also gives
each window's embedding; its novelty percentile is blended the same way into a second raster on the
same grid (the trust map), and the share of flagged windows is the scene's ``novelty_share``.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import rasterio
import torch
from tqdm.auto import tqdm

from schoolvision.data.windows import window_offsets
from schoolvision.io.atomic import atomic_path
from schoolvision.io.imagery import file_count, native_gsd, open_scene, open_source, pixel_scale
from schoolvision.io.rasters import build_overviews
from schoolvision.io.scans import STRIDE_TAG
from schoolvision.model.runtime import Runtime, make_runtime
from schoolvision.scan.mask import ScanMask
from schoolvision.scan.options import ScanOptions
from schoolvision.scan.probability import RowBlender, raster_profile, warp_back
from schoolvision.scan.windows import WindowReader, prefetch, resized, score_windows
from schoolvision.train.novelty import FLAG_PERCENTILE, NoveltySummary, scene_warning

GDAL_CACHE_MB = 128
"""GDAL block cache while scanning (GDAL's default is 5% of RAM: gigabytes on a big machine)."""

GSD_TRANSFER_RATIO = 1.5
"""A native GSD further than this factor from the training GSD gets a warning."""


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
    pixels: dict = field(default_factory=dict)  # how the scene became 8-bit (PixelScale.record), as in dataset.json
    masked_windows: int = 0  # skipped by --mask (far from every mask feature): neither read nor scored
    files: int = 1  # the image files the scene joins (tiles of a mosaic)
    size_m: tuple[float, float] = (0.0, 0.0)  # width and height in metres, at the scan GSD
    novelty: str | None = None  # path of the novelty GeoTIFF (percentile of home chips), None without a summary
    novelty_share: float | None = None  # share of windows above the home FLAG_PERCENTILE


def scene_grid(source):
    """Open the scene's own grid: RGB, 8-bit, mask kept, CRS from ``--crs`` when the file has none (a context manager).

    An XYZ folder is its Web Mercator mosaic. Band numbers, CRS and scale are the source's options.
    """
    return open_scene(source)


@dataclass
class SceneScanner:
    """A model ready to scan scenes, with what every scene of a run shares.

    ``options`` are the scan's (:class:`~schoolvision.scan.options.ScanOptions`: ``stride`` in pixels at
    the scan GSD, default half a chip; ``batch_size``; ``prefetch_depth`` batches read ahead of the model;
    ``native_resolution``; ``progress``). ``device`` is where ``model`` already is (resolved, not
    ``options.device``'s "auto"). ``runtime`` runs the windows' forward passes: a built
    :class:`~schoolvision.model.runtime.Runtime`, or None for ``options.runtime`` made by
    :func:`~schoolvision.model.runtime.make_runtime` (``auto``: ONNX Runtime on CPU when installed,
    exported in memory; else channels_last torch).
    """

    model: torch.nn.Module
    meta: object  # CheckpointMeta: chip_size, gsd, image_size, temperature
    options: ScanOptions = field(default_factory=ScanOptions)
    device: str | torch.device = "cpu"
    runtime: Runtime | None = None
    mask: ScanMask | None = None  # scan --mask: only windows near a mask feature are scanned (scan.mask)
    novelty: NoveltySummary | None = None  # the run's summary: a trust map beside the probability raster

    def __post_init__(self) -> None:
        if self.runtime is None:
            self.runtime = make_runtime(self.options.runtime, self.model, self.meta, self.device)

    @property
    def chip(self) -> int:
        """Window side in pixels at the scan GSD: the training chips' size."""
        return int(self.meta.chip_size)

    def mask_distance(self, gsd: float) -> float:
        """Metres a window may lie from a mask feature: the mask's distance, else half a chip at the run's GSD.

        ``gsd`` stands in for a run without a recorded GSD (the scan grid's).
        """
        if self.mask is not None and self.mask.distance is not None:
            return float(self.mask.distance)
        return self.chip * float(self.meta.gsd or gsd) / 2

    def scan(self, source, out_path: str | Path, novelty_path: str | Path | None = None) -> SceneScan:
        """Scan ``source``; write its float32 probability GeoTIFF on the scene grid to ``out_path``.

        With a novelty summary, the novelty GeoTIFF goes to ``novelty_path`` (default: beside
        ``out_path``, ``_novelty.tif`` for ``_probability.tif``).
        """
        if self.novelty is not None and novelty_path is None:
            novelty_path = Path(out_path).with_name(Path(out_path).stem.removesuffix("_probability") + "_novelty.tif")
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 2**20):
            return self._scan(source, Path(out_path), None if self.novelty is None else Path(novelty_path))

    def _scan(self, source, out_path: Path, novelty_path: Path | None) -> SceneScan:
        chip = self.chip
        stride = int(self.options.stride or max(1, chip // 2))
        t0 = time.perf_counter()
        run_gsd = None if self.options.native_resolution else self.meta.gsd
        with scene_grid(source) as scene, open_source(source, gsd=run_gsd) as ds:
            gsd = abs(ds.transform.a)
            notes = self._notes(scene, ds, gsd)
            for note in notes:
                warnings.warn(f"{source.name}: {note}", stacklevel=3)
            rows, cols = window_offsets(ds.height, chip, stride), window_offsets(ds.width, chip, stride)
            windows = [(r, c) for r in rows for c in cols]
            total = len(windows)
            if self.mask is not None:  # windows far from every mask feature: never read, nodata in the raster
                windows = self.mask.select(windows, ds, chip, self.mask_distance(gsd))
            same_grid = (ds.crs == scene.crs and ds.transform == scene.transform
                         and (ds.width, ds.height) == (scene.width, scene.height))
            reader = WindowReader(ds, chip, self.options.batch_size)
            with (atomic_path(out_path) as final,
                  atomic_path(novelty_path) if novelty_path else contextlib.nullcontext() as novelty_final):
                finals = [final] if novelty_final is None else [final, novelty_final]
                grids = finals if same_grid else [f.with_name(f.stem + ".scan.tif") for f in finals]
                try:
                    share = self._stream(reader, windows, grids, source.name, overviews=same_grid, stride=stride)
                    if not same_grid:  # the stride in the scene's pixels: the scan grid's metres over the scene's
                        stride_px = stride * native_gsd(ds) / native_gsd(scene)
                        for grid_path, final_path in zip(grids, finals):
                            warp_back(grid_path, scene, final_path, stride_px)
                finally:
                    for grid_path, final_path in zip(grids, finals):
                        if grid_path != final_path and grid_path.exists():
                            grid_path.unlink()
            warning = None if share is None else scene_warning(source.name, share)
            if warning is not None:
                warnings.warn(warning, stacklevel=3)
                notes.append(warning)
            return SceneScan(
                scene=source.name, source=str(source.path), probability=str(out_path), crs=scene.crs.to_string(),
                width=scene.width, height=scene.height, scan_gsd=gsd, windows=len(windows) - reader.skipped,
                skipped_windows=reader.skipped, area_km2=round(_area_km2(ds), 4),
                seconds=round(time.perf_counter() - t0, 3), warnings=notes, pixels=pixel_scale(source).record(),
                masked_windows=total - len(windows), files=file_count(source),
                size_m=(round(ds.width * gsd, 1), round(ds.height * gsd, 1)),
                novelty=None if novelty_path is None else str(novelty_path),
                novelty_share=None if share is None else round(share, 4),
            )

    def _notes(self, scene, ds, gsd: float) -> list[str]:
        """Warnings about the scan grid: a native GSD far from training's, a scene smaller than a chip."""
        notes = []
        if self.options.native_resolution and self.meta.gsd:
            ratio = native_gsd(scene) / self.meta.gsd
            if ratio > GSD_TRANSFER_RATIO or ratio < 1 / GSD_TRANSFER_RATIO:
                notes.append(f"native GSD {native_gsd(scene):.2f} m is {ratio:.2f}x the training GSD "
                             f"{self.meta.gsd} m; the model may not transfer (drop --native-resolution to resample)")
        if ds.width < self.chip or ds.height < self.chip:
            notes.append(f"scene is {ds.width}x{ds.height} px at {gsd:g} m, smaller than one {self.chip} px chip; "
                         "padded")
        return notes

    def _stream(self, reader: WindowReader, windows: list, paths: list[Path], name: str,
                overviews: bool, stride: int) -> float | None:
        """Score ``windows``; blend their probabilities (and novelty) into rasters on the scan grid at ``paths``.

        Each raster records the window ``stride`` (:data:`~schoolvision.io.scans.STRIDE_TAG`).

        Returns:
            The share of scored windows above the home :data:`FLAG_PERCENTILE` (None without a summary).
        """
        meta, ds, area_km2 = self.meta, reader.ds, _area_km2(reader.ds)
        profile = raster_profile(ds.width, ds.height, ds.crs, ds.transform)
        flagged = scored = 0
        with contextlib.ExitStack() as stack:
            dsts = [stack.enter_context(rasterio.open(p, "w", **profile)) for p in paths]
            for dst in dsts:
                dst.update_tags(**{STRIDE_TAG: str(stride)})
            blenders = [RowBlender(dst, ds.width, ds.height, self.chip) for dst in dsts]
            bar = tqdm(total=len(windows), unit="win", desc=name, disable=not self.options.progress, leave=False)
            batches = reader.batches(windows)
            if self.runtime.device.type == "cpu":  # resize in the reader thread, while the model runs
                batches = resized(batches, meta.image_size)
            for offs, imgs, masks in prefetch(batches, self.options.prefetch_depth):
                values = score_windows(self.runtime, imgs, meta.image_size, self.novelty)
                for blender, vals in zip(blenders, values):
                    for (ro, co), v, m in zip(offs, vals, masks):
                        blender.add(ro, co, float(v), m)
                if self.novelty is not None:
                    flagged += int((values[1] > FLAG_PERCENTILE).sum())
                    scored += len(offs)
                bar.update(len(offs))
                done_km2 = area_km2 * (bar.n + reader.skipped) / len(windows)
                bar.set_postfix(km2=f"{done_km2:.2f}/{area_km2:.2f}", refresh=False)
            bar.update(reader.skipped)
            bar.close()
            for blender, dst in zip(blenders, dsts):
                blender.finish()
                if overviews:
                    build_overviews(dst)
        return None if self.novelty is None else flagged / max(scored, 1)


def _area_km2(ds) -> float:
    gsd = abs(ds.transform.a)
    return ds.width * ds.height * gsd * gsd / 1e6


def scan_scene(
    model: torch.nn.Module,
    meta,
    source,
    out_path: str | Path,
    options: ScanOptions | None = None,
    *,
    device: str | torch.device = "cpu",
    runtime: Runtime | str | None = None,
    mask: ScanMask | None = None,
    novelty: NoveltySummary | None = None,
    **fields,
) -> SceneScan:
    """Scan one imagery source; write its float32 probability GeoTIFF on the scene grid to ``out_path``.

    Args:
        model: classifier in eval mode on ``device``.
        meta: its ``CheckpointMeta`` (chip size, GSD, input size, temperature).
        source: an :class:`~schoolvision.io.imagery.ImagerySource`.
        out_path: where the probability GeoTIFF goes (written atomically).
        options: the scan's options (:class:`~schoolvision.scan.options.ScanOptions`: stride, batch size,
            native resolution, read-ahead, progress bar, runtime name); default: the defaults.
        device: where the model runs.
        runtime: a :class:`~schoolvision.model.runtime.Runtime` built for ``model``, or a runtime name
            (``options.runtime``: ``auto``, ``torch``, ``torch-fast``, ``onnx``).
        mask: scan only the windows near its features (:class:`~schoolvision.scan.mask.ScanMask`); the
            others are neither read nor scored and stay nodata.
        novelty: the run's novelty summary (:func:`schoolvision.train.novelty.read_summary`): a novelty
            GeoTIFF (``_novelty.tif`` beside ``out_path``) on the same grid and the scene's flagged share.
        **fields: :class:`ScanOptions` fields instead of ``options`` (``stride=32, progress=False``).

    Returns:
        What was scanned: grid, windows scored, skipped as nodata and skipped by the mask, area, time, warnings.

    Raises:
        UserError: the scene is not a readable raster, ``stride`` is not positive, or the runtime is
            unknown or not installed.
    """
    if isinstance(runtime, str):
        fields["runtime"], runtime = runtime, None
    options = replace(options or ScanOptions(), **fields)
    scanner = SceneScanner(model, meta, options, device=device, runtime=runtime, mask=mask, novelty=novelty)
    return scanner.scan(source, out_path)
