"""``schoolvision scan``: every scene to a probability raster, then candidates, evaluation and a map.

Scenes are scanned one after another (:mod:`schoolvision.scan.scene`); a scene that fails is reported
and the others go on. Under ``torchrun --nproc-per-node N -m schoolvision -- scan ...`` (the ``--``
keeps torchrun from reading ``--run``) each rank scans scenes ``rank, rank + N, ...`` (no duplicate,
no gap) and rank 0 gathers the results and writes candidates, evaluation and map.

Sizing: every window adds ``(stride x GSD)^2`` of new ground, so km^2/hour = windows/s x
(stride x GSD)^2 x 3600 / 10^6 (14.7 x windows/s at stride 64 and 1 m). Measure windows/s for a
backbone, chip and input size on the target machine with ``benchmarks/scan_throughput.py`` (per
runtime, beside each runtime's bare rate, the ceiling; and the share of a scan spent after the
windows), and memory with ``benchmarks/scan_memory.py``: the blending band grows with a scene's
width only and GDAL's block cache is capped, so memory does not grow with the number or the height
of scenes. The windows' forward passes run in the ``--runtime`` (built once per scan); candidates,
grad-CAM peaks and the evaluation's precision-recall sweep share each raster's preparation
(:class:`~schoolvision.scan.candidates.ProbabilityField`) and are timed in ``scan.json`` (``seconds``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rasterio.errors import RasterioError
from tqdm.auto import tqdm

from schoolvision.errors import UserError, check_range
from schoolvision.io.folders import ScanFolder, prepare_output
from schoolvision.io.imagery import ImageryOptions, list_sources, parse_bands, parse_scale
from schoolvision.io.schools import read_schools
from schoolvision.io.tiles import TileOptions
from schoolvision.model.checkpoint import load_classifier
from schoolvision.model.distributed import init_distributed
from schoolvision.model.runtime import make_runtime, resolve_runtime
from schoolvision.scan.candidates import extract_all, read_fields, write_candidates
from schoolvision.scan.evaluation import evaluate_scan
from schoolvision.scan.peaks import place_at_cam_peaks
from schoolvision.scan.scene import SceneScan, SceneScanner
from schoolvision.scan.webmap import save_map, scan_map


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
    runtime: str = "auto"  # forward passes of the windows: auto, torch, torch-fast or onnx (model.runtime)
    schools: Path | None = None  # known schools to evaluate against (any file read_schools reads)
    schools_layer: str | None = None  # layer of a multi-layer schools file
    schools_where: str | None = None  # attribute filter of the schools file, e.g. "amenity=school"
    lonlat_columns: tuple[str, str] | None = None  # (lon, lat) columns of a CSV schools file; None = by name
    match_distance: float = 50.0
    bands: tuple[int, int, int] | str | None = None  # RGB band numbers; None = the run's, "auto" = the band rule
    crs: str | None = None  # CRS of rasters without one
    scale: tuple[float, float] | str | None = None  # fixed 8-bit range; None = the run's rule, "auto" = stretch
    native_resolution: bool = False
    overwrite: bool = False
    cam_peaks: bool = True  # place candidates at their grad-CAM peak (else the probability peak)
    make_map: bool = True
    prefetch: int = 4  # batches read ahead
    progress: bool = True
    tile_scheme: str | None = None  # web-map tiles: "xyz" or "tms"; None = TMS if tilemapresource.xml (io.tiles)
    tile_pattern: str | None = None  # tile names, e.g. "{z}/{x}/{y}" or "OAM-{x}-{y}-{z}"; None = z-x-y or z/x/y
    zoom: int | None = None  # zoom level of a tile folder holding several; None = the finest
    separate_scenes: bool = False  # one scene per GeoTIFF, never a mosaic of adjacent tiles

    def __post_init__(self) -> None:
        check_range("--stride", self.stride, minimum=1)
        check_range("--batch-size", self.batch_size, minimum=1)
        check_range("--threshold", self.threshold, above=0, below=1)
        check_range("--match-distance", self.match_distance, above=0)
        check_range("prefetch", self.prefetch, minimum=0)


AFTER_WINDOWS = ("candidates", "cam_peaks", "evaluation", "files", "map")
"""The steps after the windows, timed in ``ScanSummary.seconds`` (``files``: candidates, evaluation.json)."""


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
    runtime: str = ""  # the runtime that scored the windows (model.runtime), e.g. "onnx"
    seconds: dict[str, float] = field(default_factory=dict)  # setup, windows, AFTER_WINDOWS steps, after_windows


class _Steps:
    """A progress bar over named steps that also times each one into ``seconds`` (``ScanSummary.seconds``)."""

    def __init__(self, names: Sequence[str], seconds: dict[str, float], progress: bool):
        self.names, self.seconds = iter(names), seconds
        self.current = next(self.names)
        self.bar = tqdm(total=len(names), desc=self.current, unit="step", disable=not progress)
        self.start = time.perf_counter()

    def done(self) -> None:
        """The current step is done: record its time, show the next one."""
        now = time.perf_counter()
        self.seconds[self.current] = round(now - self.start, 3)
        self.start = now
        self.bar.update()
        self.current = next(self.names, "")
        if self.current:
            self.bar.set_description(self.current)
        else:
            self.bar.close()


def shard(items: Sequence, rank: int, world: int) -> list:
    """Items of ``rank`` out of ``world``: every item in exactly one rank (round robin)."""
    return list(items[rank::world])


def run_scan(config: ScanConfig, model: torch.nn.Module | None = None, meta=None) -> ScanSummary:
    """Scan every scene, then (on rank 0) extract candidates, evaluate against known schools, draw the map.

    Args:
        config: what to scan, with which run, into which folder.
        model: a classifier to use instead of the run's checkpoint (tests, notebooks holding a model).
        meta: its ``CheckpointMeta``; both ``model`` and ``meta`` or neither.

    Returns:
        The summary also written to ``scan.json`` (on rank 0; other ranks return theirs unwritten).

    Raises:
        UserError: the schools file cannot be read (checked before anything is scanned or written),
            the output folder is not empty (without ``overwrite``), the run has no readable
            checkpoint, or no imagery was found. A scene that cannot be read is reported in
            ``ScanSummary.failed`` instead.
    """
    _imagery_options(config, None)  # a bad --bands / --crs / --scale is refused before anything is written
    known = None
    if config.schools is not None:  # a bad labels file must cost nothing: read it before any scene
        known = read_schools(config.schools, point_buffer_m=None, layer=config.schools_layer,
                             where=config.schools_where, lonlat_columns=config.lonlat_columns)
    tiles = TileOptions.of(config)  # a bad --tile-pattern / --zoom costs nothing either
    folder = ScanFolder(config.out_dir)
    ddp, device = init_distributed(config.device)
    resolve_runtime(config.runtime, device)  # an unknown or missing runtime is refused before anything is written
    if ddp.main:
        prepare_output(folder.root, config.overwrite,
                       inputs={"--run": config.run if model is None else None, "--imagery": config.imagery,
                               "--schools": config.schools})
    ddp.barrier()
    started = time.perf_counter()
    loaded = model is None or meta is None
    if loaded:
        model, meta = load_classifier(config.run, device)
    model = model.to(device).eval()
    # built once for every scene; the ONNX graph is cached beside a checkpoint this function loaded itself
    runtime = make_runtime(config.runtime, model, meta, device, checkpoint=config.run if loaded else None)
    scanner = SceneScanner(model, meta, device=device, stride=config.stride, batch_size=config.batch_size,
                           native_resolution=config.native_resolution, prefetch_depth=config.prefetch,
                           progress=config.progress, runtime=runtime)
    threshold = float(meta.threshold if config.threshold is None else config.threshold)
    sources = list_sources([Path(p) for p in config.imagery], tiles)
    if not sources:
        raise UserError("no imagery found (GeoTIFF files, folders of them, or XYZ tile folders)", config.imagery[0])
    options = _imagery_options(config, meta)
    sources = [s.with_options(options) for s in sources]
    setup = time.perf_counter()
    scenes, failed = _scan_all(scanner, shard(sources, ddp.rank, ddp.world), folder, config.progress)
    seconds = {"setup": round(setup - started, 3), "windows": round(time.perf_counter() - setup, 3)}
    if ddp.world > 1:
        parts = ddp.gather((scenes, failed))
        scenes = sorted((s for part in parts for s in part[0]), key=lambda s: s.scene)
        failed = {k: v for part in parts for k, v in part[1].items()}
    summary = ScanSummary(out_dir=str(folder.root), scenes=scenes, failed=failed, threshold=threshold, rank=ddp.rank,
                          runtime=runtime.name, seconds=seconds)
    if ddp.main:
        _write_results(config, folder, summary, scanner, {s.name: s for s in sources}, known)
    return summary


def _imagery_options(config: ScanConfig, meta) -> ImageryOptions:
    """How scenes are read: an explicit option wins, else what the run's chips used (bands, 8-bit scale rule).

    ``auto`` asks for the plain rule (band rule, percentile stretch) whatever the run recorded.
    """
    recorded = (getattr(meta, "imagery", None) or {}) if meta is not None else {}
    bands = recorded.get("bands") if config.bands is None else parse_bands(config.bands)
    scale = recorded.get("scale") if config.scale is None else parse_scale(config.scale)
    return ImageryOptions(bands=bands, crs=config.crs, scale=scale)


def _scan_all(scanner: SceneScanner, sources: list, folder: ScanFolder,
              progress: bool) -> tuple[list[SceneScan], dict[str, str]]:
    """Scan ``sources`` into ``folder``; a scene that fails is noted and warned about, the others go on."""
    scenes, failed = [], {}
    for source in tqdm(sources, unit="scene", desc="scan", disable=not progress or len(sources) < 2):
        try:
            scenes.append(scanner.scan(source, folder.probability_path(source.name)))
        except (UserError, RasterioError, OSError) as exc:
            failed[source.name] = str(exc).splitlines()[0]
            warnings.warn(f"scan failed for {source.path}: {failed[source.name]}", stacklevel=3)
    return scenes, failed


def _write_results(config: ScanConfig, folder: ScanFolder, summary: ScanSummary, scanner: SceneScanner,
                   by_name: dict, known=None) -> None:
    """Candidates (and evaluation, map) of the scanned scenes, then ``scan.json``; fills ``summary``.

    Each probability raster is read and prepared once (:func:`read_fields`) for the candidates and every
    threshold of the evaluation's precision-recall curve; a bar shows the steps, ``summary.seconds`` their times.
    """
    meta, scenes = scanner.meta, summary.scenes
    sources = {s.scene: by_name[s.scene] for s in scenes}
    merge_distance = meta.chip_size * (meta.gsd or 1.0) / 2
    steps = _Steps(AFTER_WINDOWS, summary.seconds, config.progress)
    fields = read_fields(scenes)
    cands, regions = extract_all(scenes, summary.threshold, merge_distance=merge_distance, fields=fields)
    steps.done()
    if config.cam_peaks and len(cands):
        cands = place_at_cam_peaks(scanner.model, meta, cands, sources, scanner.device, regions)
    steps.done()
    extra = {"regions": regions}
    if known is not None and scenes:  # with every scene failed there is nothing to evaluate: the failures say why
        evaluation, layers = evaluate_scan(cands, scenes, known, config.match_distance, summary.threshold,
                                           merge_distance, fields=fields, progress=config.progress)
        extra.update(layers)
        summary.evaluation = evaluation
    steps.done()
    if summary.evaluation is not None:
        folder.write_evaluation(summary.evaluation)
        summary.files["evaluation"] = str(folder.evaluation_path)
    written = write_candidates(cands, folder.root, extra_layers=extra)
    summary.candidates = len(cands)
    summary.files.update(candidates_gpkg=str(written["gpkg"]), candidates_geojson=str(written["geojson"]))
    steps.done()
    if config.make_map and scenes:
        the_map = scan_map(scenes, cands, sources, schools=known, evaluation_layers=extra)
        summary.files["map"] = str(save_map(the_map, folder.root / "map.html"))
    steps.done()
    summary.seconds["after_windows"] = round(sum(summary.seconds[k] for k in AFTER_WINDOWS), 3)
    labels = {} if known is None else {"schools_read": known.attrs.get("source", {})}
    imagery = {"imagery": next(iter(by_name.values())).options.record()} if by_name else {}  # bands, scale rule
    folder.write_summary({**asdict(summary), "run": str(config.run), "gsd": meta.gsd,
                          "chip_size": meta.chip_size, "stride": config.stride or meta.chip_size // 2, **labels,
                          **imagery, "runtime_detail": scanner.runtime.describe()})
