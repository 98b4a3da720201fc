"""Where metres are: the one UTM-zone lookup of the project.

Reading imagery in a geographic CRS, buffering school points and measuring candidate distances all
need a metric CRS; each asks :func:`utm_crs` for the WGS 84 UTM zone at a point, so the three
never disagree about which zone a place is in.
"""

from __future__ import annotations

import functools

from pyproj.database import query_utm_crs_info
from rasterio.crs import CRS

from schoolvision.errors import UserError


@functools.cache
def _utm_zones() -> tuple:
    """Every WGS 84 UTM zone with its area of use, from PROJ's database (queried once: a query takes ~0.1 s)."""
    return tuple(query_utm_crs_info(datum_name="WGS 84"))


def utm_epsg(lon: float, lat: float) -> int | None:
    """EPSG code of the WGS 84 UTM zone at (lon, lat); None where UTM is undefined (polar caps).

    The first zone whose area of use holds the point (borders included), in PROJ's order: what
    ``query_utm_crs_info`` with the point as area of interest answers, without a database query per call.
    """
    for info in _utm_zones():
        area = info.area_of_use
        if area.west <= lon <= area.east and area.south <= lat <= area.north:
            return int(info.code)
    return None


def utm_crs(lon: float, lat: float) -> CRS:
    """The WGS 84 UTM zone at (lon, lat).

    Raises:
        UserError: no UTM zone covers the point.
    """
    code = utm_epsg(lon, lat)
    if code is None:
        raise UserError(f"no UTM zone found at lon {lon:.4f}, lat {lat:.4f}")
    return CRS.from_epsg(code)


def metric_crs(gdf):
    """The frame's own CRS when projected (metres), else the UTM zone at the centre of its bounds."""
    if gdf.crs.is_projected:
        return gdf.crs
    west, south, east, north = gdf.to_crs("EPSG:4326").total_bounds
    return utm_crs((west + east) / 2, (south + north) / 2)
