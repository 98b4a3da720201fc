"""Imagery sources: GeoTIFF files, folders of them, and XYZ tile folders, read at a target GSD.

Every source is opened as one rasterio dataset in a *projected* CRS at ``gsd`` metres per pixel,
so chips, scans and explanations share one pixel grid whatever the input looked like:

- projected rasters at their native GSD are read as they are (pixels unchanged);
- projected rasters at another GSD go through a resampled warped view in their own CRS;
- geographic rasters (EPSG:4326) and Web Mercator (EPSG:3857, which distorts scale) go through a
  warped view in the local UTM zone of the raster's centre;
- an XYZ tile folder (``z-x-y.png`` or ``z/x/y.png``) becomes one VRT mosaic in EPSG:3857
  (georeferenced with ``mercantile``; missing tiles are nodata), then is warped like the above.

Pixels must be 8-bit (uint8), as chips are stored as 8-bit RGB. Band rule: 3 bands are RGB. RGBA (4 bands,
the 4th flagged alpha) uses bands 1-3. Any other band count needs ``bands=(r, g, b)`` (``--bands``);
``--bands 1,1,1`` turns a grey band into RGB.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, transform_bounds
from rasterio.windows import Window

from schoolvision.errors import UserError
from schoolvision.io.crs import utm_crs

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
TILE_SUFFIXES = (".png", ".jpg", ".jpeg")
_FLAT_TILE = re.compile(r"^(\d+)-(\d+)-(\d+)$")


@dataclass(frozen=True)
class ImagerySource:
    """One scene: a raster file, or an XYZ tile folder read as a single mosaic."""

    name: str
    path: Path
    kind: str = "raster"  # "raster" | "xyz"
    tiles: tuple[tuple[int, int, int, str], ...] = field(default=(), repr=False)  # (z, x, y, file)


def list_sources(paths: Sequence[str | Path]) -> list[ImagerySource]:
    """Expand files and folders into imagery sources, sorted by name, with unique names.

    A folder holding GeoTIFFs gives one source per file; a folder holding only PNG/JPEG tiles is
    one XYZ mosaic (names must parse as ``z-x-y`` or ``z/x/y``, else a UserError names the file).
    """
    found: list[ImagerySource] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise UserError("imagery path does not exist", path)
        if path.is_file():
            found.append(ImagerySource(path.stem, path))
            continue
        rasters = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES)
        if rasters:
            found.extend(ImagerySource(p.stem, p) for p in rasters)
            continue
        tiles = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TILE_SUFFIXES)
        if not tiles:
            raise UserError("folder holds no GeoTIFF (.tif) nor XYZ tiles (z-x-y.png|jpg)", path)
        found.append(ImagerySource(path.name, path, "xyz", _parse_tiles(path, tiles)))
    if not found:
        raise UserError("no imagery given; pass --imagery FILE_OR_FOLDER")
    names: dict[str, int] = {}
    unique = []
    for src in sorted(found, key=lambda s: (s.name, str(s.path))):
        n = names.get(src.name, 0)
        names[src.name] = n + 1
        unique.append(src if n == 0 else ImagerySource(f"{src.name}_{n}", src.path, src.kind, src.tiles))
    return unique


def _parse_tiles(folder: Path, tiles: list[Path]) -> tuple[tuple[int, int, int, str], ...]:
    parsed = []
    for tile in tiles:
        rel = tile.relative_to(folder).with_suffix("")
        m = _FLAT_TILE.match(rel.name) if len(rel.parts) == 1 else None
        if m:
            z, x, y = (int(v) for v in m.groups())
        elif len(rel.parts) >= 3 and all(p.isdigit() for p in rel.parts[-3:]):
            z, x, y = (int(v) for v in rel.parts[-3:])
        else:
            raise UserError("XYZ tile name does not parse; expected {z}-{x}-{y}.png|jpg or {z}/{x}/{y}.png", tile)
        if not (x < 2**z and y < 2**z):
            raise UserError(f"XYZ tile {z}/{x}/{y} does not exist at zoom {z}", tile)
        parsed.append((z, x, y, str(tile.resolve())))
    zooms = sorted({t[0] for t in parsed})
    if len(zooms) > 1:
        raise UserError(f"XYZ folder mixes zoom levels {zooms}; put one zoom level per folder", folder)
    return tuple(sorted(parsed))


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


def _band_vrt_xml(ds, path: str, bands: Sequence[int], crs: CRS) -> str:
    """A VRT selecting ``bands`` of ``ds`` (and giving it ``crs`` when the file has none)."""
    t = ds.transform
    dtype = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "float32": "Float32"}.get(ds.dtypes[0], "Float64")
    nodata = "" if ds.nodata is None else f"<NoDataValue>{ds.nodata!r}</NoDataValue>"
    bx, by = ds.block_shapes[0][1], ds.block_shapes[0][0]
    body = "".join(
        f'<VRTRasterBand dataType="{dtype}" band="{i}">{nodata}'
        f'<SimpleSource><SourceFilename relativeToVRT="0">{escape(path)}</SourceFilename>'
        f'<SourceBand>{b}</SourceBand><SourceProperties RasterXSize="{ds.width}" RasterYSize="{ds.height}" '
        f'DataType="{dtype}" BlockXSize="{bx}" BlockYSize="{by}"/>'
        f'<SrcRect xOff="0" yOff="0" xSize="{ds.width}" ySize="{ds.height}"/>'
        f'<DstRect xOff="0" yOff="0" xSize="{ds.width}" ySize="{ds.height}"/></SimpleSource></VRTRasterBand>'
        for i, b in enumerate(bands, start=1)
    )
    return (
        f'<VRTDataset rasterXSize="{ds.width}" rasterYSize="{ds.height}"><SRS>{escape(crs.to_wkt())}</SRS>'
        f"<GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>{body}</VRTDataset>"
    )


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


def utm_crs_for(ds) -> CRS:
    """The UTM zone of the raster's centre."""
    w, s, e, n = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    return utm_crs((w + e) / 2, (s + n) / 2)


def source_info(source: ImagerySource, crs: str | None = None, bands: Sequence[int] | None = None) -> dict:
    """CRS, native GSD and EPSG:4326 bounds of a source; checks it opens (CRS, bands) without reading pixels."""
    with _open_raw(source, crs, bands) as ds:
        return {
            "crs": ds.crs.to_string(),
            "native_gsd": native_gsd(ds),
            "bounds_4326": transform_bounds(ds.crs, "EPSG:4326", *ds.bounds),
        }


@contextlib.contextmanager
def _open_raw(source: ImagerySource, crs, bands) -> Iterator:
    """Open the file or mosaic with RGB bands selected and a CRS, without resampling."""
    if source.kind == "xyz":
        with rasterio.open(xyz_vrt_xml(source)) as ds:
            yield ds
        return
    path = str(source.path)
    try:
        ds = rasterio.open(path)
    except RasterioError as exc:
        raise UserError(f"not a readable raster ({str(exc).splitlines()[0][:120]})", path) from None
    with ds:
        _probe(ds, path)
        if ds.crs is None and crs is None:
            raise UserError("raster has no CRS; pass --crs EPSG:xxxx", path)
        the_crs = CRS.from_user_input(crs) if ds.crs is None else ds.crs
        chosen = choose_bands(ds.count, ds.colorinterp, bands, path)
        if ds.dtypes[chosen[0] - 1] != "uint8":
            raise UserError(f"raster holds {ds.dtypes[0]} pixels but 8-bit RGB is needed; convert it, e.g. "
                            "gdal_translate -ot Byte -scale IN OUT", path)
        if ds.crs is not None and chosen == (1, 2, 3) and ds.count == 3:
            yield ds
            return
        with rasterio.open(_band_vrt_xml(ds, path, chosen, the_crs)) as vrt:
            yield vrt


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
) -> Iterator:
    """Yield a 3-band dataset in a projected CRS at ``gsd`` m/px (native when None), for windowed reads.

    ``crs`` is only used for rasters without one. Pixels outside the source read as 0 (nodata).
    """
    with _open_raw(source, crs, bands) as ds:
        warp_crs = utm_crs_for(ds) if needs_utm(ds.crs) else None
        target_gsd = float(gsd) if gsd else native_gsd(ds)
        if warp_crs is None and math.isclose(target_gsd, abs(ds.transform.a), rel_tol=1e-6) and math.isclose(
            target_gsd, abs(ds.transform.e), rel_tol=1e-6
        ):
            yield ds
            return
        dst_crs = warp_crs or ds.crs
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


def read_window(ds, window: Window, path) -> np.ndarray:
    """Read a (3, h, w) window; read errors (truncated data) become a UserError naming the file."""
    try:
        return ds.read((1, 2, 3), window=window, boundless=False)
    except RasterioError as exc:
        raise UserError(f"raster is truncated or corrupt ({str(exc).splitlines()[0][:120]})", path) from None
