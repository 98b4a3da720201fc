"""``schoolvision scan``: every scene to a probability raster, then candidates, evaluation and a map.

One scene is one unit of work (:mod:`schoolvision.scan.unit`): its probability GeoTIFF, its candidates
and a done-record, each written atomically. The driver here skips scenes already done (``resume``),
hands the others to an engine (:mod:`schoolvision.scan.engines`: ``local`` in this process, or
``ray`` actors on this machine or a cluster), then merges the scenes' candidates across scene borders
(:mod:`schoolvision.scan.merge`), evaluates them against known schools and draws the map. A scene that
fails is reported and the others go on; ``scan.json`` counts the scenes done, skipped and failed,
and times each step (``seconds``; ``windows``, ``candidates`` and ``cam_peaks`` add up the units' own
times, ``scenes`` is the engine's wall time). Sizing a country: ``benchmarks/README.md``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from schoolvision.errors import UserError, check_range
from schoolvision.io import manifest
from schoolvision.io.folders import RunFolder, ScanFolder, prepare_output, sha256
from schoolvision.io.imagery import ImageryOptions, list_sources, parse_bands, parse_scale
from schoolvision.io.schools import read_schools
from schoolvision.io.tiles import TileOptions
from schoolvision.model.checkpoint import load_classifier
from schoolvision.model.device import resolve_device
from schoolvision.model.runtime import resolve_runtime
from schoolvision.scan.candidates import (
    PeakSweep,
    default_min_separation,
    read_fields,
    write_candidates,
)
from schoolvision.scan.engines import ENGINES, import_ray, make_engine
from schoolvision.scan.evaluation import evaluate_scan
from schoolvision.scan.mask import ScanMask
from schoolvision.scan.merge import read_scene_candidates
from schoolvision.scan.options import ScanOptions
from schoolvision.scan.registry import read_registry, write_audit
from schoolvision.scan.scene import SceneScan
from schoolvision.scan.unit import SceneOutcome, UnitSettings, changed_option, expected_record, is_done, model_checksum
from schoolvision.scan.webmap import save_map, scan_map
from schoolvision.train.novelty import FLAG_PERCENTILE, NO_SUMMARY, WARN_SHARE, read_summary


@dataclass(frozen=True, kw_only=True)
class ScanConfig(ScanOptions):
    """Everything ``schoolvision scan`` needs: the scene options (:class:`ScanOptions`), inputs, outputs, engine.

    Frozen and handed down unchanged: the units, the scene scanner and the candidate functions read their
    options from it (as :class:`ScanOptions`); the done-record of a scene is written from it.
    """

    run: Path
    imagery: list[Path]
    out_dir: Path
    schools: Path | None = None  # known schools to evaluate against (any file read_schools reads)
    schools_layer: str | None = None  # layer of a multi-layer schools file
    schools_where: str | None = None  # attribute filter of the schools file, e.g. "amenity=school"
    lonlat_columns: tuple[str, str] | None = None  # (lon, lat) columns of a CSV schools file; None = by name
    registry: Path | None = None  # a school registry to audit (scan.registry; any file read_schools reads)
    registry_id_column: str | None = None  # the registry's id column; None: found by name (scan.registry.ID_COLUMNS)
    mask: Path | None = None  # building footprints / areas: only windows near them are scanned (scan.mask)
    mask_distance: float | None = None  # skip windows farther than this (m) from every mask feature; None: half a chip
    mask_layer: str | None = None  # layer of a multi-layer mask file
    mask_min_area: float | None = None  # m2: mask polygons smaller than this are left out (e.g. houses)
    bands: tuple[int, int, int] | str | None = None  # RGB band numbers; None = the run's, "auto" = the band rule
    crs: str | None = None  # CRS of rasters without one
    scale: tuple[float, float] | str | None = None  # fixed 8-bit range; None = the run's rule, "auto" = stretch
    overwrite: bool = False
    make_map: bool = True
    tile_scheme: str | None = None  # web-map tiles: "xyz" or "tms"; None = TMS if tilemapresource.xml (io.tiles)
    tile_pattern: str | None = None  # tile names, e.g. "{z}/{x}/{y}" or "OAM-{x}-{y}-{z}"; None = z-x-y or z/x/y
    zoom: int | None = None  # zoom level of a tile folder holding several; None = the finest
    separate_scenes: bool = False  # one scene per GeoTIFF, never a mosaic of adjacent tiles
    engine: str = "local"  # where scene units run: local (this process) or ray (scan.engines)
    ray_address: str | None = None  # a running Ray cluster ("auto" or HOST:PORT); None: a local Ray instance
    cpus_per_worker: int = 1  # CPUs (torch threads) of each Ray actor without a GPU
    resume: bool = False  # continue the scan in out_dir: scenes with a matching done-record are skipped
    map_candidates: int = 2000  # map.html shows the top N candidates (all are in candidates.gpkg)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("--cpus-per-worker", self.cpus_per_worker, minimum=1)
        check_range("--map-candidates", self.map_candidates, minimum=0)
        if self.engine not in ENGINES:
            raise UserError(f"unknown --engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if self.resume and self.overwrite:
            raise UserError("--resume continues the scan in --out, --overwrite starts it again: pass one of them")
        check_range("--mask-distance", self.mask_distance, minimum=0)
        check_range("--mask-min-area", self.mask_min_area, minimum=0)


AFTER_WINDOWS = ("candidates", "cam_peaks", "evaluation", "files", "map")
"""The steps after the windows, timed in ``ScanSummary.seconds`` (``files``: candidates, evaluation.json).

``candidates`` and ``cam_peaks`` run in each scene's unit (the driver adds its merge to ``candidates``),
so they add up the units' times, as ``windows`` does; the rest runs on the driver.
"""

UNIT_STEPS = ("windows", "candidates", "cam_peaks", "files")
"""The steps a scene's unit times (``steps`` of its done-record)."""


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
    engine: str = "local"  # where the scene units ran (scan.engines)
    scene_counts: dict[str, int] = field(default_factory=dict)  # done (this run), skipped (done before), failed
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
        now = time.perf_counter()  # added to what the scenes' units spent on the step, if anything
        self.seconds[self.current] = round(self.seconds.get(self.current, 0.0) + now - self.start, 3)
        self.start = now
        self.bar.update()
        self.current = next(self.names, "")
        if self.current:
            self.bar.set_description(self.current)
        else:
            self.bar.close()


def run_scan(config: ScanConfig, model: torch.nn.Module | None = None, meta=None) -> ScanSummary:
    """Scan every scene (skipping those done before, with ``resume``), merge the candidates, evaluate, draw the map.

    Args:
        config: what to scan, with which run, into which folder, on which engine.
        model: a classifier to use instead of the run's checkpoint (tests, notebooks holding a model); the
            run's novelty summary, when it has one, is used with it (so it should be the run's own model).
        meta: its ``CheckpointMeta``; both ``model`` and ``meta`` or neither.

    Returns:
        The summary also written to ``scan.json``.

    Raises:
        UserError: the schools file cannot be read (checked before anything is scanned or written),
            the output folder is not empty (without ``overwrite`` or ``resume``), ``resume`` finds
            scenes done with another run or other options, the run has no readable checkpoint, no
            imagery was found, or ``engine="ray"`` without Ray installed. A scene that cannot be read
            is reported in ``ScanSummary.failed`` instead.
    """
    inputs = _read_inputs(config)  # everything a user can get wrong, refused before anything is written
    folder = ScanFolder(config.out_dir)
    prepare_output(folder.root, config.overwrite,
                   inputs={"--run": config.run if model is None else None, "--imagery": config.imagery,
                           "--schools": config.schools, "--registry": config.registry, "--mask": config.mask},
                   is_same=(lambda _: True) if config.resume else None)
    if config.resume:
        manifest.remove_temporaries(folder.root)  # what a killed run was writing; its finished scenes stay
    started = time.perf_counter()
    plan = _plan(config, inputs, folder, model, meta)
    todo = [s for s in plan.sources if s.name not in plan.done_before]
    setup = time.perf_counter()
    outcomes, (runtime, detail) = {}, (inputs.runtime, "")
    if todo:
        local = config.engine == "local"
        with make_engine(config.engine, plan.settings, plan.model if local or not plan.loaded else None, plan.meta,
                         from_run=plan.loaded, address=config.ray_address, cpus_per_worker=config.cpus_per_worker,
                         progress=config.progress) as engine:
            for outcome in engine.map(todo):
                outcomes[outcome.scene] = outcome
                if outcome.status == "failed":
                    warnings.warn(f"scan failed for {outcome.scene}: {outcome.error}", stacklevel=2)
            runtime, detail = engine.describe()
    summary = _summarise(folder, plan.sources, plan.done_before, outcomes, plan.settings.threshold, runtime,
                         config.engine)
    summary.seconds.update(setup=round(setup - started, 3), scenes=round(time.perf_counter() - setup, 3))
    _write_results(config, folder, summary, plan.meta, {s.name: s for s in plan.sources}, inputs.known,
                   registry=inputs.registry, merge_distance=plan.settings.merge_distance, runtime_detail=detail,
                   mask=inputs.mask, novelty=plan.novelty)
    return summary


@dataclass
class _Inputs:
    """What ``run_scan`` reads and checks before it writes anything."""

    known: Any  # the known schools (GeoDataFrame) or None
    registry: Any  # the registry (scan.registry) or None
    mask: ScanMask | None
    tiles: TileOptions
    device: Any  # the resolved torch device
    runtime: str  # the resolved runtime name


def _read_inputs(config: ScanConfig) -> _Inputs:
    """Read the labels, registry and mask files and resolve device and runtime: a bad one costs nothing."""
    _imagery_options(config, None)  # a bad --bands / --crs / --scale is refused before anything is written
    known = None
    if config.schools is not None:  # a bad labels file must cost nothing: read it before any scene
        known = read_schools(config.schools, point_buffer_m=None, layer=config.schools_layer,
                             where=config.schools_where, lonlat_columns=config.lonlat_columns)
    registry = None if config.registry is None else read_registry(  # a bad file: before any scene
        config.registry, id_column=config.registry_id_column)
    # a bad mask file costs nothing either; one holding millions of footprints is read once, here
    mask = None if config.mask is None else ScanMask.read(config.mask, config.mask_layer, config.mask_distance,
                                                          config.mask_min_area)
    tiles = TileOptions.of(config)  # a bad --tile-pattern / --zoom costs nothing either
    device = resolve_device(config.device)
    runtime = resolve_runtime(config.runtime, device)  # unknown or missing: refused before anything is written
    if config.engine == "ray":
        import_ray()  # not installed: one line naming the extra, before anything is written
    return _Inputs(known, registry, mask, tiles, device, runtime)


@dataclass
class _Plan:
    """The model, the scenes and what every unit shares; ``done_before``: the scenes a resume skips."""

    model: Any
    meta: Any
    loaded: bool  # the model was loaded from the run's checkpoint
    sources: list
    novelty: Any
    settings: UnitSettings
    done_before: dict[str, dict]


def _plan(config: ScanConfig, inputs: _Inputs, folder: ScanFolder, model, meta) -> _Plan:
    """Load the model, list the scenes, and write down what a done-record must hold (``expected``)."""
    loaded = model is None or meta is None
    if loaded:
        model, meta = load_classifier(config.run, inputs.device)
    checksum = sha256(RunFolder.checkpoint(config.run)) if loaded else model_checksum(model)
    # the trust map compares with the run's summary (a model handed in stands for the run's own checkpoint)
    has_checkpoint = RunFolder.checkpoint(config.run).is_file()
    novelty = read_summary(config.run) if has_checkpoint else None  # UserError: unreadable, another checkpoint's
    sources = list_sources([Path(p) for p in config.imagery], inputs.tiles)
    if not sources:
        raise UserError("no imagery found (GeoTIFF files, folders of them, or XYZ tile folders)", config.imagery[0])
    options = _imagery_options(config, meta)
    sources = [s.with_options(options) for s in sources]
    if inputs.mask is not None:  # a mask of another place: one line with both extents, before any window is read
        inputs.mask.check_covers(sources, _mask_distance(inputs.mask, meta))
    if has_checkpoint and novelty is None:  # after every refusal: a refused scan says only why
        warnings.warn(NO_SUMMARY.format(run=config.run), stacklevel=3)
    threshold = float(meta.threshold if config.threshold is None else config.threshold)
    merge_distance = meta.chip_size * (meta.gsd or 1.0) / 2
    min_separation = _min_separation(config, meta)
    expected = expected_record(checksum, {
        "threshold": threshold, "stride": config.stride or meta.chip_size // 2, "runtime": inputs.runtime,
        "native_resolution": config.native_resolution, "cam_peaks": config.cam_peaks,
        "imagery": options.record(), "merge_distance": merge_distance, "min_area_m2": config.min_area_m2,
        "min_separation": min_separation, **_mask_options(config, inputs.mask), **_novelty_options(config, novelty)})
    done_before = _check_resume(folder, sources, expected) if config.resume else {}
    settings = UnitSettings(out_dir=str(folder.root), run=str(config.run), options=config, threshold=threshold,
                            merge_distance=merge_distance, min_separation=min_separation, expected=expected,
                            mask=inputs.mask, sweep=config.schools is not None, novelty=novelty)
    return _Plan(model, meta, loaded, sources, novelty, settings, done_before)


def _min_separation(config: ScanConfig, meta) -> float:
    """Metres between two peaks of a region that make them two candidates: the option, else a chip's share."""
    if config.min_separation is not None:
        return float(config.min_separation)
    return default_min_separation(meta.chip_size, meta.gsd)


def _mask_distance(mask, meta) -> float:
    """Metres a window may lie from a mask feature (as ``SceneScanner.mask_distance`` at the run's GSD)."""
    return float(mask.distance) if mask.distance is not None else meta.chip_size * float(meta.gsd or 1.0) / 2


def _mask_options(config: ScanConfig, mask) -> dict:
    """The mask options a done-record must match (none without a mask, so older records stay valid)."""
    if mask is None:
        return {}
    return {"mask": sha256(config.mask), "mask_layer": config.mask_layer, "mask_distance": config.mask_distance,
            "mask_min_area": config.mask_min_area}


def _novelty_options(config: ScanConfig, novelty) -> dict:
    """The novelty summary a done-record must match (none without one, so older records stay valid)."""
    return {} if novelty is None else {"novelty": sha256(RunFolder(RunFolder.checkpoint(config.run).parent)
                                                          .novelty_path)}


def _novelty_record(scenes: Sequence[SceneScan], novelty) -> dict:
    """``scan.json``'s ``novelty``: how windows were flagged, and the scenes above the warning share."""
    if novelty is None:
        return {"summary": None}
    return {"summary": novelty.record.get("method"), "flag_percentile": FLAG_PERCENTILE, "warn_share": WARN_SHARE,
            "scenes_warned": [s.scene for s in scenes if (s.novelty_share or 0.0) > WARN_SHARE]}


def _check_resume(folder: ScanFolder, sources: list, expected: dict) -> dict[str, dict]:
    """The done-records of the scenes finished before; refuse a folder scanned with another run or options.

    Raises:
        UserError: a done-record names another run checksum or other options (the one line says which).
    """
    for name in folder.done_scenes():
        record = folder.read_done(name)
        why = None if record is None else changed_option(record, expected)
        if why is not None:
            raise UserError(f"--resume: {why} since scene {name} was scanned into this folder; rerun with the same "
                            "run and options, or scan into another --out", folder.root)
    done = {}
    for source in sources:
        record = folder.read_done(source.name)
        if record is not None and is_done(folder, source, expected, record):
            done[source.name] = record
    return done


def _summarise(folder: ScanFolder, sources: list, done_before: dict[str, dict], outcomes: dict[str, SceneOutcome],
               threshold: float, runtime: str, engine: str) -> ScanSummary:
    """The summary of the scenes in the order listed: skipped ones from their records, the others from the units."""
    scenes, failed, seconds = [], {}, dict.fromkeys(UNIT_STEPS, 0.0)
    for source in sources:
        if source.name in done_before:
            scenes.append(SceneScan(**done_before[source.name]["scan"]))
            continue
        outcome = outcomes.get(source.name)
        if outcome is None:
            continue
        if outcome.status == "failed":
            failed[source.name] = outcome.error
            continue
        scenes.append(outcome.scan())
        for step, value in (outcome.record.get("steps") or {}).items():
            seconds[step] = seconds.get(step, 0.0) + value
    counts = {"done": len(scenes) - len(done_before), "skipped": len(done_before), "failed": len(failed)}
    return ScanSummary(out_dir=str(folder.root), scenes=scenes, failed=failed, threshold=threshold, runtime=runtime,
                       engine=engine, scene_counts=counts, seconds={k: round(v, 3) for k, v in seconds.items()})


def kept_sweeps(folder: ScanFolder, scenes: Sequence) -> dict[str, PeakSweep]:
    """The :class:`PeakSweep` each scene's unit kept in its done-record (scenes scanned without one are left out)."""
    sweeps = {}
    for scene in scenes:
        record = folder.read_done(scene.scene) or {}
        if record.get("sweep"):
            sweeps[scene.scene] = PeakSweep.from_record(scene.scene, record["sweep"])
    return sweeps


def _imagery_options(config: ScanConfig, meta) -> ImageryOptions:
    """How scenes are read: an explicit option wins, else what the run's chips used (bands, 8-bit scale rule).

    ``auto`` asks for the plain rule (band rule, percentile stretch) whatever the run recorded.
    """
    recorded = (getattr(meta, "imagery", None) or {}) if meta is not None else {}
    bands = recorded.get("bands") if config.bands is None else parse_bands(config.bands)
    scale = recorded.get("scale") if config.scale is None else parse_scale(config.scale)
    return ImageryOptions(bands=bands, crs=config.crs, scale=scale)


def _write_results(config: ScanConfig, folder: ScanFolder, summary: ScanSummary, meta, by_name: dict,
                   known=None, registry=None, *, merge_distance: float, runtime_detail: str = "",
                   mask=None, novelty=None) -> None:
    """Merged candidates (and evaluation, map) of the scanned scenes, then ``scan.json``; fills ``summary``.

    The scenes' candidates come from their units' files (:func:`read_scene_candidates`); the evaluation's
    precision-recall curve reads each probability raster once; a bar shows the steps, ``summary.seconds``
    their times.
    """
    scenes = summary.scenes
    sources = {s.scene: by_name[s.scene] for s in scenes}
    steps = _Steps(AFTER_WINDOWS, summary.seconds, config.progress)
    cands, regions = read_scene_candidates(folder, scenes, merge_distance)
    steps.done()
    steps.done()  # cam_peaks: in the units
    extra = {"regions": regions}
    if known is not None and scenes:  # with every scene failed there is nothing to evaluate: the failures say why
        separation = _min_separation(config, meta)
        evaluation, layers = evaluate_scan(cands, scenes, known, config.match_distance, summary.threshold,
                                           merge_distance, fields=read_fields(scenes, kept_sweeps(folder, scenes),
                                                                              config.min_area_m2, separation),
                                           progress=config.progress,
                                           min_area_m2=config.min_area_m2, min_separation=separation)
        extra.update(layers)
        summary.evaluation = evaluation
    audit = {} if registry is None else write_audit(folder, cands, scenes, registry, config.match_distance, extra)
    steps.done()
    if summary.evaluation is not None:
        folder.write_evaluation(summary.evaluation)
        summary.files["evaluation"] = str(folder.evaluation_path)
    written = write_candidates(cands, folder.root, extra_layers=extra)
    summary.candidates = len(cands)
    summary.files.update(candidates_gpkg=str(written["gpkg"]), candidates_geojson=str(written["geojson"]))
    steps.done()
    if config.make_map and scenes:
        the_map = scan_map(scenes, cands, sources, schools=known, evaluation_layers=extra,
                           max_markers=config.map_candidates)
        summary.files["map"] = str(save_map(the_map, folder.root / "map.html"))
    steps.done()
    summary.seconds["after_windows"] = round(sum(summary.seconds[k] for k in AFTER_WINDOWS), 3)
    labels = {} if known is None else {"schools_read": known.attrs.get("source", {})}
    imagery = {"imagery": next(iter(by_name.values())).options.record()} if by_name else {}  # bands, scale rule
    folder.write_summary({**asdict(summary), "run": str(config.run), "gsd": meta.gsd,
                          "chip_size": meta.chip_size, "stride": config.stride or meta.chip_size // 2,
                          "min_area_m2": config.min_area_m2, "min_separation": _min_separation(config, meta),
                          **labels,
                          **imagery, "runtime_detail": runtime_detail, **audit,
                          "novelty": _novelty_record(scenes, novelty),
                          **({} if mask is None else  # --mask: the file, the distance, windows skipped
                             {"mask": mask.record(scenes, _mask_distance(mask, meta))})})
