"""The pipeline's folders, one class per on-disk format: the only code that parses their files.

Each stage hands the next one a folder: ``schoolvision chips`` a chips folder, ``train`` a run
folder, ``scan`` a scan folder. As torchgeo's datasets do, each class here knows its files, reads
and writes them (writes are atomic) and turns a missing or unreadable file into one
:class:`~schoolvision.errors.UserError` that names the file and the command that makes it. A change
of format is then a change of this one module.

:func:`prepare_output` is the one guard every command runs before it writes into ``--out``: never
into or around an input, and ``--overwrite`` removes only what schoolvision wrote there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError

from schoolvision.errors import UserError
from schoolvision.io import manifest
from schoolvision.io.atomic import atomic_path, write_bytes, write_json, write_text
from schoolvision.io.vectors import read_layer, write_vectors

# --- the output guard ---------------------------------------------------------------------------

NOT_EMPTY = "output folder is not empty; pass --overwrite or choose another --out"

Inputs = Mapping[str, Any]
"""A command's inputs by option name, e.g. ``{"--imagery": paths, "--schools": path}``."""


def check_inputs(out: str | Path, inputs: Inputs | None, option: str = "--out") -> None:
    """Refuse an output path that is, holds or lies inside one of the inputs, so no input is ever overwritten.

    Args:
        out: the command's output folder (or file).
        inputs: the input paths by option name (None values are skipped).
        option: the output's option name, for the message.

    Raises:
        UserError: naming both paths.
    """
    target = Path(out).resolve()
    for name, value in (inputs or {}).items():
        paths = [value] if isinstance(value, (str, Path)) else list(value or ())
        for raw in paths:
            path = Path(raw).resolve()
            if path == target:
                how = "is"
            elif path in target.parents:
                how = "lies inside"
            elif target in path.parents:
                how = "contains"
            else:
                continue
            raise UserError(f"{option} {how} the input {name} {raw}; choose an {option} outside the inputs", out)


def prepare_output(out_dir: str | Path, overwrite: bool, *, message: str = NOT_EMPTY,
                   own_files: Sequence[str] = (), is_same: Callable[[Path], bool] | None = None,
                   create: bool = True, inputs: Inputs | None = None, clear: bool = True) -> bool:
    """Check ``out_dir`` before a command writes into it: the one output guard of every command.

    A folder is empty when it holds nothing but its manifest and temporaries of a killed run (those
    are removed when the run goes ahead). ``overwrite`` removes what an earlier run of schoolvision
    wrote there (the files its manifest lists, see :mod:`schoolvision.io.manifest`) and nothing else:
    other files stay, and the new output is written beside them.

    Args:
        out_dir: the command's ``--out``.
        overwrite: the command's ``--overwrite``: write into a non-empty folder.
        message: the error for a non-empty folder without ``overwrite`` (each command names its fix).
        own_files: names or glob patterns of the files the command writes; with ``overwrite``, a file
            under one of them that schoolvision did not write is refused now rather than half-way.
        is_same: called on a non-empty folder; True means it already holds this very output
            (same inputs), which is neither refused nor cleared.
        create: make the folder (and its parents) when it passes; else it is made by the first write.
        inputs: the command's input paths by option name; ``out_dir`` must not be, hold or lie in one.
        clear: with ``overwrite``, delete the earlier run's files now; False when the caller
            replaces them itself at the end (:func:`~schoolvision.io.manifest.move_into`).

    Returns:
        True when ``is_same`` recognised the folder's content, else False.

    Raises:
        UserError: ``out_dir`` is a file or lies under one, is or holds or lies inside an input, is a
            non-empty folder without ``overwrite``, or holds a file under ``own_files`` that
            schoolvision did not write.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError("output path exists and is not a folder; choose another --out", out)
    above = next((p for p in out.absolute().parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise UserError(f"output path lies under the file {above}; choose another --out", out)
    check_inputs(out, inputs)
    if out.is_dir() and manifest.holds_files(out):
        if is_same is not None and is_same(out):
            return True
        if not overwrite:
            raise UserError(message, out)
        foreign = manifest.foreign_files(out, own_files)
        if foreign:
            raise UserError(f"holds {os.path.relpath(foreign[0], out)}, which schoolvision did not write (its manifest "
                            "does not list it; a folder from an older version?); move it away or choose another "
                            "--out", out)
        manifest.remove_temporaries(out)
        if clear:
            manifest.remove_listed(out)
    elif out.is_dir():
        manifest.remove_temporaries(out)
    if create:
        out.mkdir(parents=True, exist_ok=True)
    if out.is_dir():
        manifest.start(out)
    else:
        manifest.register(out)
    return False


# --- helpers ------------------------------------------------------------------------------------


def _read_json(path: Path, required: bool, fix: str) -> dict[str, Any]:
    """A JSON object from ``path``; ``{}`` when it is missing and not ``required``."""
    if not path.is_file():
        if required:
            raise UserError(f"{path.name} not found ({fix})", path)
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path.name} is not readable JSON ({type(exc).__name__}); {fix}", path) from None
    if not isinstance(data, dict):
        raise UserError(f"{path.name} does not hold a JSON object; {fix}", path)
    return data


def _read_table(path: Path, fix: str, **kwargs) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path.name} not found ({fix})", path)
    try:
        return pd.read_csv(path, **kwargs)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # pandas' parser errors are ValueErrors
        raise UserError(f"{path.name} is not a readable CSV table ({type(exc).__name__}); {fix}", path) from None


def _require_columns(frame: pd.DataFrame, columns: Iterable[str], path: Path, fix: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserError(f"{path.name} lacks column(s) {', '.join(missing)}; {fix}", path)


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, ``""`` when it does not exist (run records, feature cache keys)."""
    path = Path(path)
    if not path.is_file():
        return ""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- chips --------------------------------------------------------------------------------------

_MAKE_CHIPS = "cut chips first: schoolvision chips --imagery ... --schools ... --out DIR"


class ChipsFolder:
    """A chips folder made by ``schoolvision chips``: ``dataset.json``, ``chips.csv``, chip GeoTIFFs, schools."""

    META = "dataset.json"
    INDEX = "chips.csv"
    SCHOOLS = "schools.geojson"
    INDEX_COLUMNS = ("path", "label")

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def meta_path(self) -> Path:
        """``dataset.json``."""
        return self.root / self.META

    @property
    def index_path(self) -> Path:
        """``chips.csv``."""
        return self.root / self.INDEX

    def has_index(self) -> bool:
        """True when the folder has a ``chips.csv`` (else it may be a plain class-folder tree)."""
        return self.index_path.is_file()

    def read_meta(self, required: bool = False) -> dict[str, Any]:
        """``dataset.json`` (chip size, gsd, counts, scenes, schools, fingerprint); ``{}`` if absent, not required."""
        return _read_json(self.meta_path, required, _MAKE_CHIPS)

    def write_meta(self, meta: dict[str, Any]) -> Path:
        """Write ``dataset.json`` atomically."""
        return write_json(self.meta_path, meta)

    def read_index(self, split: str | None = None) -> pd.DataFrame:
        """``chips.csv`` as written (ids and school names as strings, empty names kept ``""``), optionally one split.

        Raises:
            UserError: the index is missing or unreadable, lacks a column, or has no chip in ``split``.
        """
        frame = _read_table(self.index_path, _MAKE_CHIPS, keep_default_na=False,
                            dtype={"chip_id": str, "school_name": str})
        _require_columns(frame, (*self.INDEX_COLUMNS, *(("split",) if split else ())), self.index_path, _MAKE_CHIPS)
        if split is not None:
            if split not in set(frame["split"]):
                splits = sorted(set(frame["split"]))
                raise UserError(f"split {split!r} has no chips (splits: {splits})", self.index_path)
            frame = frame[frame["split"] == split]
        return frame

    def write_index(self, text: str) -> Path:
        """Write ``chips.csv`` (the CSV text ``make_chips`` formats) atomically."""
        return write_text(self.index_path, text)

    def index_sha256(self) -> str:
        """SHA-256 of ``chips.csv`` (``""`` without one): which chips a run was trained on."""
        return sha256(self.index_path)

    def scene_paths(self) -> dict[str, Path]:
        """Scene name -> image path from ``dataset.json`` (relative paths resolved against the folder)."""
        out = {}
        for name, entry in self.read_meta().get("scenes", {}).items():
            p = Path(entry["path"] if isinstance(entry, dict) else entry)
            out[name] = p if p.is_absolute() else self.root / p
        return out

    def schools_path(self) -> Path:
        """The school footprints file named in ``dataset.json`` (``schools.geojson`` by default)."""
        return self.root / (self.read_meta().get("schools") or self.SCHOOLS)

    def read_schools(self):
        """School footprints of the chips (a GeoDataFrame), or None when the folder has none."""
        import geopandas as gpd

        path = self.schools_path()
        return gpd.read_file(path) if path.is_file() else None


# --- training runs ------------------------------------------------------------------------------

_TRAIN = "train a model first: schoolvision train --chips DIR --out RUN"


class RunFolder:
    """A training run made by ``schoolvision train``: checkpoints, config, history, metrics, predictions."""

    BEST = "best.pt"
    LAST = "last.pt"
    CONFIG = "config.json"
    HISTORY = "history.json"
    METRICS = "metrics.json"
    PREDICTIONS = "predictions.csv"
    TENSORBOARD = "tensorboard"
    ROUND = "round.json"
    NOVELTY = "novelty.npz"
    FILES = (BEST, LAST, CONFIG, METRICS, PREDICTIONS, HISTORY, TENSORBOARD, ROUND, NOVELTY)
    """Everything ``fit`` writes: what ``--overwrite`` clears."""
    FOLD_FILES = (METRICS, PREDICTIONS, "fold_*", "chips_fold_*")
    """Everything ``train --folds`` writes: each fold's run and chips index, the pooled metrics and predictions."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def best(self) -> Path:
        """``best.pt``: the model selected on validation, calibrated."""
        return self.root / self.BEST

    @property
    def last(self) -> Path:
        """``last.pt``: everything needed to resume."""
        return self.root / self.LAST

    @property
    def tensorboard(self) -> Path:
        """The TensorBoard event folder."""
        return self.root / self.TENSORBOARD

    @property
    def predictions_path(self) -> Path:
        """``predictions.csv``."""
        return self.root / self.PREDICTIONS

    def fold(self, n: int) -> Path:
        """``fold_<n>``: the run folder of fold ``n`` (from 1) of a cross-validation (``train --folds``)."""
        return self.root / f"fold_{n}"

    def fold_chips(self, n: int) -> Path:
        """``chips_fold_<n>``: the chips index fold ``n`` was trained on (the chips themselves stay in place)."""
        return self.root / f"chips_fold_{n}"

    def is_cross_validation(self) -> bool:
        """True for the folder of ``train --folds`` (its ``metrics.json`` has one row per fold)."""
        return "folds" in self.read_metrics(required=False)

    @staticmethod
    def checkpoint(run: str | Path) -> Path:
        """The checkpoint of ``run``: ``run/best.pt`` for a run folder, ``run`` itself for a file."""
        run = Path(run)
        return run / RunFolder.BEST if run.is_dir() else run

    @property
    def novelty_path(self) -> Path:
        """``novelty.npz``: the summary of the training chips' embeddings and the home reference (train.novelty)."""
        return self.root / self.NOVELTY

    def read_novelty(self) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """``(arrays, record)`` of ``novelty.npz``; None when the run has none (trained before it existed).

        Raises:
            UserError: the file is there but unreadable.
        """
        path = self.novelty_path
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            record = json.loads(str(arrays.pop("record")))
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"{path.name} is not a readable novelty summary ({type(exc).__name__}); rebuild it: "
                            "schoolvision novelty --run RUN --chips DIR --overwrite", path) from None
        return arrays, record

    def write_novelty(self, arrays: Mapping[str, np.ndarray], record: Mapping[str, Any]) -> Path:
        """Write ``novelty.npz`` atomically: the named arrays and ``record`` (JSON text under ``record``)."""
        with atomic_path(self.novelty_path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, record=np.array(json.dumps(dict(record))), **arrays)
        return self.novelty_path

    def metrics_path(self, split: str = "test") -> Path:
        """``metrics.json`` for the test split (with the validation report), ``metrics_<split>.json`` otherwise."""
        return self.root / (self.METRICS if split == "test" else f"metrics_{split}.json")

    def read_config(self, required: bool = False) -> dict[str, Any]:
        """``config.json``: every training parameter plus what was resolved at run time."""
        return _read_json(self.root / self.CONFIG, required, _TRAIN)

    def write_config(self, record: dict[str, Any]) -> Path:
        """Write ``config.json`` atomically."""
        return write_json(self.root / self.CONFIG, record)

    def read_history(self) -> list[dict[str, Any]]:
        """``history.json``: one dict of train/val loss, F1, AUPRC, learning rate per epoch."""
        path = self.root / self.HISTORY
        if not path.is_file():
            raise UserError(f"{self.HISTORY} not found ({_TRAIN})", path)
        try:
            history = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise UserError(f"{self.HISTORY} is not readable JSON ({type(exc).__name__}); {_TRAIN}", path) from None
        if not isinstance(history, list):
            raise UserError(f"{self.HISTORY} does not hold a list of epochs; {_TRAIN}", path)
        return history

    def write_history(self, history: list[dict[str, Any]]) -> Path:
        """Write ``history.json`` atomically (after every epoch)."""
        return write_json(self.root / self.HISTORY, history)

    def read_metrics(self, split: str = "test", required: bool = True) -> dict[str, Any]:
        """``metrics.json`` (or ``metrics_<split>.json``); ``{}`` when absent and not ``required``."""
        return _read_json(self.metrics_path(split), required, _TRAIN if split == "test" else
                          f"evaluate the run first: schoolvision evaluate --run RUN --split {split}")

    def write_metrics(self, metrics: dict[str, Any], split: str = "test") -> Path:
        """Write ``metrics.json`` (or ``metrics_<split>.json``) atomically."""
        return write_json(self.metrics_path(split), metrics)

    def read_round(self) -> dict[str, Any]:
        """``round.json`` of a run made by ``review retrain`` (queue, decisions, counts, metrics); ``{}`` otherwise."""
        return _read_json(self.root / self.ROUND, False, "")

    def write_round(self, record: dict[str, Any]) -> Path:
        """Write ``round.json`` atomically."""
        return write_json(self.root / self.ROUND, record)

    def read_predictions(self) -> pd.DataFrame:
        """``predictions.csv`` with P(school) exactly as written (see :func:`read_predictions`)."""
        return read_predictions(self.predictions_path)

    def write_predictions(self, frames: Sequence[pd.DataFrame]) -> Path:
        """Write the per-split prediction frames as one ``predictions.csv``, atomically.

        pandas writes floats with ``repr`` precision and parses them back exactly, so a re-evaluation
        can compare probabilities bit for bit.
        """
        with atomic_path(self.predictions_path) as tmp:
            pd.concat(list(frames), ignore_index=True).to_csv(tmp, index=False)
        return self.predictions_path


PREDICTION_COLUMNS = ("chip_id", "label", "prob", "pred")


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A predictions table: a run's ``predictions.csv`` or an ``explanations.csv`` (same columns).

    Probabilities are parsed exactly as written (pandas' default parser round-trips repr floats);
    chip ids stay strings.

    Raises:
        UserError: the file is missing, unreadable or lacks chip_id, label, prob or pred.
    """
    path = Path(path)
    frame = _read_table(path, _TRAIN, dtype={"chip_id": str})
    _require_columns(frame, PREDICTION_COLUMNS, path, _TRAIN)
    return frame


# --- scans --------------------------------------------------------------------------------------

_SCAN = "scan first: schoolvision scan --run RUN --imagery ... --out DIR"
PROBABILITY_SUFFIX = "_probability.tif"
NOVELTY_SUFFIX = "_novelty.tif"


class ScanFolder:
    """A scan made by ``schoolvision scan``.

    Files: ``<scene>_probability.tif``, ``<scene>_novelty.tif`` (with a run's novelty summary),
    ``candidates.gpkg``, ``scan.json``, ``evaluation.json``, and per
    scene under ``scenes/``: ``<scene>.candidates.gpkg`` (GeoPackage, layers ``candidates`` and
    ``regions`` in the scene's CRS) and ``<scene>.done.json`` (the done-record, written last: a scene
    is finished when its record is there and matches, see :mod:`schoolvision.scan.unit`). GeoPackage,
    as for the merged candidates: one file holds both layers, QGIS opens it, floats round-trip exactly.
    """

    SUMMARY = "scan.json"
    EVALUATION = "evaluation.json"
    CANDIDATES = "candidates.gpkg"
    CANDIDATES_GEOJSON = "candidates.geojson"
    REGISTRY_AUDIT = "registry_audit.csv"
    SCENES = "scenes"
    SCENE_CANDIDATES = ".candidates.gpkg"
    DONE = ".done.json"

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def candidates_path(self) -> Path:
        """``candidates.gpkg``."""
        return self.root / self.CANDIDATES

    @property
    def evaluation_path(self) -> Path:
        """``evaluation.json``."""
        return self.root / self.EVALUATION

    def probability_path(self, scene: str) -> Path:
        """Where the probability raster of ``scene`` goes."""
        return self.root / f"{scene}{PROBABILITY_SUFFIX}"

    def novelty_path(self, scene: str) -> Path:
        """Where the novelty raster (trust map) of ``scene`` goes, on the probability raster's grid."""
        return self.root / f"{scene}{NOVELTY_SUFFIX}"

    def probability_paths(self) -> dict[str, Path]:
        """Scene name -> probability raster of every scanned scene, sorted by name."""
        return {p.name[: -len(PROBABILITY_SUFFIX)]: p for p in sorted(self.root.glob(f"*{PROBABILITY_SUFFIX}"))}

    def read_summary(self) -> dict[str, Any]:
        """``scan.json``: scenes, threshold, counts and the files the scan wrote."""
        return _read_json(self.root / self.SUMMARY, True, _SCAN)

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """Write ``scan.json`` atomically."""
        return write_json(self.root / self.SUMMARY, summary)

    def read_evaluation(self) -> dict[str, Any]:
        """``evaluation.json``: recall, precision, PR curve against known schools (scan with ``--schools``)."""
        return _read_json(self.evaluation_path, True, "scan with --schools FILE to evaluate against known schools")

    def write_evaluation(self, evaluation: dict[str, Any]) -> Path:
        """Write ``evaluation.json`` atomically."""
        return write_json(self.evaluation_path, evaluation)

    @property
    def registry_audit_path(self) -> Path:
        """``registry_audit.csv`` (scan with ``--registry``)."""
        return self.root / self.REGISTRY_AUDIT

    def read_registry_audit(self) -> pd.DataFrame:
        """``registry_audit.csv``: one row per registry school and per candidate (``scan.registry``)."""
        fix = "scan with --registry FILE to audit a school registry"
        text = {"name": str, "registry_id": str, "scene": str, "kind": str, "status": str}
        frame = _read_table(self.registry_audit_path, fix, dtype=text)
        _require_columns(frame, ("kind", "status", "candidate_rank", "lon", "lat"), self.registry_audit_path, fix)
        return frame.fillna({c: "" for c in text if c in frame.columns})

    def write_registry_audit(self, frame: pd.DataFrame) -> Path:
        """Write ``registry_audit.csv`` atomically."""
        return write_text(self.registry_audit_path, frame.to_csv(index=False))

    def read_layer(self, layer: str):
        """A layer of ``candidates.gpkg``; empty (EPSG:4326) when the scan wrote none (e.g. no missed school)."""
        gpkg = self.candidates_path
        if not gpkg.is_file():
            raise UserError(f"no {self.CANDIDATES} here; run schoolvision scan first", gpkg)
        return read_layer(gpkg, layer, columns=("scene", "name"))

    def scene_candidates_path(self, scene: str) -> Path:
        """``scenes/<scene>.candidates.gpkg``: the scene's candidates and regions before merging."""
        return self.root / self.SCENES / f"{scene}{self.SCENE_CANDIDATES}"

    def done_path(self, scene: str) -> Path:
        """``scenes/<scene>.done.json``: the done-record of ``scene``."""
        return self.root / self.SCENES / f"{scene}{self.DONE}"

    def read_done(self, scene: str) -> dict[str, Any] | None:
        """The done-record of ``scene``; None when there is none or it is unreadable (the scene is then not done)."""
        path = self.done_path(scene)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_done(self, scene: str, record: dict[str, Any]) -> Path:
        """Write the done-record of ``scene`` atomically (after its other files)."""
        return write_json(self.done_path(scene), record)

    def done_scenes(self) -> list[str]:
        """Names of the scenes that have a done-record file, sorted."""
        folder = self.root / self.SCENES
        return sorted(p.name[: -len(self.DONE)] for p in folder.glob(f"*{self.DONE}")) if folder.is_dir() else []

    def write_scene_candidates(self, scene: str, points, regions) -> Path:
        """Write ``scenes/<scene>.candidates.gpkg`` atomically: layers ``candidates`` and ``regions``."""
        path = self.scene_candidates_path(scene)
        write_vectors(points, gpkg=path, layer="candidates", extra_layers={"regions": regions})
        return path

    def read_scene_candidates(self, scene: str):
        """(candidates, regions) of one scene as its unit wrote them; regions empty when it had none.

        Raises:
            UserError: the file is missing or unreadable.
        """
        path = self.scene_candidates_path(scene)
        if not path.is_file():
            raise UserError(f"{path.name} not found; rerun schoolvision scan with --resume", path)
        try:
            points = read_layer(path, "candidates")
            regions = read_layer(path, "regions", columns=("scene", "label"))
        except (OSError, ValueError, RuntimeError) as exc:
            raise UserError(f"{path.name} is not a readable GeoPackage ({type(exc).__name__}); rerun the scan",
                            path) from None
        return points, (regions if len(regions) else regions.set_crs(points.crs, allow_override=True))


@contextlib.contextmanager
def open_probability(path: str | Path) -> Iterator[rasterio.DatasetReader]:
    """The probability raster open for reading (its grid, or a warped view of it), closed on exit.

    Raises:
        UserError: the raster is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"probability raster not found ({_SCAN})", path)
    try:
        src = rasterio.open(path)
    except RasterioIOError as exc:
        raise UserError(f"not a readable probability raster ({str(exc).splitlines()[0][:120]})", path) from None
    with src:
        yield src


def read_probability(path: str | Path, max_side: int = 2048):
    """(P(school) float32 with NaN for nodata, transform, crs) of a probability raster, decimated to ``max_side``.

    The read goes through the raster's overviews, so a country-size raster never has to fit in memory.

    Raises:
        UserError: the raster is missing or unreadable.
    """
    with open_probability(path) as src:
        f = max(1, math.ceil(max(src.width, src.height) / max_side))
        shape_ = (max(1, src.height // f), max(1, src.width // f))
        resampling = Resampling.average if f > 1 else Resampling.nearest
        prob = src.read(1, out_shape=shape_, resampling=resampling, masked=True)
        transform = src.transform @ src.transform.scale(src.width / shape_[1], src.height / shape_[0])
        return prob.filled(np.nan).astype(np.float32), transform, src.crs


def probability_bounds(path: str | Path) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of a probability raster in its own CRS."""
    with open_probability(path) as src:
        return tuple(src.bounds)


# --- review queues ------------------------------------------------------------------------------

_REVIEW = "build a review queue first: schoolvision review build --scan DIR --out DIR"


class ReviewFolder:
    """A review queue made by ``schoolvision review build``.

    Files: ``queue.json`` (queue id, the scan, the ordering rule, counts), ``items.geojson`` (one
    Point feature per item in review order, EPSG:4326, properties :data:`ITEM_FIELDS`),
    ``images/<id>_chip.jpg``, ``images/<id>_cam.jpg``, ``images/<id>_context.jpg`` (JPEG: a page of a
    few hundred items stays a few MB) and ``review.html``
    (the page, every image inlined).
    """

    QUEUE = "queue.json"
    ITEMS = "items.geojson"
    IMAGES = "images"
    PAGE = "review.html"
    IMAGE_KINDS = ("chip", "cam", "context")
    ITEM_FIELDS = ("id", "position", "source", "registry_status", "registry_id", "probability", "chip_probability",
                   "candidate_rank", "scene", "name", "lon", "lat", "x", "y", "crs", "merged_ids", "merged",
                   "nearest_new_m", "chip", "cam", "context", "stratum", "inclusion_probability", "registry_rows",
                   "window", "novelty")

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def queue_path(self) -> Path:
        """``queue.json``."""
        return self.root / self.QUEUE

    @property
    def items_path(self) -> Path:
        """``items.geojson``."""
        return self.root / self.ITEMS

    @property
    def page_path(self) -> Path:
        """``review.html``."""
        return self.root / self.PAGE

    def image_name(self, item_id: str, kind: str) -> str:
        """Path of an item's image relative to the folder (``images/<id>_<kind>.jpg``)."""
        if kind not in self.IMAGE_KINDS:
            raise ValueError(f"image kind {kind!r} not in {self.IMAGE_KINDS}")
        return f"{self.IMAGES}/{item_id}_{kind}.jpg"

    def write_image(self, item_id: str, kind: str, jpeg: bytes) -> Path:
        """Write one JPEG atomically."""
        return write_bytes(self.root / self.image_name(item_id, kind), jpeg)

    def read_image(self, item_id: str, kind: str) -> bytes:
        """The JPEG bytes of an item's image."""
        path = self.root / self.image_name(item_id, kind)
        if not path.is_file():
            raise UserError(f"review image not found ({_REVIEW})", path)
        return path.read_bytes()

    def read_queue(self) -> dict[str, Any]:
        """``queue.json``: ``queue_id``, ``scan``, ``order``, ``rule``, ``threshold``, ``items``, ``counts``."""
        queue = _read_json(self.queue_path, True, _REVIEW)
        if not isinstance(queue.get("queue_id"), str):
            raise UserError(f"{self.QUEUE} has no queue_id; {_REVIEW}", self.queue_path)
        return queue

    def write_queue(self, queue: dict[str, Any]) -> Path:
        """Write ``queue.json`` atomically."""
        return write_json(self.queue_path, queue)

    def write_items(self, items: Sequence[Mapping[str, Any]]) -> Path:
        """Write ``items.geojson``: one Point (``lon``, ``lat``) per item, its fields as properties."""
        features = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [it["lon"], it["lat"]]},
                     "properties": {k: it.get(k) for k in self.ITEM_FIELDS}} for it in items]
        return write_json(self.items_path, {"type": "FeatureCollection", "name": "items", "features": features})

    def read_items(self) -> pd.DataFrame:
        """The items in review order (one row each, columns :data:`ITEM_FIELDS`)."""
        data = _read_json(self.items_path, True, _REVIEW)
        features = data.get("features")
        if not isinstance(features, list):
            raise UserError(f"{self.ITEMS} is not a GeoJSON FeatureCollection; {_REVIEW}", self.items_path)
        rows = [f.get("properties") or {} for f in features if isinstance(f, dict)]
        frame = pd.DataFrame(rows, columns=list(self.ITEM_FIELDS))
        frame["id"] = frame["id"].astype(str)
        return frame
