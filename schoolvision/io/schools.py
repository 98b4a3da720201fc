"""School labels: read, validate and rasterise school footprints.

Labels come as GeoJSON (or any OGR vector file) of Points or Polygons in any CRS; a file without a
CRS is EPSG:4326 (RFC 7946). Points become a disc of ``point_buffer_m`` metres, drawn in their
local UTM zone, because a point says where a school is but not how big it is. Invalid polygons
(self-intersections, as in hand-drawn OSM exports) are repaired with ``make_valid``.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize
from shapely import make_valid
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from schoolvision.errors import UserError
from schoolvision.io.crs import utm_epsg

POINT_BUFFER_M = 40.0
"""Default radius (m) of the disc that stands for a school given as a point: a typical compound."""

_ALLOWED = {"Point", "MultiPoint", "Polygon", "MultiPolygon"}


def read_schools(path: str | Path, point_buffer_m: float | None = POINT_BUFFER_M) -> gpd.GeoDataFrame:
    """School footprints in EPSG:4326, with columns ``school_id``, ``name`` (and ``scene`` if given).

    The one reader of school files: ``chips --schools`` and ``scan --schools`` accept the same files.

    Args:
        path: GeoJSON or any OGR vector file of Points or Polygons; no CRS means EPSG:4326 (RFC 7946).
        point_buffer_m: radius of the disc a point becomes (chips need an area); None keeps points
            as points (a scan measures distances to them).

    Returns:
        One row per school; polygons repaired, empty geometries dropped, missing names filled.

    Raises:
        UserError: the file is missing, unreadable, holds no school or holds other geometry types.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("school labels file does not exist", path)
    try:
        gdf = gpd.read_file(path)
    except Exception as exc:  # pyogrio raises several types for unreadable input
        raise UserError(f"not a valid GeoJSON/vector file ({str(exc).splitlines()[0][:120]})", path) from None
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
    names = gdf["name"] if "name" in gdf.columns else [None] * len(gdf)
    out = gpd.GeoDataFrame(
        {
            "school_id": np.arange(len(gdf)),
            "name": [n if isinstance(n, str) and n else f"school_{i:04d}" for i, n in enumerate(names)],
        },
        geometry=[g if g is not None else gdf.geometry.iloc[i] for i, g in enumerate(geoms)],
        crs="EPSG:4326",
    )
    if "scene" in gdf.columns:
        out["scene"] = gdf["scene"].to_numpy()
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
