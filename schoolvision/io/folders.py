"""The pipeline's folders, one class per on-disk format: the only code that parses their files.

Each stage hands the next one a folder: ``schoolvision chips`` a chips folder, ``train`` a run
folder, ``scan`` a scan folder. As torchgeo's datasets do, each class here knows its files, reads
and writes them (writes are atomic) and turns a missing or unreadable file into one
:class:`~schoolvision.errors.UserError` that names the file and the command that makes it. A change
of format is then a change of this one module.

The classes live in one module per stage (:mod:`~schoolvision.io.runs`, :mod:`~schoolvision.io.scans`,
:mod:`~schoolvision.io.reviews`; the output guard in :mod:`~schoolvision.io.outputs`); this module
holds the chips, demo, explanation and clustering folders and names them all, so that
``from schoolvision.io.folders import RunFolder`` keeps working.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from schoolvision.errors import UserError
from schoolvision.io.atomic import write_json, write_text
from schoolvision.io.outputs import (
    NOT_EMPTY,
    Folder,
    Inputs,
    RecordFolder,
    check_inputs,
    folder_file,
    prepare_output,
    read_csv_table,
    read_json_object,
    require_columns,
    sha256,
)
from schoolvision.io.reviews import ReviewFolder
from schoolvision.io.runs import PREDICTION_COLUMNS, RunFolder, read_predictions
from schoolvision.io.scans import (
    NOVELTY_SUFFIX,
    PROBABILITY_SUFFIX,
    ScanFolder,
    open_probability,
    probability_bounds,
    read_probability,
)

__all__ = [
    "NOT_EMPTY", "NOVELTY_SUFFIX", "PREDICTION_COLUMNS", "PROBABILITY_SUFFIX", "ChipsFolder", "ClusterFolder",
    "DemoFolder", "ExplainFolder", "Folder", "Inputs", "ReviewFolder", "RunFolder", "ScanFolder", "check_inputs",
    "open_probability", "prepare_output", "probability_bounds", "read_predictions", "read_probability", "sha256",
]

# --- chips --------------------------------------------------------------------------------------

_MAKE_CHIPS = "cut chips first: schoolvision chips --imagery ... --schools ... --out DIR"


class ChipsFolder(Folder):
    """A chips folder made by ``schoolvision chips``: ``dataset.json``, ``chips.csv``, chip GeoTIFFs, schools."""

    META = "dataset.json"
    INDEX = "chips.csv"
    SCHOOLS = "schools.geojson"
    INDEX_COLUMNS = ("path", "label")

    meta_path = folder_file(META, "``dataset.json``.")
    index_path = folder_file(INDEX, "``chips.csv``.")

    def has_index(self) -> bool:
        """True when the folder has a ``chips.csv`` (else it may be a plain class-folder tree)."""
        return self.index_path.is_file()

    def read_meta(self, required: bool = False) -> dict[str, Any]:
        """``dataset.json`` (chip size, gsd, counts, scenes, schools, fingerprint); ``{}`` if absent, not required."""
        return read_json_object(self.meta_path, required, _MAKE_CHIPS)

    def write_meta(self, meta: dict[str, Any]) -> Path:
        """Write ``dataset.json`` atomically."""
        return write_json(self.meta_path, meta)

    def read_index(self, split: str | None = None) -> pd.DataFrame:
        """``chips.csv`` as written (ids and school names as strings, empty names kept ``""``), optionally one split.

        Raises:
            UserError: the index is missing or unreadable, lacks a column, or has no chip in ``split``.
        """
        frame = read_csv_table(self.index_path, _MAKE_CHIPS, keep_default_na=False,
                            dtype={"chip_id": str, "school_name": str})
        require_columns(frame, (*self.INDEX_COLUMNS, *(("split",) if split else ())), self.index_path, _MAKE_CHIPS)
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


# --- the demo -----------------------------------------------------------------------------------

_MAKE_DEMO = "write a demo first: schoolvision demo --out DIR"


class DemoFolder(RecordFolder):
    """A demo folder made by ``schoolvision demo``: ``demo.json`` (written last), scenes, vectors, the registry.

    ``demo.json`` holds the parameters (compared on a rerun), the towns and the names of the files.
    """

    RECORD = META = "demo.json"
    FIX = _MAKE_DEMO
    REQUIRED = False
    OWN_FILES = ("scenes/town_*.tif", "schools.geojson", "landmarks.geojson", "buildings.geojson", "registry.csv",
                 "registry_truth.csv", META)
    """What the demo writes there: all that ``--overwrite`` may remove."""
    meta_path = RecordFolder.record_path
    read_meta = RecordFolder.read_record
    write_meta = RecordFolder.write_record

    def is_demo(self) -> bool:
        """True when the folder holds a finished demo (``demo.json`` is written last)."""
        return self.meta_path.is_file()


# --- explanations and clustering: one headline record each ---------------------------------------


class ExplainFolder(RecordFolder):
    """An explanations folder made by ``schoolvision explain``: ``faithfulness.json``, ``explanations.csv``, maps.

    ``faithfulness.json`` holds the per-method faithfulness table and the outcome counts.
    """

    RECORD = "faithfulness.json"
    FIX = "explain a run first: schoolvision explain --run RUN --chips DIR --out DIR"
    faithfulness_path = RecordFolder.record_path
    read_faithfulness = RecordFolder.read_record
    write_faithfulness = RecordFolder.write_record


class ClusterFolder(RecordFolder):
    """A clustering folder made by ``schoolvision cluster``: ``summary.json``, ``clusters.csv``, maps.

    ``summary.json`` holds k, the cluster sizes, quality scores, stability and the figures saved.
    """

    RECORD = "summary.json"
    FIX = "cluster a run's embeddings first: schoolvision cluster --run RUN --chips DIR --out DIR"
    summary_path = RecordFolder.record_path
    read_summary = RecordFolder.read_record
    write_summary = RecordFolder.write_record
