"""``schoolvision scan``: every scene to a probability raster, then candidates, evaluation and a map.

Scenes are scanned one after another (:mod:`schoolvision.scan.scene`); a scene that fails is reported
and the others go on. Under ``torchrun --nproc-per-node N -m schoolvision -- scan ...`` (the ``--``
keeps torchrun from reading ``--run``) each rank scans scenes ``rank, rank + N, ...`` (no duplicate,
no gap) and rank 0 gathers the results and writes candidates, evaluation and map.

Sizing: every window adds ``(stride x GSD)^2`` of new ground, so km^2/hour = windows/s x
(stride x GSD)^2 x 3600 / 10^6 (14.7 x windows/s at stride 64 and 1 m). Measure windows/s for a
backbone, chip and input size on the target machine with ``benchmarks/scan_throughput.py`` (it
also prints the model's bare rate, the ceiling), and memory with ``benchmarks/scan_memory.py``: the
blending band grows with a scene's width only and GDAL's block cache is capped, so memory does not
grow with the number or the height of scenes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rasterio.errors import RasterioError
from tqdm.auto import tqdm

from schoolvision.errors import UserError
from schoolvision.io.folders import ScanFolder, prepare_output
from schoolvision.io.imagery import list_sources
from schoolvision.model.checkpoint import load_classifier
from schoolvision.model.distributed import init_distributed
from schoolvision.scan.candidates import extract_all, write_candidates
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
    schools: Path | None = None
    match_distance: float = 50.0
    native_resolution: bool = False
    overwrite: bool = False
    cam_peaks: bool = True  # place candidates at their grad-CAM peak (else the probability peak)
    make_map: bool = True
    prefetch: int = 4  # batches read ahead
    progress: bool = True


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
        UserError: the output folder is not empty (without ``overwrite``), the run has no readable
            checkpoint, or no imagery was found. A scene that cannot be read is reported in
            ``ScanSummary.failed`` instead.
    """
    folder = ScanFolder(config.out_dir)
    ddp, device = init_distributed(config.device)
    if ddp.main:
        prepare_output(folder.root, config.overwrite)
    ddp.barrier()
    if model is None or meta is None:
        model, meta = load_classifier(config.run, device)
    scanner = SceneScanner(model.to(device).eval(), meta, device=device, stride=config.stride,
                           batch_size=config.batch_size, native_resolution=config.native_resolution,
                           prefetch_depth=config.prefetch, progress=config.progress)
    threshold = float(meta.threshold if config.threshold is None else config.threshold)
    sources = list_sources([Path(p) for p in config.imagery])
    if not sources:
        raise UserError("no imagery found (GeoTIFF files, folders of them, or XYZ tile folders)", config.imagery[0])
    scenes, failed = _scan_all(scanner, shard(sources, ddp.rank, ddp.world), folder, config.progress)
    if ddp.world > 1:
        parts = ddp.gather((scenes, failed))
        scenes = sorted((s for part in parts for s in part[0]), key=lambda s: s.scene)
        failed = {k: v for part in parts for k, v in part[1].items()}
    summary = ScanSummary(out_dir=str(folder.root), scenes=scenes, failed=failed, threshold=threshold, rank=ddp.rank)
    if ddp.main:
        _write_results(config, folder, summary, scanner, {s.name: s for s in sources})
    return summary


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
                   by_name: dict) -> None:
    """Candidates (and evaluation, map) of the scanned scenes, then ``scan.json``; fills ``summary``."""
    meta, scenes = scanner.meta, summary.scenes
    sources = {s.scene: by_name[s.scene] for s in scenes}
    merge_distance = meta.chip_size * (meta.gsd or 1.0) / 2
    cands, regions = extract_all(scenes, summary.threshold, merge_distance=merge_distance)
    if config.cam_peaks and len(cands):
        cands = place_at_cam_peaks(scanner.model, meta, cands, sources, scanner.device, regions)
    extra = {"regions": regions}
    if config.schools is not None:
        evaluation, layers = evaluate_scan(cands, scenes, config.schools, config.match_distance, summary.threshold,
                                           merge_distance)
        folder.write_evaluation(evaluation)
        extra.update(layers)
        summary.files["evaluation"] = str(folder.evaluation_path)
        summary.evaluation = evaluation
    written = write_candidates(cands, folder.root, extra_layers=extra)
    summary.candidates = len(cands)
    summary.files.update(candidates_gpkg=str(written["gpkg"]), candidates_geojson=str(written["geojson"]))
    if config.make_map and scenes:
        the_map = scan_map(scenes, cands, sources, schools=config.schools, evaluation_layers=extra)
        summary.files["map"] = str(save_map(the_map, folder.root / "map.html"))
    folder.write_summary({**asdict(summary), "run": str(config.run), "gsd": meta.gsd,
                          "chip_size": meta.chip_size, "stride": config.stride or meta.chip_size // 2})
