"""School labels: read, validate and rasterise school footprints.

The one reader of school labels (``chips --schools``, ``scan --schools`` and the library), with one
CRS rule: a vector file's geometries are in its own CRS, and a file without one is EPSG:4326
(RFC 7946); coordinates in a table (CSV columns or a WKT column) are WGS84 longitude/latitude.

Accepted: any OGR vector file (GeoJSON, GeoPackage, shapefile, KML, FlatGeobuf ...; a file with
several layers needs ``layer``), GeoParquet (needs ``pyarrow``), and tables (CSV, TSV, a Parquet or
OGR layer without geometry) with longitude/latitude columns found by name or a WKT geometry column.
``where`` keeps the features of one attribute value (``amenity=school``), so an OSM extract that
holds every building can be used as it is.

Points become a disc of ``point_buffer_m`` metres, drawn in their local UTM zone, because a point
says where a school is but not how big it is. Invalid polygons (self-intersections, as in
hand-drawn OSM exports) are repaired with ``make_valid``.
"""

from __future__ import annotations

import csv
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize
from shapely import from_wkt, make_valid
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from schoolvision.errors import UserError
from schoolvision.io.crs import utm_epsg

POINT_BUFFER_M = 40.0
"""Default radius (m) of the disc that stands for a school given as a point: a typical compound."""

TABLE_SUFFIXES = (".csv", ".tsv", ".txt")
"""Files read as delimited text tables (delimiter sniffed: comma, semicolon, tab or bar)."""

PARQUET_SUFFIXES = (".parquet", ".geoparquet", ".pq")

LONLAT_NAMES: tuple[tuple[str, str], ...] = (
    ("longitude", "latitude"), ("lon", "lat"), ("lng", "lat"), ("long", "lat"), ("x", "y"),
    ("decimallongitude", "decimallatitude"), ("lon_dd", "lat_dd"), ("longitude_dd", "latitude_dd"),
)
"""(longitude, latitude) column names tried in order, case-insensitive; then one column ending in
``longitude`` with one ending in ``latitude`` (``gps_longitude``, ``school_latitude`` ...)."""

WKT_NAMES = ("wkt", "geometry", "geom", "the_geom", "wkt_geom", "shape")
"""Names of a WKT geometry column in a table, case-insensitive."""

NAME_COLUMNS = ("name", "school_name", "schoolname", "name_of_school", "school")
"""Columns that give a school's name, case-insensitive, first found wins (Giga lists use ``school_name``)."""

_ALLOWED = {"Point", "MultiPoint", "Polygon", "MultiPolygon"}
_WHERE = re.compile(r"\s*([^=!]+?)\s*(!=|=)(.*)", re.S)


def read_schools(path: str | Path, point_buffer_m: float | None = POINT_BUFFER_M, *, layer: str | None = None,
                 where: str | None = None,
                 lonlat_columns: str | Sequence[str] | None = None,
                 id_column: str | Sequence[str] | None = None) -> gpd.GeoDataFrame:
    """School footprints in EPSG:4326, with columns ``school_id``, ``name`` (and ``scene`` if given).

    The one reader of school files: ``chips --schools`` and ``scan --schools`` accept the same files
    with the same options. ``attrs["source"]`` of the result says how the file was read (layer,
    filter, coordinate columns, rows skipped), for provenance.

    Args:
        path: any OGR vector file of Points or Polygons (no CRS means EPSG:4326), GeoParquet, or a
            table (CSV ...) with WGS84 longitude/latitude columns or a WKT geometry column.
        point_buffer_m: radius of the disc a point becomes (chips need an area); None keeps points
            as points (a scan measures distances to them).
        layer: the layer of a multi-layer file (GeoPackage, KML); required when it has several.
        where: attribute filter ``KEY=VALUE``, ``KEY=V1,V2`` (any of them) or ``KEY!=VALUE``,
            applied before the geometries are checked.
        lonlat_columns: ``"LON,LAT"`` or (lon, lat) column names of a table; default: found by
            name (:data:`LONLAT_NAMES`).
        id_column: keep the file's own ids as ``source_id`` (text): a name must be a column of the
            file (any case); of a sequence of names the first found (none found: no ``source_id``).
            ``attrs["source"]["id_column"]`` says which column it was.

    Returns:
        One row per school; polygons repaired, empty geometries dropped, missing names filled.
        Table rows with empty, non-numeric or out-of-range coordinates are skipped with a warning.

    Raises:
        UserError: the file is missing or unreadable, has several layers and no ``layer`` (or no
            layer of that name), the filter names no column or keeps nothing, a table has no
            usable coordinates, or the file holds no school or other geometry types.
    """
    path = Path(path)
    lonlat = parse_lonlat_columns(lonlat_columns)
    condition = parse_where(where)
    if not path.exists():
        raise UserError("school labels file does not exist", path)
    suffix = path.suffix.lower()
    if layer is not None and (suffix in TABLE_SUFFIXES or suffix in PARQUET_SUFFIXES):
        raise UserError(f"--schools-layer {layer!r}: a {suffix} file has no layers", path)
    source: dict = {"path": str(path.resolve()), "layer": layer, "where": where}
    if suffix in TABLE_SUFFIXES:
        frame = _read_csv(path)
    elif suffix in PARQUET_SUFFIXES:
        frame = _read_parquet(path)
    else:
        frame, source["layer"] = _read_vector(path, layer)
    if condition is not None:
        frame = _filter(frame, condition, where, path)
    if _has_geometry(frame):
        if lonlat is not None:
            raise UserError(f"--lonlat-columns is for tables (CSV); this file has its own geometry "
                            f"({_geometry_crs_text(frame)})", path)
        gdf = frame
        source["crs"] = _geometry_crs_text(frame)
    else:
        gdf, used = _table_geometry(frame, path, lonlat)
        source.update(used, crs="EPSG:4326")
    source["id_column"] = _id_column(gdf, id_column, path)
    if source["id_column"] is not None:
        gdf = gdf.assign(source_id=[_as_text(v) for v in gdf[source["id_column"]]])
    out = _footprints(gdf, path, point_buffer_m)
    out.attrs["source"] = {**source, "schools": len(out)}
    return out


def parse_lonlat_columns(value: str | Sequence[str] | None) -> tuple[str, str] | None:
    """``"LON,LAT"`` (or a pair) as a (lon, lat) tuple; None stays None.

    Raises:
        UserError: not two non-empty names.
    """
    if value is None:
        return None
    parts = [p.strip() for p in (value.split(",") if isinstance(value, str) else value)]
    if len(parts) != 2 or not all(parts):
        raise UserError(f"--lonlat-columns must be two column names LON,LAT (e.g. longitude,latitude), got {value!r}")
    return parts[0], parts[1]


def parse_where(text: str | None) -> tuple[str, bool, list[str]] | None:
    """``KEY=VALUE[,VALUE...]`` or ``KEY!=VALUE[,VALUE...]`` as (key, negated, values); None stays None.

    Raises:
        UserError: the text has no ``=`` or no key.
    """
    if text is None:
        return None
    m = _WHERE.fullmatch(text)
    if not m or not m.group(1).strip():
        raise UserError(f"--schools-where must look like KEY=VALUE, KEY=V1,V2 or KEY!=VALUE "
                        f"(e.g. amenity=school), got {text!r}")
    return m.group(1).strip(), m.group(2) == "!=", [v.strip() for v in m.group(3).split(",")]


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:160]


def _listing(names: Sequence[str], limit: int = 25) -> str:
    """Names as one line, the first ``limit`` of them."""
    names = [str(n) for n in names]
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _read_vector(path: Path, layer: str | None, option: str = "--schools-layer",
                 **read: object) -> tuple[pd.DataFrame, str | None]:
    """The features of one layer (a DataFrame when the layer has no geometry) and the layer's name.

    ``option`` names the layer option in messages (``--mask-layer`` for a scan mask); ``read`` goes to
    ``gpd.read_file`` (e.g. ``columns=[]``: geometry only).
    """
    try:
        layers = pyogrio.list_layers(path)
    except Exception as exc:  # pyogrio raises several types for unreadable input
        raise UserError(f"not a valid GeoJSON/vector file ({_first_line(exc)})", path) from None
    names = [str(name) for name, _ in layers]
    spatial = [str(name) for name, geom in layers if geom is not None]
    if layer is not None:
        if layer not in names:
            raise UserError(f"{option} {layer!r} is not a layer of this file; its layers: {_listing(names)}", path)
        chosen = layer
    else:
        candidates = spatial or names
        if len(candidates) > 1:
            raise UserError(f"holds {len(candidates)} layers ({_listing(candidates)}); choose one with "
                            f"{option} NAME", path)
        chosen = candidates[0] if candidates else None
    try:
        frame = gpd.read_file(path, layer=chosen if len(names) > 1 else None, **read)
    except Exception as exc:
        raise UserError(f"not a valid GeoJSON/vector file ({_first_line(exc)})", path) from None
    return frame, chosen


def _read_parquet(path: Path) -> pd.DataFrame:
    """GeoParquet as a GeoDataFrame; a Parquet file without geometry metadata as a plain table."""
    try:
        import pyarrow  # noqa: F401  (geopandas' Parquet engine, optional)
    except ImportError:
        raise UserError("reading Parquet needs pyarrow (pip install pyarrow), or convert the file to "
                        "GeoPackage or CSV", path) from None
    try:
        return gpd.read_parquet(path)
    except ValueError as exc:
        if "geo" not in str(exc).lower():
            raise UserError(f"not a valid (Geo)Parquet file ({_first_line(exc)})", path) from None
    except Exception as exc:
        raise UserError(f"not a valid (Geo)Parquet file ({_first_line(exc)})", path) from None
    try:
        return pd.read_parquet(path)
    except Exception as exc:
        raise UserError(f"not a valid Parquet file ({_first_line(exc)})", path) from None


def _read_csv(path: Path) -> pd.DataFrame:
    """A delimited text table as strings (delimiter sniffed; UTF-8, with or without BOM, else Latin-1)."""
    for encoding in ("utf-8-sig", "latin-1"):
        try:
            with open(path, encoding=encoding, newline="") as f:
                sample = f.read(65536)
            if not sample.strip():
                raise UserError("the CSV file is empty", path)
            try:
                sep = "\t" if path.suffix.lower() == ".tsv" else csv.Sniffer().sniff(sample, ",;\t|").delimiter
            except csv.Error:
                sep = ","
            return pd.read_csv(path, sep=sep, dtype=str, encoding=encoding, skipinitialspace=True)
        except UnicodeDecodeError:
            continue
        except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error) as exc:
            raise UserError(f"not a readable CSV table ({_first_line(exc)})", path) from None
    raise UserError("not a readable CSV table (unknown text encoding)", path)


def _has_geometry(frame: pd.DataFrame) -> bool:
    if not isinstance(frame, gpd.GeoDataFrame):
        return False
    try:
        frame.geometry  # noqa: B018  (raises when the frame has no active geometry column)
    except AttributeError:
        return False
    return True


def _geometry_crs_text(frame: gpd.GeoDataFrame) -> str:
    return frame.crs.to_string() if frame.crs is not None else "no CRS: EPSG:4326"


def _column(columns: Sequence, name: str) -> str | None:
    """``name`` among ``columns``: exact, else the one case-insensitive match."""
    columns = [str(c) for c in columns]
    if name in columns:
        return name
    hits = [c for c in columns if c.strip().lower() == name.strip().lower()]
    return hits[0] if len(hits) == 1 else None


def _id_column(frame: pd.DataFrame, id_column: str | Sequence[str] | None, path: Path) -> str | None:
    """The column of ``frame`` holding the file's own ids (see :func:`read_schools`), or None."""
    if id_column is None:
        return None
    columns = [c for c in frame.columns if not (_has_geometry(frame) and c == frame.geometry.name)]
    if isinstance(id_column, str):
        found = _column(columns, id_column)
        if found is None:
            raise UserError(f"no id column {id_column!r}; columns: {_listing(columns)}", path)
        return found
    return next((c for n in id_column if (c := _column(columns, n)) is not None), None)


def _as_text(value) -> str:
    """An attribute value as the text a ``--schools-where`` value is compared with (1.0 -> "1")."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _filter(frame: pd.DataFrame, condition: tuple[str, bool, list[str]], where: str, path: Path) -> pd.DataFrame:
    """The rows that satisfy ``--schools-where``."""
    key, negated, values = condition
    columns = [c for c in frame.columns if not (_has_geometry(frame) and c == frame.geometry.name)]
    column = _column(columns, key)
    if column is None:
        raise UserError(f"--schools-where {where!r}: no column {key!r}; columns: {_listing(columns)}", path)
    text = frame[column].map(_as_text)
    hit = text.isin(values).to_numpy()
    out = frame[~hit if negated else hit]
    if len(out) == 0:
        seen = text.value_counts().index[:10]
        raise UserError(f"--schools-where {where!r} keeps none of {len(frame)} features (column {column} holds "
                        f"{_listing([repr(v) for v in seen])})", path)
    return out


def _normalised(name) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def find_lonlat_columns(columns: Sequence) -> tuple[str, str] | None:
    """The (longitude, latitude) columns of a table by name (:data:`LONLAT_NAMES`), or None."""
    by_norm: dict[str, list[str]] = {}
    for c in columns:
        by_norm.setdefault(_normalised(c), []).append(str(c))
    for lon, lat in LONLAT_NAMES:
        if len(by_norm.get(lon, [])) == 1 and len(by_norm.get(lat, [])) == 1:
            return by_norm[lon][0], by_norm[lat][0]
    lons = [str(c) for c in columns if _normalised(c).endswith("longitude")]
    lats = [str(c) for c in columns if _normalised(c).endswith("latitude")]
    return (lons[0], lats[0]) if len(lons) == 1 and len(lats) == 1 else None


def _numbers(values: pd.Series) -> pd.Series:
    """Numbers from text, decimal commas included ("32,5"); anything else NaN."""
    text = values.astype("string").str.strip()
    text = text.where(~text.str.fullmatch(r"[-+]?\d+,\d+", na=False), text.str.replace(",", ".", regex=False))
    return pd.to_numeric(text, errors="coerce").astype(float)


def _table_geometry(frame: pd.DataFrame, path: Path, lonlat: tuple[str, str] | None,
                    hint: str = "name them with --lonlat-columns LON,LAT") -> tuple[gpd.GeoDataFrame, dict]:
    """Points from longitude/latitude columns, or geometries from a WKT column, in EPSG:4326.

    ``hint`` ends the message of a table without usable columns (what the user can do).
    """
    columns = [str(c) for c in frame.columns]
    if lonlat is not None:
        found = [_column(columns, name) for name in lonlat]
        missing = [name for name, col in zip(lonlat, found) if col is None]
        if missing:
            raise UserError(f"--lonlat-columns: no column {', '.join(map(repr, missing))}; "
                            f"columns: {_listing(columns)}", path)
        return _points(frame, found[0], found[1], path)
    pair = find_lonlat_columns(columns)
    wkt = next((c for name in WKT_NAMES for c in columns if _normalised(c) == name), None)
    if wkt is not None:
        text = [v.strip() if isinstance(v, str) and v.strip() else None for v in frame[wkt]]
        geoms = from_wkt(np.array(text, dtype=object), on_invalid="ignore")
        if pair is None or any(g is not None for g in geoms):
            return _wkt(frame, wkt, geoms, path)
    if pair is not None:
        return _points(frame, pair[0], pair[1], path)
    raise UserError(f"no longitude/latitude or WKT geometry column found (columns: {_listing(columns)}); "
                    f"{hint}", path)


def _skipped(path: Path, n_bad: int, n: int, what: str) -> None:
    if n_bad:
        warnings.warn(f"{path}: skipped {n_bad} of {n} rows with {what}", stacklevel=5)


def _points(frame: pd.DataFrame, lon: str, lat: str, path: Path) -> tuple[gpd.GeoDataFrame, dict]:
    """Points from WGS84 longitude/latitude columns; rows without usable coordinates skipped."""
    x, y = _numbers(frame[lon]), _numbers(frame[lat])
    numeric = x.notna() & y.notna()
    ok = numeric & x.between(-180, 180) & y.between(-90, 90) & ~((x == 0) & (y == 0))
    if not ok.any():
        hint = ""
        if numeric.any():
            i = numeric.to_numpy().argmax()
            hint = (f"; values such as {x.iloc[i]:g}, {y.iloc[i]:g} are not longitude/latitude degrees "
                    "(projected coordinates? export the table in EPSG:4326)")
        raise UserError(f"no row has WGS84 longitude/latitude in columns {lon}, {lat}{hint} "
                        f"(columns: {_listing(list(frame.columns))})", path)
    _skipped(path, int((~ok).sum()), len(frame),
             f"empty, non-numeric, out-of-range or 0,0 coordinates in columns {lon}, {lat}")
    ok = ok.to_numpy()
    gdf = gpd.GeoDataFrame(frame[ok].reset_index(drop=True),
                           geometry=gpd.points_from_xy(x[ok], y[ok]), crs="EPSG:4326")
    return gdf, {"lonlat_columns": [lon, lat], "skipped_rows": int((~ok).sum())}


def _wkt(frame: pd.DataFrame, column: str, geoms: np.ndarray, path: Path) -> tuple[gpd.GeoDataFrame, dict]:
    """Geometries of a WKT column (WGS84); rows with empty, unreadable or out-of-range WKT skipped."""
    ok = np.array([g is not None and not g.is_empty for g in geoms])
    for i in np.flatnonzero(ok):
        minx, miny, maxx, maxy = geoms[i].bounds
        ok[i] = -180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90
    if not ok.any():
        raise UserError(f"no row of WKT column {column} holds a WGS84 geometry "
                        f"(columns: {_listing(list(frame.columns))})", path)
    _skipped(path, int((~ok).sum()), len(frame), f"empty, unreadable or out-of-range WKT in column {column}")
    gdf = gpd.GeoDataFrame(frame[ok].drop(columns=[column]).reset_index(drop=True), geometry=list(geoms[ok]),
                           crs="EPSG:4326")
    return gdf, {"wkt_column": column, "skipped_rows": int((~ok).sum())}


def _footprints(gdf: gpd.GeoDataFrame, path: Path, point_buffer_m: float | None) -> gpd.GeoDataFrame:
    """Validated school footprints in EPSG:4326: ``school_id``, ``name`` (and ``scene``)."""
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty] if len(gdf) else gdf
    if len(gdf) == 0:
        raise UserError("school labels file holds no school geometries", path)
    bad = sorted(set(gdf.geom_type) - _ALLOWED)
    if bad:
        raise UserError(f"school labels must be Points or Polygons, found {', '.join(bad)}", path)
    if gdf.crs is None:
        gdf = gdf.set_crs("EPSG:4326")
    gdf = gdf.to_crs("EPSG:4326")
    geoms = [_polygonal(g) for g in gdf.geometry]
    points = np.array([g.geom_type in ("Point", "MultiPoint") for g in gdf.geometry])
    name_column = next((c for n in NAME_COLUMNS if (c := _column(gdf.columns, n)) is not None), None)
    names = gdf[name_column] if name_column is not None else [None] * len(gdf)
    out = gpd.GeoDataFrame(
        {
            "school_id": np.arange(len(gdf)),
            "name": [n if isinstance(n, str) and n else f"school_{i:04d}" for i, n in enumerate(names)],
        },
        geometry=[g if g is not None else gdf.geometry.iloc[i] for i, g in enumerate(geoms)],
        crs="EPSG:4326",
    )
    for column in ("scene", "source_id"):
        if column in gdf.columns:
            out[column] = gdf[column].to_numpy()
    if points.any() and point_buffer_m is not None:
        out.loc[points, "geometry"] = _buffer_points(out.loc[points], point_buffer_m).to_numpy()
    out = out[~out.geometry.is_empty].reset_index(drop=True)
    if len(out) == 0:
        raise UserError("no usable school geometry after repairing invalid polygons", path)
    return out


def _polygonal(geom: BaseGeometry) -> BaseGeometry | None:
    """Repair a polygon and keep only its polygonal parts; points are buffered later (None)."""
    if geom.geom_type in ("Point", "MultiPoint"):
        return None
    if not geom.is_valid:
        geom = make_valid(geom)
    if geom.geom_type == "GeometryCollection":
        parts = [g for g in geom.geoms if isinstance(g, (Polygon, MultiPolygon))]
        polys = [p for g in parts for p in (g.geoms if isinstance(g, MultiPolygon) else [g])]
        geom = MultiPolygon(polys) if polys else Polygon()
    return geom


def _buffer_points(points: gpd.GeoDataFrame, radius_m: float) -> gpd.GeoSeries:
    """Buffer points by ``radius_m`` metres, each group in its own UTM zone (Web Mercator at the poles)."""
    result = gpd.GeoSeries(index=points.index, crs="EPSG:4326", dtype="geometry")
    cent = points.geometry.representative_point()
    zones = {}
    for idx, p in cent.items():
        zones.setdefault(utm_epsg(p.x, p.y) or 3857, []).append(idx)
    for code, idxs in zones.items():
        sub = points.geometry.loc[idxs].to_crs(f"EPSG:{code}").buffer(radius_m, quad_segs=16)
        result.loc[idxs] = sub.to_crs("EPSG:4326")
    return result


def footprint_mask(schools: gpd.GeoDataFrame, crs, transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise school footprints onto a grid: True where a pixel centre lies inside a school."""
    if len(schools) == 0:
        return np.zeros(shape, dtype=bool)
    geoms = schools.to_crs(CRS.from_user_input(crs)).geometry
    geoms = [g for g in geoms if g is not None and not g.is_empty]
    if not geoms:
        return np.zeros(shape, dtype=bool)
    return rasterize(geoms, out_shape=shape, transform=transform, fill=0, default_value=1,
                     all_touched=False, dtype="uint8").astype(bool)
