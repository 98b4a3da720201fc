"""A scan folder and its probability rasters: candidates, summaries, per-scene checkpoints, the registry audit."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError

from schoolvision.errors import UserError
from schoolvision.io.atomic import write_json, write_text
from schoolvision.io.outputs import (
    Folder,
    folder_file,
    folder_pattern,
    read_csv_table,
    read_json_object,
    require_columns,
)
from schoolvision.io.vectors import read_layer, write_vectors

_SCAN = "scan first: schoolvision scan --run RUN --imagery ... --out DIR"
PROBABILITY_SUFFIX = "_probability.tif"
NOVELTY_SUFFIX = "_novelty.tif"


class ScanFolder(Folder):
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

    candidates_path = folder_file(CANDIDATES, "``candidates.gpkg``.")
    evaluation_path = folder_file(EVALUATION, "``evaluation.json``.")

    probability_path = folder_pattern("{}" + PROBABILITY_SUFFIX, "Where the probability raster of a scene goes.")
    novelty_path = folder_pattern("{}" + NOVELTY_SUFFIX, "Where the novelty raster (trust map) of a scene goes, on "
                                  "the probability raster's grid.")

    def probability_paths(self) -> dict[str, Path]:
        """Scene name -> probability raster of every scanned scene, sorted by name."""
        return {p.name[: -len(PROBABILITY_SUFFIX)]: p for p in sorted(self.root.glob(f"*{PROBABILITY_SUFFIX}"))}

    def read_summary(self) -> dict[str, Any]:
        """``scan.json``: scenes, threshold, counts and the files the scan wrote."""
        return read_json_object(self.root / self.SUMMARY, True, _SCAN)

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """Write ``scan.json`` atomically."""
        return write_json(self.root / self.SUMMARY, summary)

    def read_evaluation(self) -> dict[str, Any]:
        """``evaluation.json``: recall, precision, PR curve against known schools (scan with ``--schools``)."""
        fix = "scan with --schools FILE to evaluate against known schools"
        return read_json_object(self.evaluation_path, True, fix)

    def write_evaluation(self, evaluation: dict[str, Any]) -> Path:
        """Write ``evaluation.json`` atomically."""
        return write_json(self.evaluation_path, evaluation)

    registry_audit_path = folder_file(REGISTRY_AUDIT, "``registry_audit.csv`` (scan with ``--registry``).")

    def read_registry_audit(self) -> pd.DataFrame:
        """``registry_audit.csv``: one row per registry school and per candidate (``scan.registry``)."""
        fix = "scan with --registry FILE to audit a school registry"
        text = {"name": str, "registry_id": str, "scene": str, "kind": str, "status": str}
        frame = read_csv_table(self.registry_audit_path, fix, dtype=text)
        require_columns(frame, ("kind", "status", "candidate_rank", "lon", "lat"), self.registry_audit_path, fix)
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


STRIDE_TAG = "window_stride_px"
"""GeoTIFF tag of a probability raster: the scan's window stride in the raster's pixels."""


def read_probability(path: str | Path, max_side: int = 2048, per_stride: float | None = None):
    """(P(school) float32 with NaN for nodata, transform, crs) of a probability raster, decimated to ``max_side``.

    The read goes through the raster's overviews, so a country-size raster never has to fit in memory.
    ``per_stride``: read it no finer than ``per_stride`` pixels per window stride (the stride is the
    raster's :data:`STRIDE_TAG`; a raster without one is read as it is). Windows a stride apart blended
    with weights a quarter of a chip wide leave no detail finer than that, so the peak search need not
    visit every pixel of imagery at 5 cm. That decimation takes every f-th pixel (nearest), not block
    means: a mean in float32 turns a flat plateau (one window alone over a border strip) into float
    noise with many one-ulp peaks, where the raster's own values keep it flat.

    Raises:
        UserError: the raster is missing or unreadable.
    """
    with open_probability(path) as src:
        f = max(1, math.ceil(max(src.width, src.height) / max_side))
        shape_ = (max(1, src.height // f), max(1, src.width // f))
        resampling = Resampling.average if f > 1 else Resampling.nearest
        prob = src.read(1, out_shape=shape_, resampling=resampling, masked=True).filled(np.nan).astype(np.float32)
        transform = src.transform @ src.transform.scale(src.width / shape_[1], src.height / shape_[0])
        stride = src.tags().get(STRIDE_TAG)
        k = int(float(stride) / f // per_stride) if per_stride and stride else 1
        if k > 1 and min(prob.shape) >= k:  # the pixel nearest each k x k block's centre
            rows, cols = prob.shape[0] // k, prob.shape[1] // k
            prob = np.ascontiguousarray(prob[k // 2 : k // 2 + k * rows : k, k // 2 : k // 2 + k * cols : k])
            transform = transform @ transform.scale(k)
        return prob, transform, src.crs


def probability_bounds(path: str | Path) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of a probability raster in its own CRS."""
    with open_probability(path) as src:
        return tuple(src.bounds)


# --- review queues ------------------------------------------------------------------------------
