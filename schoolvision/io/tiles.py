"""Tiled imagery: folders of adjacent GeoTIFF tiles read as one mosaic, and web-map (XYZ/TMS) tile names.

Drone and OpenAerialMap exports come as folders of GeoTIFF tiles (e.g. 48 tiles of 512 px at 0.13 m).
Read one by one, each tile would be a scene of its own: smaller than a chip once resampled, scanned
alone (no window sees a school across a tile border) and split alone (val/test get no school).

**Mosaic rule.** Inside one ``--imagery`` folder, two GeoTIFFs are *neighbours* when they have

- the same CRS, band count, data types, nodata value, colour interpretation and mask kind, a
  north-up transform, and pixel sizes within ``MAX_RES_RATIO`` of each other;
- footprints that touch (a gap under half the finer pixel) or overlap by at most ``MAX_TILE_OVERLAP``
  (1/8) of the smaller tile along one axis: a tiling, not two overlapping scenes of the same place.

Each connected set of two or more neighbours is *one* scene, a GDAL VRT mosaic (built in memory,
``/vsimem``; the files are never written to); files with no neighbour stay scenes of their own, as
before. A folder that forms a single mosaic is named after the folder; several mosaics in one folder
are ``<folder>_mosaic1``, ``<folder>_mosaic2`` ... (ordered by their first file). ``--separate-scenes``
(``TileOptions.separate_scenes``) keeps one scene per file.

Tiles on one grid (same pixel size, whole-pixel offsets) are joined pixel for pixel. Tiles whose
grids differ (a web-map pyramid level warped tile by tile to EPSG:4326, where every row of tiles has
its own pixel size, or grids shifted by part of a pixel) are joined as ``gdalbuildvrt -resolution
highest`` does: each tile resampled lazily onto the finest pixel size; such a mosaic in geographic
or Web Mercator coordinates is then read on one UTM grid (:func:`mosaic_grid`) that covers the
tiles' data (the transparent margins of a pyramid trimmed) with its origin on whole multiples of
the pixel size, like ``gdalwarp -tap``.

**Web-map tiles.** A folder of PNG/JPEG tiles is one Web Mercator mosaic. Names follow
``--tile-pattern`` (``TileOptions.pattern``): ``{z}``, ``{x}`` and ``{y}`` each once, ``/`` for
folders, e.g. ``{z}-{x}-{y}`` or ``{z}/{x}/{y}`` (tried both by default), ``OAM-{x}-{y}-{z}``,
``{x}-{y}-{z}``. Names are validated (zoom 0-24, ``x, y < 2**zoom``): a name that fails is one
UserError naming the file. The y axis is XYZ (y = 0 at the north, slippy-map servers) unless the
folder holds a ``tilemapresource.xml`` (written by ``gdal2tiles``), which means TMS (y = 0 at the
south: ``y_xyz = 2**z - 1 - y_tms``); ``--tile-scheme xyz|tms`` overrides. A folder holding several
zoom levels (``gdal2tiles`` writes a pyramid) is read at its finest zoom, with a warning naming the
others, or at ``--zoom``.
"""

from __future__ import annotations

import functools
import math
import re
import string
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.io import MemoryFile
from rasterio.warp import transform as transform_points
from rasterio.warp import transform_bounds
from shapely import STRtree
from shapely.geometry import box

from schoolvision.errors import UserError
from schoolvision.io.crs import utm_crs

TILE_SCHEMES = ("xyz", "tms")
DEFAULT_PATTERNS = ("{z}-{x}-{y}", "{z}/{x}/{y}")
MAX_ZOOM = 24
MAX_TILE_OVERLAP = 0.125
"""Neighbouring GeoTIFF tiles may overlap by at most this share of the smaller tile (along one axis)."""
MAX_RES_RATIO = 4.0
"""Neighbouring GeoTIFF tiles' pixel sizes differ by at most this factor (a drone tile beside a satellite
scene is two scenes, not one mosaic at the drone's resolution)."""
EXTENT_SAMPLE_PX = 1024
"""A tile's data extent (:func:`mosaic_grid`) is found on a mask read at most this many pixels a side."""
TMS_MARKER = "tilemapresource.xml"
_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
               "int32": "Int32", "float32": "Float32", "float64": "Float64"}


@dataclass(frozen=True)
class TileOptions:
    """How folders of tiles are read (module docstring); the defaults detect everything.

    Attributes:
        scheme: ``"xyz"`` or ``"tms"`` for web-map tiles; None: TMS when the folder holds a
            ``tilemapresource.xml``, else XYZ.
        pattern: tile names such as ``"{z}/{x}/{y}"`` or ``"OAM-{x}-{y}-{z}"``; None: ``{z}-{x}-{y}``
            or ``{z}/{x}/{y}``.
        zoom: the zoom level to read from a folder holding several; None: the finest.
        separate_scenes: one scene per GeoTIFF, never a mosaic of adjacent tiles.
    """

    scheme: str | None = None
    pattern: str | None = None
    zoom: int | None = None
    separate_scenes: bool = False

    def __post_init__(self) -> None:
        if self.scheme is not None and self.scheme not in TILE_SCHEMES:
            raise UserError(f"--tile-scheme must be xyz or tms, got {self.scheme!r}")
        if self.zoom is not None and not 0 <= int(self.zoom) <= MAX_ZOOM:
            raise UserError(f"--zoom must be between 0 and {MAX_ZOOM}, got {self.zoom}")
        if self.pattern is not None:
            _compile(self.pattern)

    @classmethod
    def of(cls, config) -> TileOptions:
        """The options of a config carrying ``tile_scheme``, ``tile_pattern``, ``zoom``, ``separate_scenes``."""
        return cls(scheme=getattr(config, "tile_scheme", None), pattern=getattr(config, "tile_pattern", None),
                   zoom=getattr(config, "zoom", None), separate_scenes=bool(getattr(config, "separate_scenes", False)))


# --------------------------------------------------------------------------------------------- GeoTIFF mosaics


@dataclass(frozen=True)
class _Footprint:
    path: Path
    key: tuple  # what neighbours must share
    res: tuple[float, float]
    left: float
    bottom: float
    right: float
    top: float
    width: int
    height: int


def raster_scenes(folder: Path, files: Sequence[Path],
                  options: TileOptions | None = None) -> list[tuple[str, Path, tuple[str, ...]]]:
    """The scenes of the GeoTIFFs found in ``folder``: ``(name, path, parts)`` by the mosaic rule.

    ``parts`` is empty for a file read alone (``path`` is the file) and holds the mosaic's files
    (absolute paths, sorted) for a mosaic (``path`` is the folder).
    """
    options = options or TileOptions()
    files = sorted(Path(f) for f in files)
    groups = [[f] for f in files] if options.separate_scenes else _groups(files)
    mosaics = [g for g in groups if len(g) > 1]
    out = []
    for group in groups:
        if len(group) == 1:
            out.append((group[0].stem, group[0], ()))
            continue
        name = folder.name if len(mosaics) == 1 else f"{folder.name}_mosaic{mosaics.index(group) + 1}"
        out.append((name, folder, tuple(str(p.resolve()) for p in group)))
    return out


def _groups(files: list[Path]) -> list[list[Path]]:
    """Connected sets of neighbouring files (module docstring), ordered by their first file."""
    prints = [_footprint(f) for f in files]
    parent = list(range(len(files)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    usable = [i for i, p in enumerate(prints) if p is not None]
    if len(usable) > 1:
        boxes = [box(prints[i].left - prints[i].res[0] / 2, prints[i].bottom - prints[i].res[1] / 2,
                     prints[i].right + prints[i].res[0] / 2, prints[i].top + prints[i].res[1] / 2) for i in usable]
        pairs = STRtree(boxes).query(boxes, predicate="intersects")
        for a, b in zip(*pairs):
            i, j = usable[int(a)], usable[int(b)]
            if i < j and _neighbours(prints[i], prints[j]):
                parent[find(j)] = find(i)
    groups: dict[int, list[Path]] = {}
    for i, f in enumerate(files):
        groups.setdefault(find(i), []).append(f)
    return sorted(groups.values(), key=lambda g: g[0])


def _footprint(path: Path) -> _Footprint | None:
    """What the mosaic rule compares; None for files that cannot join a mosaic (unreadable, no CRS, rotated)."""
    try:
        with rasterio.open(path) as ds:
            t = ds.transform
            if ds.crs is None or t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
                return None
            flags = tuple(tuple(sorted(f.name for f in band)) for band in ds.mask_flag_enums)
            key = (ds.crs.to_wkt(), ds.count, tuple(ds.dtypes), ds.nodata, tuple(ds.colorinterp), flags)
            left, bottom, right, top = ds.bounds
            return _Footprint(path, key, (t.a, -t.e), left, bottom, right, top, ds.width, ds.height)
    except (RasterioError, OSError):
        return None


def _neighbours(a: _Footprint, b: _Footprint) -> bool:
    if a.key != b.key or any(max(u, v) > MAX_RES_RATIO * min(u, v) for u, v in zip(a.res, b.res)):
        return False
    rx, ry = min(a.res[0], b.res[0]), min(a.res[1], b.res[1])  # the finer pixel
    overlap_x = min(a.right, b.right) - max(a.left, b.left)  # map units; negative: a gap
    overlap_y = min(a.top, b.top) - max(a.bottom, b.bottom)
    if overlap_x < -0.5 * rx or overlap_y < -0.5 * ry:
        return False
    share_x = overlap_x / min(a.right - a.left, b.right - b.left)
    share_y = overlap_y / min(a.top - a.bottom, b.top - b.bottom)
    return min(share_x, share_y) <= MAX_TILE_OVERLAP


def _tile_grids(parts: Sequence[str]) -> list[tuple[str, Affine, int, int, tuple[int, int]]]:
    """(path, transform, width, height, block shape) of each tile."""
    out = []
    for path in parts:
        with rasterio.open(path) as ds:
            out.append((path, ds.transform, ds.width, ds.height, ds.block_shapes[0]))
    return out


def on_one_grid(parts: Sequence[str]) -> bool:
    """True when the tiles share their pixel size and their origins lie on one pixel grid (within 1/100 px)."""
    return _on_one_grid(tuple(parts))


@functools.lru_cache(maxsize=256)
def _on_one_grid(parts: tuple[str, ...]) -> bool:
    grids = _tile_grids(parts)
    t0 = grids[0][1]
    for _, t, *_ in grids[1:]:
        if not (math.isclose(t.a, t0.a, rel_tol=1e-6) and math.isclose(t.e, t0.e, rel_tol=1e-6)):
            return False
        for offset in ((t.c - t0.c) / t0.a, (t.f - t0.f) / t0.e):
            if abs(offset - round(offset)) > 0.01:
                return False
    return True


def mosaic_vrt_xml(parts: Sequence[str]) -> str:
    """A GDAL VRT of the GeoTIFF tiles ``parts``: every band, nodata, colours, mask.

    Tiles on one grid keep their pixels; others are resampled onto the finest pixel size of the set
    (bilinear for colours, nearest for alpha and masks), as ``gdalbuildvrt -resolution highest``.
    """
    infos = _tile_grids(parts)
    with rasterio.open(parts[0]) as ds:
        crs, count, dtypes, nodata = ds.crs, ds.count, ds.dtypes, ds.nodata
        colours = [c.name for c in ds.colorinterp]
        dataset_mask = all(flags == [MaskFlags.per_dataset] for flags in ds.mask_flag_enums)
    exact = on_one_grid(parts)
    rx, ry = min(t.a for _, t, *_ in infos), min(-t.e for _, t, *_ in infos)
    left = min(t.c for _, t, *_ in infos)
    top = max(t.f for _, t, *_ in infos)
    right = max(t.c + w * t.a for _, t, w, _, _ in infos)
    bottom = min(t.f + h * t.e for _, t, _, h, _ in infos)
    width, height = round((right - left) / rx), round((top - bottom) / ry)

    def sources(band: str, dtype: str, resampling: str) -> str:
        out = []
        for path, t, w, h, (by, bx) in infos:
            if exact:
                dst = (round((t.c - left) / rx), round((top - t.f) / ry), w, h)
                how = ""
            else:  # fractional offsets and sizes: GDAL resamples the tile onto the mosaic's grid
                dst = ((t.c - left) / rx, (top - t.f) / ry, w * t.a / rx, h * -t.e / ry)
                how = f' resampling="{resampling}"'
            out.append(
                f'<SimpleSource{how}><SourceFilename relativeToVRT="0">{escape(path)}</SourceFilename>'
                f"<SourceBand>{band}</SourceBand>"
                f'<SourceProperties RasterXSize="{w}" RasterYSize="{h}" DataType="{dtype}" '
                f'BlockXSize="{bx}" BlockYSize="{by}"/>'
                f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
                f'<DstRect xOff="{dst[0]!r}" yOff="{dst[1]!r}" xSize="{dst[2]!r}" ySize="{dst[3]!r}"/></SimpleSource>'
            )
        return "".join(out)

    bands = []
    for b in range(1, count + 1):
        dtype = _GDAL_TYPES.get(dtypes[b - 1], "Float64")
        nd = "" if nodata is None else f"<NoDataValue>{nodata!r}</NoDataValue>"
        colour = colours[b - 1]
        colour = colour if colour in ("Y", "Cb", "Cr") else colour.capitalize()
        bands.append(f'<VRTRasterBand dataType="{dtype}" band="{b}">{nd}<ColorInterp>{colour}</ColorInterp>'
                     f"{sources(str(b), dtype, 'nearest' if colour == 'Alpha' else 'bilinear')}</VRTRasterBand>")
    mask = (f'<MaskBand><VRTRasterBand dataType="Byte">{sources("mask,1", "Byte", "nearest")}'
            "</VRTRasterBand></MaskBand>" if dataset_mask else "")
    return (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{escape(crs.to_wkt())}</SRS>'
        f"<GeoTransform>{left!r}, {rx!r}, 0.0, {top!r}, 0.0, {-ry!r}</GeoTransform>"
        + "".join(bands) + mask + "</VRTDataset>"
    )


_MOSAICS: dict[tuple[str, ...], MemoryFile] = {}


def mosaic_path(parts: Sequence[str]) -> str:
    """A ``/vsimem/`` path holding the mosaic VRT of ``parts``, made once per process and kept open.

    An in-memory file rather than a VRT string, so the read path can stack its own VRTs (band
    selection, CRS) on top of it exactly as on a file; nothing is written next to the user's tiles.
    """
    key = tuple(parts)
    if key not in _MOSAICS:
        name = Path(parts[0]).parent.name or "mosaic"
        _MOSAICS[key] = MemoryFile(mosaic_vrt_xml(key).encode(), filename=f"{name}.vrt")
    return _MOSAICS[key].name


@dataclass(frozen=True)
class MosaicGrid:
    """The UTM grid a mosaic of tiles on differing grids is read on (module docstring).

    ``bounds`` (left, bottom, right, top, in ``crs``) are the extent of the centres of the tiles'
    outermost valid pixels: pixels under their mask (alpha, nodata) are left out, so a pyramid's
    transparent margins do not count; ``res`` is the finest tile pixel in metres.
    """

    crs: str
    bounds: tuple[float, float, float, float]
    res: float

    def snapped(self, gsd: float) -> tuple[Affine, int, int]:
        """(transform, width, height) at ``gsd`` m/px: the bounds rounded to the nearest whole multiples of ``gsd``.

        The nearest rather than outwards: the outermost valid pixels' centres lie within a tile
        pixel of the data's true edge on either side, after the pyramid's resampling.
        """
        left, bottom, right, top = (round(v / gsd) * gsd for v in self.bounds)
        width, height = max(1, round((right - left) / gsd)), max(1, round((top - bottom) / gsd))
        return Affine(gsd, 0.0, left, 0.0, -gsd, top), width, height


_GRIDS: dict[tuple[str, ...], MosaicGrid] = {}


def mosaic_grid(parts: Sequence[str]) -> MosaicGrid:
    """The :class:`MosaicGrid` of the tiles ``parts``: the UTM zone of their centre, their data's bounds there.

    Each tile's mask is read (decimated to ``EXTENT_SAMPLE_PX``) and the centres of its outermost
    valid pixels are carried into UTM; their extent is the grid's. Made once per process.
    """
    key = tuple(parts)
    if key in _GRIDS:
        return _GRIDS[key]
    xs, ys, res, crs = [], [], [], None
    for path in parts:
        with rasterio.open(path) as ds:
            if crs is None:
                w, s, e, n = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
                crs = utm_crs((w + e) / 2, (s + n) / 2)
            f = max(1, math.ceil(max(ds.width, ds.height) / EXTENT_SAMPLE_PX))
            shape = (max(1, ds.height // f), max(1, ds.width // f))
            valid = ds.dataset_mask(out_shape=shape, resampling=Resampling.nearest) > 0
            t = ds.transform @ Affine.scale(ds.width / shape[1], ds.height / shape[0])
            corners = transform_points(ds.crs, crs, [ds.bounds.left, ds.bounds.right, ds.bounds.left],
                                       [ds.bounds.top, ds.bounds.top, ds.bounds.bottom])
            res.append(min(math.dist((corners[0][0], corners[1][0]), (corners[0][1], corners[1][1])) / ds.width,
                           math.dist((corners[0][0], corners[1][0]), (corners[0][2], corners[1][2])) / ds.height))
            rows, cols = _edge_pixels(valid)
            if rows.size:
                x, y = t @ (cols + 0.5, rows + 0.5)
                xs_, ys_ = transform_points(ds.crs, crs, x.tolist(), y.tolist())
                xs.extend(xs_)
                ys.extend(ys_)
    if not xs:
        raise UserError("the tiles' masks (alpha, nodata) hide every pixel", Path(parts[0]).parent)
    grid = MosaicGrid(crs.to_string(), (min(xs), min(ys), max(xs), max(ys)), round(min(res), 4))
    _GRIDS[key] = grid
    return grid


def _edge_pixels(valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the first and last valid pixel of every row and every column of a mask."""
    h, w = valid.shape
    rows = np.flatnonzero(valid.any(1))
    cols = np.flatnonzero(valid.any(0))
    first_col, last_col = valid[rows].argmax(1), w - 1 - valid[rows][:, ::-1].argmax(1)
    first_row, last_row = valid[:, cols].argmax(0), h - 1 - valid[:, cols][::-1].argmax(0)
    return (np.concatenate([rows, rows, first_row, last_row]), np.concatenate([first_col, last_col, cols, cols]))


# --------------------------------------------------------------------------------------------- web-map tiles


def _compile(pattern: str) -> tuple[re.Pattern, int]:
    """A tile-name pattern as a regex over the last ``n`` path parts (suffix dropped), and ``n``."""
    text = pattern.strip().strip("/")
    for suffix in (".png", ".jpg", ".jpeg"):
        if text.lower().endswith(suffix):
            text = text[: -len(suffix)]
    regex, fields = "", []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError:
        parsed = [("", "?", None, None)]
    for literal, name, spec, _ in parsed:
        regex += re.escape(literal)
        if name is None:
            continue
        fields.append(name)
        regex += rf"(?P<{name}>\d+)" if name in ("x", "y", "z") and not spec else "(?!)"
    if sorted(fields) != ["x", "y", "z"]:
        raise UserError(f"--tile-pattern {pattern!r} must name {{z}}, {{x}} and {{y}} once each, "
                        "e.g. {z}/{x}/{y} or OAM-{x}-{y}-{z}")
    return re.compile(regex), text.count("/") + 1


def tile_scheme(folder: Path, options: TileOptions | None = None) -> str:
    """``"tms"`` or ``"xyz"``: the option, else TMS when ``tilemapresource.xml`` is in the folder."""
    options = options or TileOptions()
    marker = Path(folder) / TMS_MARKER
    if marker.is_file():
        _check_profile(marker)
    if options.scheme is not None:
        return options.scheme
    return "tms" if marker.is_file() else "xyz"


def _check_profile(marker: Path) -> None:
    """Refuse gdal2tiles' geodetic/raster profiles: only Web Mercator tiles are georeferenced by name."""
    try:
        tilesets = ET.parse(marker).getroot().find("TileSets")
    except (ET.ParseError, OSError):
        return
    profile = None if tilesets is None else tilesets.get("profile")
    if profile not in (None, "mercator", "global-mercator"):
        raise UserError(f"tiles use the {profile!r} profile; only Web Mercator (gdal2tiles' default 'mercator') "
                        "tiles can be read", marker)


def parse_tile_names(folder: Path, files: Sequence[Path],
                     options: TileOptions | None = None) -> tuple[tuple[int, int, int, str], ...]:
    """``(z, x, y, file)`` of the tiles of one zoom level, y in the XYZ convention, sorted.

    Raises:
        UserError: a name does not follow the pattern, or names a tile that does not exist (zoom
            outside 0-24, x or y outside the zoom's grid); ``zoom`` is set but no tile has it.
    """
    options = options or TileOptions()
    folder = Path(folder)
    patterns = (options.pattern,) if options.pattern else DEFAULT_PATTERNS
    compiled = [_compile(p) for p in patterns]
    shown = options.pattern or " or ".join(DEFAULT_PATTERNS)
    hint = "" if options.pattern else "; pass --tile-pattern, e.g. --tile-pattern 'OAM-{x}-{y}-{z}'"
    flip = tile_scheme(folder, options) == "tms"
    parsed = []
    for tile in files:
        parts = Path(tile).relative_to(folder).with_suffix("").parts
        match = None
        for regex, n in compiled:
            if len(parts) >= n:
                match = regex.fullmatch("/".join(parts[-n:]))
                if match:
                    break
        if match is None:
            raise UserError(f"tile name does not follow {shown}{hint}", tile)
        z, x, y = (int(match[k]) for k in ("z", "x", "y"))
        if not 0 <= z <= MAX_ZOOM:
            raise UserError(f"tile name gives zoom {z}, outside 0-{MAX_ZOOM}: names do not follow {shown}{hint}", tile)
        if x >= 2**z or y >= 2**z:
            raise UserError(f"tile name gives x={x}, y={y} at zoom {z}, outside its {2**z} x {2**z} grid: "
                            f"names do not follow {shown}{hint}", tile)
        parsed.append((z, x, (2**z - 1 - y) if flip else y, str(Path(tile).resolve())))
    zooms = sorted({t[0] for t in parsed})
    if options.zoom is not None:
        if options.zoom not in zooms:
            raise UserError(f"--zoom {options.zoom}: no tile at that zoom; the folder holds zoom "
                            f"{', '.join(map(str, zooms))}", folder)
        zoom = options.zoom
    else:
        zoom = zooms[-1]
        if len(zooms) > 1:
            others = ", ".join(map(str, zooms[:-1]))
            warnings.warn(f"{folder}: tiles of zoom {others} and {zoom}; reading the finest, {zoom} "
                          "(--zoom picks another)", stacklevel=3)
    return tuple(sorted(t for t in parsed if t[0] == zoom))
