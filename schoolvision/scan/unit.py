"""One scene, one pure and restartable unit of a scan: scene (+ run) -> its files and a done-record.

A unit scans one scene into its probability GeoTIFF (tiled, overviews), extracts the scene's
candidates (split regions, merged within the scene, moved to their grad-CAM peaks) into
``scenes/<scene>.candidates.gpkg`` and writes ``scenes/<scene>.done.json`` last. Every file is
written atomically, so a unit killed at any point leaves either nothing new or a scene that is
finished; a scene whose done-record matches (same source file size and mtime, same run checksum,
same options) is finished and is not scanned again. That makes a scan resumable (``scan --resume``)
and lets an engine retry a scene whose worker died (:mod:`schoolvision.scan.engines`): a retry of a
finished scene returns its record. Candidates are merged across scenes afterwards, by the driver
(:mod:`schoolvision.scan.merge`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from rasterio.errors import RasterioError

from schoolvision.errors import UserError
from schoolvision.io import manifest
from schoolvision.io.folders import ScanFolder
from schoolvision.model.checkpoint import load_classifier
from schoolvision.model.device import resolve_device
from schoolvision.model.runtime import make_runtime
from schoolvision.scan.candidates import ProbabilityField, merge_duplicates
from schoolvision.scan.novelty import sample_novelty
from schoolvision.scan.options import ScanOptions
from schoolvision.scan.peaks import place_at_cam_peaks
from schoolvision.scan.scene import SceneScan, SceneScanner
from schoolvision.train.novelty import read_summary

NOVELTY_FROM_RUN = "from-run"
"""``UnitSettings.novelty`` for a worker that reads the run's novelty summary itself (a Ray actor)."""


@dataclass(frozen=True)
class UnitSettings:
    """What every scene of a scan shares; picklable, so a Ray actor can be built from it.

    ``options`` is the scan's options object as the command line made it (the ``ScanConfig``, unchanged);
    the other fields are what the driver resolved from it and the run: the threshold (``options.threshold``
    or the run's), the minimum separation (``options.min_separation`` or 3/4 of a chip), the merge distance,
    the mask read from ``options.mask``. ``expected`` is what a done-record must hold to count as finished:
    the run's checksum and the options that change a scene's files (see :func:`expected_record`).
    """

    out_dir: str
    run: str
    options: ScanOptions = field(default_factory=ScanOptions)
    threshold: float = 0.5  # resolved: options.threshold, else the run's tuned one
    merge_distance: float = 32.0  # half a chip's ground width
    min_separation: float = 0.0  # resolved: options.min_separation, else 3/4 of a chip (scan.candidates)
    expected: dict = field(default_factory=dict)
    mask: Any = None  # scan --mask: a ScanMask (scan.mask); only windows near its features are scanned
    sweep: bool = False  # keep the evaluation's per-threshold peaks in the done-record (scan --schools)
    novelty: Any = None  # the run's NoveltySummary (train.novelty): a novelty raster and field per scene; or
    # NOVELTY_FROM_RUN: read from the run by the worker (Ray actors: megabytes of arrays stay out of their arguments)


@dataclass
class SceneOutcome:
    """What a unit returned for one scene: ``done`` with its done-record, or ``failed`` with a one-line reason."""

    scene: str
    status: str  # "done" | "failed"
    record: dict | None = None
    error: str = ""

    def scan(self) -> SceneScan:
        """The scene's :class:`SceneScan` from its done-record."""
        return SceneScan(**self.record["scan"])


def expected_record(run_checksum: str, options: dict[str, Any]) -> dict[str, Any]:
    """The part of a done-record that must match: run checksum and options, as JSON reads them back."""
    return json.loads(json.dumps({"run_sha256": run_checksum, "options": options}, sort_keys=True, default=str))


def model_checksum(model: torch.nn.Module) -> str:
    """SHA-256 of a model's parameters and buffers: the run checksum of a model handed in without a checkpoint."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def source_stamp(source) -> dict[str, Any]:
    """Path, total size and latest mtime (ns) of the files of an imagery source: a changed scene is rescanned."""
    root = Path(source.path)
    names = list(source.parts) or [t[3] for t in source.tiles]
    files = [p if p.is_absolute() else root / p for p in map(Path, names)] or [root]
    stats = [f.stat() for f in files if f.exists()]
    return {"source": os.path.abspath(source.path), "size": sum(s.st_size for s in stats),
            "mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}


def changed_option(record: dict[str, Any], expected: dict[str, Any]) -> str | None:
    """What differs between a done-record and the expected run and options (None: nothing), in words."""
    if record.get("run_sha256") != expected.get("run_sha256"):
        return "the run (its checkpoint's checksum differs)"
    old, new = record.get("options", {}), expected.get("options", {})
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"option {key} ({old.get(key)!r} then, {new.get(key)!r} now)"
    return None


def is_done(folder: ScanFolder, source, expected: dict[str, Any], record: dict | None = None) -> bool:
    """True when ``source`` has a matching done-record and its files are there: the scene is finished."""
    record = folder.read_done(source.name) if record is None else record
    return (record is not None and changed_option(record, expected) is None
            and record.get("stamp") == source_stamp(source)
            and folder.probability_path(source.name).is_file()
            and folder.scene_candidates_path(source.name).is_file())


class SceneWorker:
    """A model ready to run units: built once per process (the local engine) or per Ray actor.

    Args:
        settings: what every scene shares.
        model: a classifier to use instead of loading ``settings.run`` (with its ``meta``).
        meta: its ``CheckpointMeta``.
        from_run: ``model`` was loaded from ``settings.run`` (the ONNX graph is then cached beside it).
        threads: torch intra-op threads (None: leave torch's default).
        workdir: working directory of the driver, so relative paths mean the same (ignored where missing).
        progress: a bar over each scene's windows.
    """

    def __init__(self, settings: UnitSettings, model: torch.nn.Module | None = None, meta=None,
                 from_run: bool = False, threads: int | None = None, workdir: str | None = None,
                 progress: bool = False):
        if workdir and os.path.isdir(workdir):
            os.chdir(workdir)
        if threads:
            torch.set_num_threads(int(threads))
        if isinstance(settings.novelty, str) and settings.novelty == NOVELTY_FROM_RUN:  # a Ray actor reads its own
            settings = replace(settings, novelty=read_summary(settings.run))
        self.settings = settings
        options = replace(settings.options, progress=progress)  # the engine decides where bars show
        device = resolve_device(options.device)
        loaded = model is None or meta is None
        if loaded:
            model, meta = load_classifier(settings.run, device)
        loaded = loaded or from_run
        model = model.to(device).eval()
        # built once per worker; the ONNX graph is cached beside a checkpoint loaded here
        runtime = make_runtime(options.runtime, model, meta, device, checkpoint=settings.run if loaded else None)
        self.scanner = SceneScanner(model, meta, options, device=device, runtime=runtime, mask=settings.mask,
                                    novelty=settings.novelty)

    def describe(self) -> tuple[str, str]:
        """(runtime name, its description) for ``scan.json``."""
        return self.scanner.runtime.name, self.scanner.runtime.describe()

    def run(self, source) -> SceneOutcome:
        """Run the unit of ``source``; a scene that cannot be read fails with its one-line reason."""
        folder = ScanFolder(self.settings.out_dir)
        # a retry after a worker died mid-scene: its half-written temporaries go (other scenes' stay untouched)
        manifest.remove_temporaries_of([folder.probability_path(source.name), folder.novelty_path(source.name),
                                        folder.scene_candidates_path(source.name), folder.done_path(source.name)])
        record = folder.read_done(source.name)
        if is_done(folder, source, self.settings.expected, record):
            return SceneOutcome(source.name, "done", record)  # a retry of a scene whose first try finished
        try:
            return SceneOutcome(source.name, "done", self._run(source, folder))
        except (UserError, RasterioError, OSError) as exc:
            return SceneOutcome(source.name, "failed", error=str(exc).splitlines()[0])

    def _run(self, source, folder: ScanFolder) -> dict[str, Any]:
        s, scanner = self.settings, self.scanner
        started = time.perf_counter()
        stamp = source_stamp(source)  # before reading: a scene changed during its scan is scanned again
        scan = scanner.scan(source, folder.probability_path(source.name),
                            None if s.novelty is None else folder.novelty_path(source.name))
        scanned = time.perf_counter()
        field = ProbabilityField.read(scan.probability, scan.scene, min_separation=s.min_separation)
        read = time.perf_counter()  # the read counts with the candidates, as before the sweep moved here
        with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
            # the sweep's lowest threshold first (peaks, basins, sort: the candidates reuse them), its other
            # thresholds on the pool beside the candidates and CAM peaks (the same arrays either way)
            finish = field.start_sweep(pool, min_area_m2=s.options.min_area_m2) if s.sweep else None
            times = [time.perf_counter()]
            points, regions = field.candidates(s.threshold, s.options.min_area_m2)
            points = merge_duplicates(points, s.merge_distance / 2, s.merge_distance / 2)
            times.append(time.perf_counter())
            if s.options.cam_peaks and len(points):  # CAMs from the windows' runtime: a forward pass
                points = place_at_cam_peaks(scanner.model, scanner.meta, points, {source.name: source},
                                            scanner.device, regions, runtime=scanner.runtime)
            times.append(time.perf_counter())
            if scan.novelty is not None:  # how unlike the training data the candidate's surroundings are
                points["novelty"] = sample_novelty(scan.novelty, points)
            sweep = finish().record() if finish is not None else None
            waited = time.perf_counter()
        folder.write_scene_candidates(source.name, points, regions)
        times.append(time.perf_counter())
        steps = {"windows": scanned - started, "candidates": read - scanned + times[1] - times[0],
                 "cam_peaks": times[2] - times[1], "files": times[3] - waited,
                 "evaluation": times[0] - read + waited - times[2]}
        record = {**s.expected, "scene": source.name, "stamp": stamp, "windows": scan.windows,
                  "candidates": len(points), "seconds": round(time.perf_counter() - started, 3),
                  "steps": {k: round(v, 4) for k, v in steps.items()}, "scan": asdict(scan),
                  **({"sweep": sweep} if sweep is not None else {})}
        folder.write_done(source.name, record)
        return record
