"""Scan masks: building footprints or areas of interest that a scan's windows must lie near (``scan --mask``).

The one reader of mask files. It accepts what :mod:`schoolvision.io.schools` accepts, through the same
readers and with the same CRS rule (a vector file's geometries are in its own CRS, a file without one
is EPSG:4326; coordinates in a table are WGS84 longitude/latitude), because the open building datasets
come in those forms: Google's Open Buildings as CSV with ``latitude``, ``longitude`` and a WKT polygon
column ``geometry``, Microsoft's Global ML Building Footprints as GeoJSON; OSM extracts as GeoPackage,
shapefile or GeoParquet. Any geometry type is kept (footprints, points, areas, lines) and attributes
are dropped: a country holds millions of footprints, and only where they are matters. Geometries stay
in the file's own CRS; the scan reprojects only the ones near each scene.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
from rasterio.crs import CRS

from schoolvision.errors import UserError
from schoolvision.io.schools import (
    PARQUET_SUFFIXES,
    TABLE_SUFFIXES,
    _has_geometry,
    _read_csv,
    _read_parquet,
    _read_vector,
    _table_geometry,
)

TABLE_HINT = ("name them longitude,latitude (WGS84 degrees) or hold WKT geometries in a column named wkt or geometry, "
              "as Google's Open Buildings CSV files do")
"""What to do with a mask table whose coordinate columns are not found."""


def read_mask(path: str | Path, layer: str | None = None) -> gpd.GeoSeries:
    """The geometries of a mask file, in the file's CRS (EPSG:4326 for tables and files without one).

    ``attrs["source"]`` of the result says how the file was read (path, layer, CRS, columns used,
    rows skipped, features), for provenance in ``scan.json``.

    Args:
        path: any OGR vector file (GeoJSON, GeoPackage, shapefile, FlatGeobuf ...), GeoParquet (needs
            pyarrow), or a table (CSV ...) with a WKT geometry column or longitude/latitude columns.
        layer: the layer of a multi-layer file (GeoPackage, KML); required when it has several.

    Returns:
        The non-empty geometries, index 0..n-1.

    Raises:
        UserError: the file is missing or unreadable, has several layers and no ``layer`` (or no layer
            of that name), is a table without usable coordinates, or holds no geometry.
    """
    path = Path(path)
    if not path.exists():
        raise UserError("mask file does not exist", path)
    if path.is_dir():
        raise UserError("mask is a folder; give one vector file (GeoJSON, GeoPackage, GeoParquet, CSV ...)", path)
    suffix = path.suffix.lower()
    if layer is not None and (suffix in TABLE_SUFFIXES or suffix in PARQUET_SUFFIXES):
        raise UserError(f"--mask-layer {layer!r}: a {suffix} file has no layers", path)
    source: dict = {"path": str(path.resolve()), "layer": layer}
    if suffix in TABLE_SUFFIXES:
        frame = _read_csv(path)
    elif suffix in PARQUET_SUFFIXES:
        frame = _read_parquet(path)
    else:
        frame, source["layer"] = _read_vector(path, layer, "--mask-layer", columns=[])  # geometry only
        if not _has_geometry(frame):  # a table layer: its coordinate columns are needed after all
            frame, _ = _read_vector(path, source["layer"], "--mask-layer")
    if _has_geometry(frame):
        geoms = frame.geometry
        crs = frame.crs if frame.crs is not None else CRS.from_epsg(4326)
    else:
        gdf, used = _table_geometry(frame, path, None, hint=TABLE_HINT)
        source.update(used)
        geoms, crs = gdf.geometry, gdf.crs
    geoms = geoms[geoms.notna() & ~geoms.is_empty]
    if len(geoms) == 0:
        raise UserError("mask file holds no geometry", path)
    out = gpd.GeoSeries(geoms.to_numpy(), crs=crs)
    out.attrs["source"] = {**source, "crs": CRS.from_user_input(crs).to_string(), "features": len(out)}
    return out
