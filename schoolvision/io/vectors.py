"""Vector files: GeoPackage / GeoJSON writing and reading, every layer carrying its CRS.

Writes are atomic (temporary file, then rename, layers included), so QGIS never opens half a file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import geopandas as gpd
import pyogrio

from schoolvision.io.atomic import atomic_path


def write_vectors(
    gdf,
    gpkg: str | Path | None = None,
    geojson: str | Path | None = None,
    *,
    layer: str = "features",
    extra_layers: Mapping[str, object] | None = None,
) -> None:
    """Write a GeoDataFrame to a GeoPackage (its own CRS) and/or GeoJSON (EPSG:4326, per RFC 7946).

    ``extra_layers`` adds more named layers to the same GeoPackage (e.g. missed schools); empty
    ones are left out, as OGR cannot type an empty layer's geometry.
    """
    if gdf.crs is None:
        raise ValueError("refusing to write vectors without a CRS")
    if gpkg is not None:
        with atomic_path(gpkg) as tmp:
            gdf.to_file(tmp, layer=layer, driver="GPKG")
            for name, other in (extra_layers or {}).items():
                if other is not None and len(other):
                    other.to_file(tmp, layer=name, driver="GPKG")
    if geojson is not None:
        with atomic_path(geojson) as tmp:
            # name the layer after the target: GDAL would otherwise record the temporary file's name
            gdf.to_crs("EPSG:4326").to_file(tmp, driver="GeoJSON", layer=Path(geojson).stem)


def read_layer(path: str | Path, layer: str, columns: Sequence[str] = ()) -> gpd.GeoDataFrame:
    """Layer ``layer`` of a GeoPackage; an empty EPSG:4326 frame with ``columns`` when the file lacks it.

    :func:`write_vectors` leaves empty layers out, so a missing layer means "none" (e.g. no missed school).
    """
    if layer not in {name for name, _ in pyogrio.list_layers(path)}:
        return gpd.GeoDataFrame({c: [] for c in columns}, geometry=[], crs="EPSG:4326")
    return gpd.read_file(path, layer=layer)
