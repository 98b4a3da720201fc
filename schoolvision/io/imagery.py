"""Imagery sources: GeoTIFF files, folders of them, and XYZ tile folders, read at a target GSD.

Every source is opened as one rasterio dataset in a *projected* CRS at ``gsd`` metres per pixel,
so chips, scans and explanations share one pixel grid whatever the input looked like:

- projected rasters at their native GSD are read as they are (pixels unchanged);
- projected rasters at another GSD go through a resampled warped view in their own CRS;
- geographic rasters (EPSG:4326) and Web Mercator (EPSG:3857, which distorts scale) go through a
  warped view in the local UTM zone of the raster's centre;
- an XYZ/TMS tile folder (``z-x-y.png``, ``z/x/y.png`` or ``--tile-pattern``) becomes one VRT mosaic in
  EPSG:3857 (georeferenced with ``mercantile``; missing tiles are nodata), then is warped like the above;
- a folder of adjacent GeoTIFF tiles is one VRT mosaic, even when the tiles do not share a grid (a
  web-map pyramid warped tile by tile to EPSG:4326 is read on one UTM grid; rule in :mod:`schoolvision.io.tiles`).

Band rule: 3 bands are RGB. RGBA (4 bands, the 4th flagged alpha) uses bands 1-3. Any other band
count needs ``bands=(r, g, b)`` (``--bands``); ``--bands 1,1,1`` turns a grey band into RGB.

Bit-depth rule (chips are 8-bit RGB): 8-bit (uint8) imagery is read as it is. Any other data type
(uint16 satellite products with 11- or 12-bit data, int16, float) is scaled linearly to 1-255, 0
staying nodata: by default per scene and band from the ``STRETCH_PERCENTILES`` (2nd and 98th)
percentiles of its unmasked pixels, computed on a read decimated to ``STRETCH_SAMPLE_PX`` pixels a
side (through the file's overviews when it has them, so it is cheap); ``scale=(min, max)``
(``--scale MIN,MAX``) maps the same fixed range for every scene and band instead. Values beyond the
range are clipped. :func:`pixel_scale` gives the values a scene is read with (``dataset.json`` and
the run record them; ``scan`` reads a scene with the same rule, so with the same values).

Mask rule: the dataset mask (alpha band, internal mask, nodata value) is carried through band
selection, scaling and warping: ``ds.dataset_mask()`` of whatever :func:`open_source` yields is 0
where the source has no data, and warped views read 0 there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import CRSError, NotGeoreferencedWarning, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, transform_bounds
from rasterio.windows import Window

from schoolvision.errors import UserError
from schoolvision.io.crs import utm_crs
from schoolvision.io.manifest import input_files
from schoolvision.io.tiles import TileOptions, mosaic_grid, mosaic_path, on_one_grid, parse_tile_names, raster_scenes

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
TILE_SUFFIXES = (".png", ".jpg", ".jpeg")

STRETCH_PERCENTILES = (2.0, 98.0)
"""Default bit-depth rule: these percentiles of a scene's unmasked pixels (per band) map to 1 and 255."""

STRETCH_SAMPLE_PX = 1024
"""The percentiles are taken on a read decimated to at most this many pixels a side."""

SCALE_RULE = ("8-bit imagery is read as it is; other data types are scaled linearly to 1-255 (0 is nodata), "
              "clipped: from each scene's 2nd-98th percentile per band of its unmasked pixels (computed on a "
              "decimated read), or from a fixed --scale MIN,MAX for every scene and band")
"""The bit-depth rule as recorded in ``dataset.json`` and the run."""

AUTO = "auto"
"""``--bands auto`` / ``--scale auto``: the band rule / the percentile stretch, whatever a run recorded."""

_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
               "int32": "Int32", "uint64": "UInt64", "int64": "Int64", "float32": "Float32", "float64": "Float64"}


@dataclass(frozen=True)
class ImageryOptions:
    """How a scene's pixels are read: RGB band numbers, CRS of a raster without one, fixed 8-bit scale range.

    ``None`` everywhere means the rules of the module docstring (band rule, file CRS, percentile
    stretch for imagery that is not 8-bit).

    Raises:
        UserError: bands are not three numbers >= 1, the CRS is unknown, or the scale is not min < max.
    """

    bands: tuple[int, ...] | None = None
    crs: str | None = None
    scale: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.bands is not None:
            object.__setattr__(self, "bands", parse_bands(self.bands))
        if self.crs is not None:
            object.__setattr__(self, "crs", parse_crs(self.crs))
        if self.scale is not None:
            object.__setattr__(self, "scale", parse_scale(self.scale))

    def record(self) -> dict:
        """What ``dataset.json`` and the run record: bands, CRS option, scale range and the rule in words."""
        return {"bands": None if self.bands is None else list(self.bands), "crs": self.crs,
                "scale": None if self.scale is None else list(self.scale), "rule": SCALE_RULE}


def parse_bands(value, keep_auto: bool = False) -> tuple[int, int, int] | str | None:
    """``"3,2,1"`` (or a sequence) as three 1-based band numbers; ``None`` / ``"auto"`` is the band rule.

    ``keep_auto``: return ``AUTO`` for ``"auto"`` (scan: the rule rather than the run's bands).

    Raises:
        UserError: not three whole numbers >= 1 (one line, naming ``--bands``).
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", AUTO)):
        return AUTO if keep_auto and value is not None and value.strip().lower() == AUTO else None
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        bands = tuple(int(str(p).strip()) for p in parts)
    except ValueError:
        bands = ()
    if len(bands) != 3 or min(bands) < 1:
        text = value if isinstance(value, str) else ",".join(map(str, value))
        raise UserError(f"--bands must be three band numbers from 1 like 3,2,1 (or auto), got {text!r}")
    return bands


def parse_scale(value, keep_auto: bool = False) -> tuple[float, float] | str | None:
    """``"0,2047"`` (or a pair) as the fixed (min, max) mapped to 1-255; ``None`` / ``"auto"`` is the stretch.

    ``keep_auto``: return ``AUTO`` for ``"auto"`` (scan: the stretch rather than the run's fixed range).

    Raises:
        UserError: not two finite numbers with min < max (one line, naming ``--scale``).
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", AUTO)):
        return AUTO if keep_auto and value is not None and value.strip().lower() == AUTO else None
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        lo, hi = (float(str(p).strip()) for p in parts)
    except ValueError:
        lo = hi = math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        text = value if isinstance(value, str) else ",".join(map(str, value))
        raise UserError(f"--scale must be MIN,MAX with MIN < MAX, e.g. 0,2047 for 11-bit data (or auto for the "
                        f"per-scene 2-98 percentile stretch), got {text!r}")
    return lo, hi


def parse_crs(value: str) -> str:
    """A CRS option as a canonical string (``EPSG:32636``).

    Raises:
        UserError: not a CRS (one line, naming ``--crs``).
    """
    try:
        return CRS.from_user_input(value).to_string()
    except CRSError:
        raise UserError(f"--crs {value!r} is not a CRS; use e.g. EPSG:32636") from None


def with_options(sources: Sequence[ImagerySource], bands=None, crs=None, scale=None) -> list[ImagerySource]:
    """``sources`` read with the given band numbers, CRS option and scale range (validated once, here)."""
    options = ImageryOptions(bands=bands, crs=crs, scale=scale)
    return [s.with_options(options) for s in sources]


@dataclass(frozen=True)
class ImagerySource:
    """One scene: a raster file, an XYZ tile folder or a folder of adjacent GeoTIFF tiles read as a single mosaic."""

    name: str
    path: Path
    kind: str = "raster"  # "raster" | "xyz" | "mosaic" (path: the folder)
    tiles: tuple[tuple[int, int, int, str], ...] = field(default=(), repr=False)  # (z, x, y, file)
    parts: tuple[str, ...] = field(default=(), repr=False)  # the GeoTIFF tiles of a mosaic
    options: ImageryOptions = field(default_factory=lambda: ImageryOptions(), repr=False)  # see with_options

    def with_options(self, options: ImageryOptions) -> ImagerySource:
        """The same scene read with ``options`` by every reader (chips, scan, peaks, map)."""
        return dataclasses.replace(self, options=options)


def list_sources(paths: Sequence[str | Path], options: TileOptions | None = None) -> list[ImagerySource]:
    """Expand files and folders into imagery sources, sorted by name, with unique names.

    A folder holding GeoTIFFs gives one source per file, except that adjacent tiles on one grid
    form one mosaic source (unless ``options.separate_scenes``); a folder holding only PNG/JPEG
    tiles is one XYZ/TMS mosaic (names per ``options.pattern``, else a UserError names the file).
    See :mod:`schoolvision.io.tiles` for the rules and ``options`` (default: detect everything).
    """
    found: list[ImagerySource] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise UserError("imagery path does not exist", path)
        if path.is_file():
            found.append(ImagerySource(path.stem, path))
            continue
        files = input_files(path)  # not the files of schoolvision output folders below it (chips, scans)
        rasters = [p for p in files if p.suffix.lower() in RASTER_SUFFIXES]
        if rasters:
            found.extend(ImagerySource(name, p, "mosaic" if parts else "raster", parts=parts)
                         for name, p, parts in raster_scenes(path, rasters, options))
            continue
        tiles = [p for p in files if p.suffix.lower() in TILE_SUFFIXES]
        if not tiles:
            raise UserError("folder holds no GeoTIFF (.tif) nor XYZ tiles (z-x-y.png|jpg)", path)
        found.append(ImagerySource(path.name, path, "xyz", parse_tile_names(path, tiles, options)))
    if not found:
        raise UserError("no imagery given; pass --imagery FILE_OR_FOLDER")
    names: dict[str, int] = {}
    unique = []
    for src in sorted(found, key=lambda s: (s.name, str(s.path))):
        n = names.get(src.name, 0)
        names[src.name] = n + 1
        unique.append(src if n == 0 else dataclasses.replace(src, name=f"{src.name}_{n}"))
    return unique


def xyz_vrt_xml(source: ImagerySource) -> str:
    """A GDAL VRT mosaic (EPSG:3857) of an XYZ tile folder; missing tiles are nodata (0)."""
    import mercantile

    z = source.tiles[0][0]
    xs = [t[1] for t in source.tiles]
    ys = [t[2] for t in source.tiles]
    x0, y0 = min(xs), min(ys)
    first = source.tiles[0][3]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # tiles are georeferenced by name
            with rasterio.open(first) as ds:
                size, count = ds.width, ds.count
    except RasterioError as exc:
        raise UserError(f"not a readable image tile ({exc})", first) from None
    if count < 3:
        raise UserError(f"XYZ tile has {count} band(s); expected RGB or RGBA tiles", first)
    ul = mercantile.xy_bounds(mercantile.Tile(x0, y0, z))
    res = (ul.right - ul.left) / size
    width, height = (max(xs) - x0 + 1) * size, (max(ys) - y0 + 1) * size
    bands = []
    for b in (1, 2, 3):
        sources = "".join(
            f'<SimpleSource><SourceFilename relativeToVRT="0">{escape(path)}</SourceFilename>'
            f"<SourceBand>{b}</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{size}" ySize="{size}"/>'
            f'<DstRect xOff="{(x - x0) * size}" yOff="{(y - y0) * size}" xSize="{size}" ySize="{size}"/>'
            "</SimpleSource>"
            for _, x, y, path in source.tiles
        )
        bands.append(
            f'<VRTRasterBand dataType="Byte" band="{b}"><NoDataValue>0</NoDataValue>'
            f"<ColorInterp>{('Red', 'Green', 'Blue')[b - 1]}</ColorInterp>{sources}</VRTRasterBand>"
        )
    return (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>EPSG:3857</SRS>'
        f"<GeoTransform>{ul.left!r}, {res!r}, 0.0, {ul.top!r}, 0.0, {-res!r}</GeoTransform>"
        + "".join(bands)
        + "</VRTDataset>"
    )


def _band_vrt_xml(ds, path: str, bands: Sequence[int], crs: CRS, pixels: PixelScale | None = None) -> str:
    """A VRT selecting ``bands`` of ``ds``, giving it ``crs`` when the file has none, scaled to 8 bits by ``pixels``.

    The file's per-dataset mask (alpha band or internal mask) becomes the VRT's mask band; its nodata
    value stays nodata (0 once scaled, valid pixels being 1-255), so the mask survives band selection.
    """
    t = ds.transform
    src_type = _GDAL_TYPES.get(ds.dtypes[bands[0] - 1], "Float64")
    scaled = pixels is not None and pixels.rule != "none"
    rects = (f'<SrcRect xOff="0" yOff="0" xSize="{ds.width}" ySize="{ds.height}"/>'
             f'<DstRect xOff="0" yOff="0" xSize="{ds.width}" ySize="{ds.height}"/>')
    bx, by = ds.block_shapes[0][1], ds.block_shapes[0][0]
    props = (f'<SourceProperties RasterXSize="{ds.width}" RasterYSize="{ds.height}" DataType="{src_type}" '
             f'BlockXSize="{bx}" BlockYSize="{by}"/>')
    name = f'<SourceFilename relativeToVRT="0">{escape(path)}</SourceFilename>'
    body = []
    for i, b in enumerate(bands, start=1):
        if scaled:  # a LUT maps low -> 1, high -> 255 and clamps beyond; source nodata is left at 0
            src_nodata = "" if ds.nodata is None else f"<NODATA>{ds.nodata!r}</NODATA>"
            nodata = "" if ds.nodata is None else "<NoDataValue>0</NoDataValue>"
            lut = f"<LUT>{pixels.low[i - 1]!r}:1,{pixels.high[i - 1]!r}:255</LUT>"
            source = f"<ComplexSource>{name}<SourceBand>{b}</SourceBand>{props}{rects}{src_nodata}{lut}</ComplexSource>"
            body.append(f'<VRTRasterBand dataType="Byte" band="{i}">{nodata}{source}</VRTRasterBand>')
        else:
            nodata = "" if ds.nodata is None else f"<NoDataValue>{ds.nodata!r}</NoDataValue>"
            body.append(f'<VRTRasterBand dataType="{src_type}" band="{i}">{nodata}<SimpleSource>{name}'
                        f"<SourceBand>{b}</SourceBand>{props}{rects}</SimpleSource></VRTRasterBand>")
    if has_dataset_mask(ds):
        body.append(f'<MaskBand><VRTRasterBand dataType="Byte"><SimpleSource>{name}<SourceBand>mask,1</SourceBand>'
                    f"{rects}</SimpleSource></VRTRasterBand></MaskBand>")
    return (
        f'<VRTDataset rasterXSize="{ds.width}" rasterYSize="{ds.height}"><SRS>{escape(crs.to_wkt())}</SRS>'
        f"<GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>{''.join(body)}</VRTDataset>"
    )


def has_dataset_mask(ds) -> bool:
    """True when ``ds`` has a per-dataset mask: an alpha band or an internal (``.msk`` / GeoTIFF) mask."""
    return MaskFlags.per_dataset in ds.mask_flag_enums[0]


@dataclass(frozen=True)
class PixelScale:
    """How one scene's pixels become 8-bit: ``rule`` "none" (already 8-bit), "percentile" or "fixed".

    ``low`` and ``high`` (per output band) map to 1 and 255.
    """

    dtype: str
    rule: str
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

    def record(self) -> dict:
        """The per-scene entry of ``dataset.json`` and ``scan.json``."""
        out: dict = {"dtype": self.dtype, "rule": self.rule}
        if self.rule != "none":
            out.update(low=list(self.low), high=list(self.high))
        if self.rule == "percentile":
            out["percentiles"] = list(STRETCH_PERCENTILES)
        return out


def _pixel_scale(ds, path: str, bands: tuple[int, ...], scale: tuple[float, float] | None) -> PixelScale:
    """The bit-depth rule (module docstring) for the ``bands`` of an open raster."""
    dtype = ds.dtypes[bands[0] - 1]
    if dtype == "uint8":
        return PixelScale(dtype, "none")
    if scale is not None:
        return PixelScale(dtype, "fixed", (float(scale[0]),) * len(bands), (float(scale[1]),) * len(bands))
    low, high = _stretch(path, _file_key(path), bands)
    return PixelScale(dtype, "percentile", low, high)


def _file_key(path: str) -> tuple[int, int]:
    """(size, mtime) of a file, so a rewritten file gets its stretch computed again; (0, 0) for in-memory files."""
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0)
    return (st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _stretch(path: str, key: tuple[int, int], bands: tuple[int, ...]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band ``STRETCH_PERCENTILES`` of the unmasked, finite pixels on a decimated read (cached per file)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            f = max(1, math.ceil(max(ds.width, ds.height) / STRETCH_SAMPLE_PX))
            shape = (max(1, ds.height // f), max(1, ds.width // f))
            try:
                data = ds.read(list(bands), out_shape=(len(bands), *shape), resampling=Resampling.nearest)
                valid = ds.dataset_mask(out_shape=shape, resampling=Resampling.nearest) > 0
            except RasterioError as exc:
                raise UserError(f"raster is truncated or corrupt ({str(exc).splitlines()[0][:120]})", path) from None
    low, high = [], []
    for band in data:
        values = band[valid & np.isfinite(band)]
        if values.size == 0:
            raise UserError("raster has no unmasked pixel (its alpha band, mask or nodata value covers it all)", path)
        lo, hi = (float(f"{v:.6g}") for v in np.percentile(values.astype(np.float64), STRETCH_PERCENTILES))
        low.append(lo)
        high.append(hi if hi > lo else lo + 1.0)
    return tuple(low), tuple(high)


def choose_bands(count: int, colorinterp: Sequence[ColorInterp], bands: Sequence[int] | None, path) -> tuple[int, ...]:
    """Apply the band rule (module docstring); a UserError says what to pass otherwise."""
    if bands is not None:
        bands = tuple(int(b) for b in bands)
        if len(bands) != 3 or not all(1 <= b <= count for b in bands):
            raise UserError(f"--bands {','.join(map(str, bands))} does not fit a {count}-band raster; "
                            f"give three band numbers from 1 to {count}", path)
        return bands
    if count == 3:
        return (1, 2, 3)
    if count == 4 and colorinterp[3] == ColorInterp.alpha:
        return (1, 2, 3)
    if count < 3:
        raise UserError(f"raster has {count} band(s) but RGB is needed; pass --bands 1,1,1 to use band 1 as grey "
                        "or convert it to RGB", path)
    raise UserError(f"raster has {count} bands; pick the red, green and blue ones with --bands R,G,B "
                    "(e.g. --bands 1,2,3)", path)


def native_gsd(ds) -> float:
    """Pixel size in metres: the transform's for projected CRSs, at the centre for geographic/Web Mercator."""
    crs = ds.crs
    res = abs(ds.transform.a)
    if crs.is_geographic:
        lat = (ds.bounds.bottom + ds.bounds.top) / 2
        return round(res * 111_320.0 * math.cos(math.radians(lat)), 4)
    if crs.to_epsg() == 3857:
        lon_lat = transform_bounds(crs, "EPSG:4326", *ds.bounds)
        return round(res * math.cos(math.radians((lon_lat[1] + lon_lat[3]) / 2)), 4)
    return res


def needs_utm(crs: CRS) -> bool:
    """Geographic CRSs and Web Mercator do not keep metres per pixel: read them in UTM."""
    return crs.is_geographic or crs.to_epsg() == 3857


def utm_crs_for(ds, path=None) -> CRS:
    """The UTM zone of the raster's centre; a UserError names ``path`` when its coordinates place it nowhere."""
    try:
        w, s, e, n = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
        return utm_crs((w + e) / 2, (s + n) / 2)
    except (UserError, RasterioError, ValueError) as exc:
        raise UserError(f"raster's coordinates do not fit its CRS {ds.crs.to_string()} ({exc}); "
                        "is the CRS right? a raster without one needs --crs", path) from None


def _options(source: ImagerySource, crs, bands, scale) -> tuple:
    """(crs, bands, scale): explicit arguments first, then the source's :class:`ImageryOptions`."""
    o = source.options
    return (o.crs if crs is None else crs, o.bands if bands is None else bands, o.scale if scale is None else scale)


def source_info(source: ImagerySource, crs: str | None = None, bands: Sequence[int] | None = None,
                scale: tuple[float, float] | None = None) -> dict:
    """CRS, native GSD, EPSG:4326 bounds and 8-bit scaling (:meth:`PixelScale.record`) of a source.

    Checks that it opens (georeference, CRS, bands) without reading more than a decimated sample.
    """
    with _open_raw(source, *_options(source, crs, bands, scale)) as (ds, pixels):
        grid = _mosaic_grid(source, ds)
        return {
            "crs": ds.crs.to_string(),
            "native_gsd": native_gsd(ds) if grid is None else grid.res,
            "bounds_4326": transform_bounds(ds.crs, "EPSG:4326", *ds.bounds),
            "pixels": pixels.record(),
        }


def pixel_scale(source: ImagerySource, crs: str | None = None, bands: Sequence[int] | None = None,
                scale: tuple[float, float] | None = None) -> PixelScale:
    """How ``source`` is scaled to 8 bits (rule and per-band values); arguments override ``source.options``."""
    with _open_raw(source, *_options(source, crs, bands, scale)) as (_, pixels):
        return pixels


@contextlib.contextmanager
def open_scene(source: ImagerySource, crs: str | None = None, bands: Sequence[int] | None = None,
               scale: tuple[float, float] | None = None) -> Iterator:
    """Yield the scene on its own grid: RGB bands selected, CRS given, 8-bit, mask kept; nothing resampled.

    The grid a scan's probability raster is written on. Arguments override ``source.options``.
    """
    with _open_raw(source, *_options(source, crs, bands, scale)) as (ds, _):
        yield ds


@contextlib.contextmanager
def _open_raw(source: ImagerySource, crs, bands, scale=None) -> Iterator:
    """Open the file or mosaic with RGB bands selected, a CRS and 8-bit pixels, without resampling: (ds, PixelScale)."""
    if source.kind == "xyz":
        with rasterio.open(xyz_vrt_xml(source)) as ds:
            yield ds, PixelScale("uint8", "none")
        return
    path = mosaic_path(source.parts) if source.kind == "mosaic" else str(source.path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # refused below, in one line
            ds = rasterio.open(path)
    except RasterioError as exc:
        raise UserError(f"not a readable raster ({str(exc).splitlines()[0][:120]})", path) from None
    with ds:
        _probe(ds, path)
        _check_georeference(ds, crs, path)
        the_crs = CRS.from_user_input(crs) if ds.crs is None else ds.crs
        chosen = choose_bands(ds.count, ds.colorinterp, bands, path)
        pixels = _pixel_scale(ds, path, chosen, scale)
        if ds.crs is not None and chosen == (1, 2, 3) and ds.count == 3 and pixels.rule == "none":
            yield ds, pixels
            return
        with rasterio.open(_band_vrt_xml(ds, path, chosen, the_crs, pixels)) as vrt:
            yield vrt, pixels


def _check_georeference(ds, crs, path: str) -> None:
    """Refuse, in one line naming the file, a raster that cannot be placed on the map."""
    if ds.transform.is_identity:
        if ds.gcps[0]:
            raise UserError("raster is georeferenced by ground control points only, not on a grid; warp it first "
                            "(e.g. gdalwarp -t_srs EPSG:xxxx IN OUT)", path)
        raise UserError("raster has no georeference at all (no geotransform: pixel positions only), which --crs "
                        "cannot supply; georeference it first (e.g. QGIS Georeferencer, or gdal_translate -a_ullr "
                        "ULX ULY LRX LRY -a_srs EPSG:xxxx)", path)
    if ds.crs is None and crs is None:
        raise UserError("raster has no CRS; pass --crs EPSG:xxxx", path)
    the_crs = ds.crs if ds.crs is not None else CRS.from_user_input(crs)
    left, bottom, right, top = ds.bounds
    lons, lats = (left, right), (bottom, top)  # a degree of slack for pixel edges past the poles / antimeridian
    inside = min(lons) >= -181.0 and max(lons) <= 361.0 and min(lats) >= -91.0 and max(lats) <= 91.0
    if the_crs.is_geographic and not inside:
        fix = "pass the raster's own CRS with --crs" if ds.crs is None else "fix its CRS (e.g. gdal_edit.py -a_srs)"
        raise UserError(f"raster's bounds ({left:g}, {bottom:g}, {right:g}, {top:g}) are not longitudes and "
                        f"latitudes although its CRS {the_crs.to_string()} is geographic; {fix}", path)


def _probe(ds, path: str) -> None:
    """Read the first and last pixel, so a truncated file fails here and not halfway through a run."""
    try:
        for row, col in ((0, 0), (ds.height - 1, ds.width - 1)):
            ds.read(1, window=Window(col, row, 1, 1))
    except RasterioError as exc:
        raise UserError(f"raster is truncated or corrupt ({str(exc).splitlines()[0][:120]})", path) from None


@contextlib.contextmanager
def open_source(
    source: ImagerySource,
    gsd: float | None = None,
    crs: str | None = None,
    bands: Sequence[int] | None = None,
    scale: tuple[float, float] | None = None,
) -> Iterator:
    """Yield a 3-band 8-bit dataset in a projected CRS at ``gsd`` m/px (native when None), for windowed reads.

    ``crs`` is only used for rasters without one; ``crs``, ``bands`` and ``scale`` override the
    source's :class:`ImageryOptions`. Pixels outside the source or under its mask read as 0 (nodata)
    and ``dataset_mask()`` is 0 there.
    """
    with _open_raw(source, *_options(source, crs, bands, scale)) as (ds, _):
        warp_crs = utm_crs_for(ds, source.path) if needs_utm(ds.crs) else None
        grid = _mosaic_grid(source, ds)
        target_gsd = float(gsd) if gsd else native_gsd(ds) if grid is None else grid.res
        if warp_crs is None and math.isclose(target_gsd, abs(ds.transform.a), rel_tol=1e-6) and math.isclose(
            target_gsd, abs(ds.transform.e), rel_tol=1e-6
        ):
            yield ds
            return
        dst_crs = warp_crs or ds.crs
        if grid is not None:  # tiles on differing grids: one UTM grid over their data
            dst_crs = CRS.from_user_input(grid.crs)
            transform, width, height = grid.snapped(target_gsd)
        else:
            transform, width, height = calculate_default_transform(
                ds.crs, dst_crs, ds.width, ds.height, *ds.bounds, resolution=target_gsd
            )
        coarser = target_gsd > native_gsd(ds) * 1.2
        with WarpedVRT(
            ds,
            crs=dst_crs,
            transform=transform,
            width=width,
            height=height,
            nodata=0,
            resampling=Resampling.average if coarser else Resampling.bilinear,
        ) as vrt:
            yield vrt


def _mosaic_grid(source: ImagerySource, ds):
    """The UTM grid of a mosaic of geographic or Web Mercator tiles on differing grids (io.tiles); else None."""
    if source.kind != "mosaic" or not needs_utm(ds.crs) or on_one_grid(source.parts):
        return None
    return mosaic_grid(source.parts)


def read_window(ds, window: Window, path) -> np.ndarray:
    """Read a (3, h, w) window; read errors (truncated data) become a UserError naming the file."""
    try:
        return ds.read((1, 2, 3), window=window, boundless=False)
    except RasterioError as exc:
        raise UserError(f"raster is truncated or corrupt ({str(exc).splitlines()[0][:120]})", path) from None


def read_mask(ds, window: Window, path) -> np.ndarray:
    """Where a window of an opened source has data (bool (h, w)): the dataset mask, which holds alpha and nodata."""
    try:
        return ds.dataset_mask(window=window) > 0
    except RasterioError as exc:
        raise UserError(f"raster is truncated or corrupt ({str(exc).splitlines()[0][:120]})", path) from None


def file_count(source: ImagerySource) -> int:
    """How many files make the scene: its tiles (GeoTIFF mosaic, web-map folder) or 1."""
    return len(source.parts) or len(source.tiles) or 1


def scenes_line(scenes: Sequence[tuple[str, int, float, float]], shown: int = 6) -> str:
    """One line: how many files formed how many scenes, and each scene's size in metres.

    ``scenes``: (name, files, width in metres, height in metres) per scene; after ``shown`` scenes
    the line gives a count.
    """
    files = sum(n for _, n, _, _ in scenes)
    sizes = [f"{name} {w:,.0f} x {h:,.0f} m" for name, _, w, h in scenes[:shown]]
    if len(scenes) > shown:
        sizes.append(f"and {len(scenes) - shown} more")
    return (f"{files} file{'s' if files != 1 else ''} formed {len(scenes)} scene{'s' if len(scenes) != 1 else ''}: "
            + ", ".join(sizes))
