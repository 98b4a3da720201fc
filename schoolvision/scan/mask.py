"""The footprint prefilter of a scan (``scan --mask``): windows far from every mask feature are not scanned.

Most of a country holds no building, and a school is buildings, so a window farther than ``distance``
metres from every feature of the mask (building footprints, or areas of interest) is neither read nor
scored. Its pixels stay nodata in the probability raster unless a scored window overlaps them, and
scenes record how many windows the mask skipped (``SceneScan.masked_windows``).

A country mask holds millions of footprints, so nothing here is proportional to the whole mask but
reading it: one STRtree over the mask in its own CRS (built once per scan) gives the features near a
scene's bounds; only those are reprojected into the scan grid's CRS (metres), and a second STRtree
over them tells, for all the scene's window footprints at once, which lie within ``distance`` of a
feature (GEOS ``dwithin``: exact distances, not a buffered raster).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.warp import transform_bounds

from schoolvision.data.windows import window_offsets
from schoolvision.errors import UserError, check_range
from schoolvision.io.imagery import open_scene, open_source
from schoolvision.io.masks import read_mask

DEGREE_M = 111_320.0
"""Metres per degree of latitude (and of longitude at the equator): margins in a geographic CRS."""


@dataclass
class ScanMask:
    """Mask features (in their own CRS) and how near a window must be to one to be scanned.

    Attributes:
        geoms: the mask's geometries, in the mask file's CRS.
        distance: metres between a window's footprint and the nearest feature beyond which the window
            is skipped; None: half a chip of the run (:meth:`SceneScanner.mask_distance`).
        min_area: square metres; smaller polygons are left out (points and lines always count), e.g.
            to keep only buildings as large as a classroom block: a town built up edge to edge has a
            house near every window, but not a large building.
        source: how the file was read (:func:`~schoolvision.io.masks.read_mask`), for ``scan.json``.
    """

    geoms: gpd.GeoSeries
    distance: float | None = None
    source: dict = field(default_factory=dict)
    min_area: float | None = None
    _tree: shapely.STRtree | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def read(cls, path: str | Path, layer: str | None = None, distance: float | None = None,
             min_area: float | None = None) -> ScanMask:
        """Read a mask file (:func:`~schoolvision.io.masks.read_mask`) for windows within ``distance`` metres.

        Raises:
            UserError: ``distance`` or ``min_area`` is negative, or the file cannot be read as a mask.
        """
        check_range("--mask-distance", distance, minimum=0)
        check_range("--mask-min-area", min_area, minimum=0)
        geoms = read_mask(path, layer)
        return cls(geoms, None if distance is None else float(distance), dict(geoms.attrs.get("source", {})),
                   None if min_area is None else float(min_area))

    def __getstate__(self) -> dict:  # the tree is rebuilt where the mask is used (e.g. in a worker process)
        return {**self.__dict__, "_tree": None}

    @property
    def crs(self) -> CRS:
        """The mask file's CRS (EPSG:4326 for tables and files without one)."""
        return CRS.from_user_input(self.geoms.crs)

    @property
    def tree(self) -> shapely.STRtree:
        """STRtree over every mask feature, in the mask's CRS (built on first use)."""
        if self._tree is None:
            self._tree = shapely.STRtree(self.geoms.to_numpy())
        return self._tree

    def near(self, crs, bounds: tuple[float, float, float, float], margin: float = 0.0) -> np.ndarray:
        """The mask features that may lie within ``margin`` of ``bounds`` (in ``crs``), reprojected into ``crs``.

        ``margin`` is in ``crs`` units (metres in the projected scan grid). Candidates come from the
        features' bounding boxes, so a few more than within ``margin`` may be returned, never fewer.
        """
        crs = CRS.from_user_input(crs)
        same = crs == self.crs
        idx = self.tree.query(shapely.box(*_grown_in(crs, self.crs, bounds, margin)))
        geoms = self.geoms.to_numpy()[np.sort(idx)]
        if same or len(geoms) == 0:
            return geoms
        return gpd.GeoSeries(geoms, crs=self.crs).to_crs(crs).to_numpy()

    def select(self, windows: list[tuple[int, int]], ds, chip: int, distance: float) -> list[tuple[int, int]]:
        """The windows (row, col offsets on ``ds``'s grid) whose footprint lies within ``distance`` m of a feature.

        ``ds`` is the scan grid (projected, metres): its CRS, transform, width and height place the windows.
        """
        if not windows:
            return []
        boxes = window_boxes(windows, ds.transform, chip, ds.width, ds.height)
        features = self.near(ds.crs, tuple(shapely.total_bounds(boxes)), distance)
        if self.min_area and len(features):  # areas in the scan grid's metres
            polygonal = np.isin(shapely.get_type_id(features), (3, 6))
            features = features[~polygonal | (shapely.area(features) >= self.min_area)]
        if len(features) == 0:
            return []
        hits = shapely.STRtree(features).query(boxes, predicate="dwithin", distance=distance)[0]
        keep = np.zeros(len(windows), bool)
        keep[hits] = True
        return [w for w, k in zip(windows, keep) if k]

    def count(self, source, meta, stride: int | None = None) -> tuple[int, int]:
        """(windows, windows kept) of a scan of ``source`` with a run (``meta``): what the mask saves, unscanned.

        The scan's own grid and rules (run GSD, ``stride`` default half a chip, ``distance`` default half
        a chip); only the scan grid's header is read, so a region can be sized before it is scanned.
        """
        chip = int(meta.chip_size)
        stride = int(stride or max(1, chip // 2))
        with open_source(source, gsd=meta.gsd) as ds:
            distance = self.distance if self.distance is not None else chip * float(meta.gsd or abs(ds.transform.a)) / 2
            windows = [(r, c) for r in window_offsets(ds.height, chip, stride)
                       for c in window_offsets(ds.width, chip, stride)]
            return len(windows), len(self.select(windows, ds, chip, distance))

    def check_covers(self, sources, margin_m: float) -> None:
        """Refuse a mask that has no feature near any scene: one line giving both extents in EPSG:4326.

        Scenes that cannot be opened are passed over (the scan reports them); nothing is read but headers.

        Raises:
            UserError: no mask feature lies within ``margin_m`` metres of any readable scene's bounds.
        """
        extents = []
        for source in sources:
            try:
                with open_scene(source) as ds:
                    crs, bounds = ds.crs, tuple(ds.bounds)
            except (UserError, RasterioError, OSError):
                continue
            margin = 2 * margin_m / DEGREE_M if crs.is_geographic else 2 * margin_m  # slack: Web Mercator's scale
            if len(self.tree.query(shapely.box(*_grown_in(crs, self.crs, bounds, margin)))):
                return
            extents.append(transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21))
        if not extents:
            return
        imagery = (min(e[0] for e in extents), min(e[1] for e in extents),
                   max(e[2] for e in extents), max(e[3] for e in extents))
        mask = transform_bounds(self.crs, "EPSG:4326", *self.geoms.total_bounds, densify_pts=21)
        raise UserError(f"--mask covers none of the imagery: the mask's features span {_extent(mask)} and the "
                        f"imagery {_extent(imagery)} (lon/lat, EPSG:4326; the mask's CRS is "
                        f"{self.crs.to_string()}); is it the mask of another place?",
                        self.source.get("path"))

    def record(self, scenes, distance: float) -> dict:
        """What ``scan.json`` says about the mask: the file, the distance and the windows it skipped."""
        scored = sum(s.windows + s.skipped_windows for s in scenes)
        masked = sum(getattr(s, "masked_windows", 0) for s in scenes)
        total = scored + masked
        return {**self.source, "distance_m": round(float(distance), 3), "min_area_m2": self.min_area,
                "windows_total": int(total),
                "windows_masked": int(masked), "share_masked": round(masked / total, 4) if total else 0.0}


def window_boxes(windows: list[tuple[int, int]], transform, chip: int, width: int, height: int) -> np.ndarray:
    """Footprints (shapely boxes, in the grid's CRS) of chip-size windows at (row, col) offsets, cut at the border."""
    offs = np.asarray(windows, dtype=float).reshape(-1, 2)
    rows, cols = offs[:, 0], offs[:, 1]
    rows_end, cols_end = np.minimum(rows + chip, height), np.minimum(cols + chip, width)
    xs, ys = [], []
    for r, c in ((rows, cols), (rows, cols_end), (rows_end, cols), (rows_end, cols_end)):
        x, y = transform @ (c, r)
        xs.append(np.asarray(x))
        ys.append(np.asarray(y))
    xs, ys = np.stack(xs), np.stack(ys)
    return shapely.box(xs.min(0), ys.min(0), xs.max(0), ys.max(0))


def _grown_in(crs, target, bounds, margin: float) -> tuple[float, float, float, float]:
    left, bottom, right, top = bounds
    grown = (left - margin, bottom - margin, right + margin, top + margin)
    return grown if CRS.from_user_input(crs) == target else transform_bounds(crs, target, *grown, densify_pts=21)


def _extent(b) -> str:
    return f"{b[0]:.4f}, {b[1]:.4f} to {b[2]:.4f}, {b[3]:.4f}"
