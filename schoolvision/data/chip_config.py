"""What ``schoolvision chips`` is asked to do: :class:`ChipConfig`, the splits and the views of a chip.

The rules these settings drive are in :mod:`schoolvision.data.chips`.
"""

from __future__ import annotations

from dataclasses import dataclass

from rasterio.crs import CRS
from rasterio.errors import CRSError

from schoolvision.errors import UserError, check_ranges
from schoolvision.io.imagery import (
    parse_scale,
)
from schoolvision.io.schools import POINT_BUFFER_M, parse_lonlat_columns, parse_where
from schoolvision.io.tiles import TileOptions

SPLITS = ("train", "val", "test")
HARD_NEGATIVE = "hard_negative"
"""``view`` of the chips cut around the places of ``--negatives`` (the others: ``grid``, ``centred``)."""


@dataclass
class ChipConfig:
    """Parameters of chip extraction; all of them are recorded in ``dataset.json``."""

    chip_size: int = 128
    stride: int | None = None  # pixels between grid windows; None = planned: chip_size // 2, less on a small area
    gsd: float | None = None  # metres per pixel; None = native GSD of the first source
    crs: str | None = None  # CRS for rasters without one (e.g. "EPSG:32636")
    bands: tuple[int, int, int] | None = None  # RGB band numbers (1-based) for non-RGB rasters
    scale: tuple[float, float] | None = None  # fixed (min, max) to 8 bits; None = per-scene 2-98 percentile stretch
    min_school_fraction: float = 0.5  # share of a school's footprint inside the chip for `school`
    min_chip_cover: float = 0.25  # or: share of the chip covered by school footprints
    point_buffer_m: float = POINT_BUFFER_M  # radius of the disc that stands for a school point
    schools_layer: str | None = None  # layer of a multi-layer schools file (GeoPackage, KML)
    schools_where: str | None = None  # attribute filter of the schools file, e.g. "amenity=school"
    lonlat_columns: tuple[str, str] | None = None  # (lon, lat) columns of a CSV schools file; None = by name
    centred_views: int = 4  # extra jittered windows centred on each school
    centred_splits: tuple[str, ...] = ("train",)  # splits that get the centred views
    jitter: float = 0.25  # max shift of centred views, as a share of chip_size
    negative_ratio: float | None = 3.0  # not_school per school chip in train; None = keep all
    eval_negative_ratio: float | None = None  # same for val/test; None = keep all
    val_scenes: tuple[str, ...] | None = None
    test_scenes: tuple[str, ...] | None = None
    block_size: float | None = None  # metres a split block's side (one or two scenes); None = planned (data.plan)
    block_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)  # train/val/test share of blocks
    max_nodata_fraction: float = 0.1  # chips with more masked (alpha, mask, nodata) or black pixels are skipped
    tile_scheme: str | None = None  # web-map tiles: "xyz" or "tms"; None = TMS if tilemapresource.xml (io.tiles)
    tile_pattern: str | None = None  # tile names, e.g. "{z}/{x}/{y}" or "OAM-{x}-{y}-{z}"; None = z-x-y or z/x/y
    zoom: int | None = None  # zoom level of a tile folder holding several; None = the finest
    separate_scenes: bool = False  # one scene per GeoTIFF, never a mosaic of adjacent tiles
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, "--chip-size >= 32", "--stride >= 1", "--gsd > 0", "--point-buffer (point_buffer_m) >= 0",
                     "--negative-ratio > 0", "eval_negative_ratio > 0", "min_school_fraction in (0, 1]",
                     "min_chip_cover in (0, 1]", "max_nodata_fraction in [0, 1]", "centred_views >= 0",
                     "jitter in [0, 0.5]", "--block-size > 0")
        if self.crs is not None:
            try:
                self.crs = CRS.from_user_input(self.crs).to_string()
            except CRSError:
                raise UserError(f"--crs {self.crs!r} is not a CRS; use e.g. EPSG:32636") from None
        if self.bands is not None:
            self.bands = tuple(int(b) for b in self.bands)
        self.scale = parse_scale(self.scale)
        self.lonlat_columns = parse_lonlat_columns(self.lonlat_columns)
        parse_where(self.schools_where)
        self.centred_splits = tuple(self.centred_splits)
        TileOptions.of(self)  # validates the tile options before any work
        for name in ("val_scenes", "test_scenes"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, tuple(value))
