"""Where the book's data come from: the demo towns, or the user's own imagery and school labels.

The book's first chapter calls :func:`prepare_data` so that one notebook serves both cases. With no
imagery it draws the demo towns into ``data_dir``, a folder that is empty or already holds a demo
(never over anything else). With imagery and school labels it draws nothing: it checks the user's
files and reads them where they are, and nothing is ever written beside them.
:meth:`DataSource.make_chips` then cuts the chips into a folder that is empty or one the tool wrote
(a chips folder), so a mistyped ``chips_dir`` cannot replace a folder of the user's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import rasterio
from rasterio.errors import RasterioError
from shapely.geometry import box

from schoolvision.data.chips import ChipConfig, ChipSummary, make_chips
from schoolvision.data.sources import DEMO_MARKER
from schoolvision.demo import make_demo
from schoolvision.errors import UserError
from schoolvision.io.folders import ChipsFolder
from schoolvision.io.imagery import (
    ImagerySource,
    list_sources,
    native_gsd,
    open_scene,
    parse_bands,
    source_info,
    with_options,
)
from schoolvision.io.preview import Preview, read_source_preview, read_source_zooms
from schoolvision.io.schools import read_schools
from schoolvision.io.tiles import TileOptions


@dataclass
class DataSource:
    """The imagery and school labels a chips folder is cut from, and how to read them.

    Attributes:
        imagery: GeoTIFF files, folders of them, or tile folders.
        schools: the school labels file.
        options: :class:`~schoolvision.data.chips.ChipConfig` fields that say how to read them
            (``bands``, ``scale``, ``schools_layer``, ``lonlat_columns`` ...).
        demo: the demo folder when the data are the demo towns, else None.
    """

    imagery: list[Path]
    schools: Path
    options: dict[str, Any] = field(default_factory=dict)
    demo: Path | None = None
    _sources: list[ImagerySource] | None = field(default=None, init=False, repr=False)

    def config(self, **settings: Any) -> ChipConfig:
        """A :class:`ChipConfig` of ``settings`` (chip size, stride, GSD, seed ...) and this source's options."""
        return ChipConfig(**{**settings, **self.options})

    def sources(self) -> list[ImagerySource]:
        """The scenes as ``make_chips`` lists and reads them (tile options; bands, CRS and 8-bit scale).

        Listed once (a tile folder's warnings are given once), then reused.
        """
        if self._sources is None:
            config = self.config()
            listed = list_sources(self.imagery, TileOptions.of(config))
            self._sources = with_options(listed, config.bands, config.crs, config.scale)
        return self._sources

    def read_schools(self) -> gpd.GeoDataFrame:
        """The school labels in EPSG:4326 (points as discs), read as ``make_chips`` reads them.

        The demo's own ``schools.geojson`` is read as written (``name``, ``scene``).
        """
        if self.demo is not None:
            return gpd.read_file(self.schools)
        config = self.config()
        return read_schools(self.schools, config.point_buffer_m, layer=config.schools_layer,
                            where=config.schools_where, lonlat_columns=config.lonlat_columns)

    def read_landmarks(self) -> gpd.GeoDataFrame:
        """The demo's hard negatives (``kind``, ``name``, ``scene``); an empty frame for the user's data."""
        path = None if self.demo is None else self.demo / "landmarks.geojson"
        if path is None or not path.is_file():
            return gpd.GeoDataFrame({"kind": [], "name": []}, geometry=[], crs="EPSG:4326")
        return gpd.read_file(path)

    def describe(self) -> str:
        """Two lines: how many scenes, the first one's bands, size, GSD and CRS; how many school labels."""
        sources = self.sources()
        first = sources[0]
        with _open_file(first) as ds:
            size = f"{ds.count} bands {ds.dtypes[0]}, {ds.width} x {ds.height} px, {native_gsd(ds):g} m/px, {ds.crs}"
        label = "towns" if self.demo is not None else "scenes"
        name = first.path.name if first.kind == "raster" else f"{first.name} ({first.kind})"
        schools = self.read_schools()
        what = "school footprints" if self.demo is not None else f"schools from {self.schools.name}"
        return (f"{len(sources)} {label}, e.g. {name}: {size}\n"
                f"{len(schools)} {what} in {schools.crs}, columns: {sorted(schools.columns)}")

    def first_scene_with(self, schools: gpd.GeoDataFrame) -> str:
        """The first scene (by name) that holds a school, to show close-ups of; the first scene if none does."""
        schools = schools.to_crs("EPSG:4326")
        for source in self.sources():
            if schools.intersects(box(*source_info(source)["bounds_4326"])).any():
                return source.name
        return self.sources()[0].name

    def previews(self, max_side: int = 1024, names: Sequence[str] | None = None) -> dict[str, Preview]:
        """Scene name -> RGB preview as the chips see it (bands, 8-bit scale, mask, CRS the chips are cut in)."""
        return {s.name: read_source_preview(s, max_side) for s in self.sources() if names is None or s.name in names}

    def zooms(self, scene: str, geometries, pad: float = 40.0) -> list[Preview]:
        """Full-resolution close-ups of ``scene`` around each geometry (given in the previews' CRS)."""
        source = next(s for s in self.sources() if s.name == scene)
        return read_source_zooms(source, geometries, pad)

    def make_chips(self, chips_dir: str | Path, config: ChipConfig) -> ChipSummary:
        """Cut the chips into ``chips_dir`` (:func:`~schoolvision.data.chips.make_chips`), with this source's options.

        ``chips_dir`` is replaced only when it is a chips folder (it holds ``dataset.json``); a
        folder holding anything else is refused, so no file of the user's is ever removed.

        Raises:
            UserError: as ``make_chips`` (unreadable inputs, no school inside the imagery, a
                ``chips_dir`` holding other files or lying inside an input).
        """
        config = dataclasses.replace(config, **self.options)
        overwrite = ChipsFolder(chips_dir).meta_path.is_file()
        return make_chips(self.imagery, self.schools, chips_dir, config, overwrite=overwrite)


def prepare_data(data_dir: str | Path, imagery: str | Path | Sequence[str | Path] = "",
                 schools: str | Path = "", *, base: str | Path | None = None, towns: int = 6, size: int = 1536,
                 gsd: float | None = 1.0, seed: int = 0, **options: Any) -> DataSource:
    """The demo towns (no ``imagery``), or the user's imagery and school labels, checked.

    Args:
        data_dir: where the demo towns are drawn; unused (never written) with the user's data.
        imagery: GeoTIFF files, folders of them or tile folders (one path or several); empty: the demo.
        schools: the school labels file (any vector file, or a CSV with longitude/latitude columns);
            required with ``imagery``.
        base: folder that relative ``imagery`` and ``schools`` paths are relative to (default: the
            current folder; the book passes the repository root).
        towns: demo towns to draw.
        size: demo town width and height in pixels.
        gsd: demo metres per pixel (None: 1 m).
        seed: demo seed.
        **options: how to read and cut the user's files: any :class:`~schoolvision.data.chips.ChipConfig`
            field (``bands="3,2,1"``, ``scale="0,2047"``, ``schools_layer="schools"``,
            ``lonlat_columns="lon,lat"``, ``tile_scheme="tms"``, ``test_scenes=["north"]`` ...);
            empty values ("" or None) are ignored.

    Returns:
        The imagery, labels and reading options, for :meth:`DataSource.make_chips` and the figures.

    Raises:
        UserError: ``schools`` without ``imagery`` or the reverse, a path that does not exist, an
            unknown or invalid option, or a demo ``data_dir`` that holds something other than a demo.
    """
    base = Path(base) if base is not None else Path.cwd()
    paths = [imagery] if isinstance(imagery, (str, Path)) else list(imagery)
    paths = [base / Path(p).expanduser() for p in paths if str(p).strip()]
    options = {key: value for key, value in options.items() if not _empty(value)}
    fields = [f.name for f in dataclasses.fields(ChipConfig)]
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise UserError(f"unknown data option(s) {', '.join(unknown)}; the options are the chip settings "
                        f"{', '.join(fields)}")
    if "bands" in options:
        options["bands"] = parse_bands(options["bands"])  # "3,2,1" as the command line takes it
    ChipConfig(**options)  # validates the options (bands, CRS, layer filter ...) before any work
    if not paths:
        if str(schools).strip():
            raise UserError("school labels given without imagery: set imagery too (empty both for the demo towns)",
                            base / Path(schools))
        return _demo(Path(data_dir), towns=towns, size=size, gsd=gsd or 1.0, seed=seed)
    if not str(schools).strip():
        raise UserError("imagery given without school labels: set schools to your labels file", paths[0])
    schools_path = base / Path(schools).expanduser()
    for path in (*paths, schools_path):
        if not path.exists():
            raise UserError("input not found (paths are relative to the repository root)", path)
    source = DataSource(paths, schools_path, options)
    source.sources()  # the imagery lists and parses (tile names, mosaics) before any long work
    source.read_schools()  # and the labels read (layer, columns, filter)
    return source


def _demo(data_dir: Path, *, towns: int, size: int, gsd: float, seed: int) -> DataSource:
    """Draw the demo towns into ``data_dir``: redrawn over a demo folder, refused over anything else."""
    empty = not data_dir.exists() or (data_dir.is_dir() and not any(data_dir.iterdir()))
    if not empty and not (data_dir / DEMO_MARKER).is_file():
        raise UserError("data_dir holds files that are not a demo: set imagery and schools to use your own data, "
                        "or choose an empty data_dir for the demo towns", data_dir)
    info = make_demo(data_dir, towns=towns, seed=seed, size=size, gsd=gsd, overwrite=not empty)
    return DataSource([data_dir / "scenes"], info.schools, {}, demo=data_dir)


def _empty(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, (str, list, tuple, dict)) and len(value) == 0)


def _open_file(source: ImagerySource):
    """The scene's file as it is on disk (a GeoTIFF), or as the reader sees it (mosaics, tile folders)."""
    if source.kind == "raster":
        try:
            return rasterio.open(source.path)
        except RasterioError as exc:
            raise UserError(f"not a readable raster ({str(exc).splitlines()[0][:120]})", source.path) from None
    return open_scene(source)
