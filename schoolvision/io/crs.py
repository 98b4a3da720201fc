"""Where metres are: the one UTM-zone lookup of the project.

Reading imagery in a geographic CRS, buffering school points and measuring candidate distances all
need a metric CRS; each asks :func:`utm_crs` for the WGS 84 UTM zone at a point, so the three
never disagree about which zone a place is in.
"""

from __future__ import annotations

from pyproj.aoi import AreaOfInterest
from pyproj.database import query_utm_crs_info
from rasterio.crs import CRS

from schoolvision.errors import UserError


def utm_epsg(lon: float, lat: float) -> int | None:
    """EPSG code of the WGS 84 UTM zone at (lon, lat); None where UTM is undefined (polar caps)."""
    info = query_utm_crs_info(datum_name="WGS 84", area_of_interest=AreaOfInterest(lon, lat, lon, lat))
    return int(info[0].code) if info else None


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
