"""One module per CLI command: ``add_arguments(parser)`` and ``run(args) -> exit code``.

Option defaults come from the library's config dataclasses (or entry-point signatures) through
:func:`default_of`, so the command line, the library and the book's CPU profile cannot drift apart
(``tests/test_defaults.py`` checks the three against each other). A command builds its config from its
arguments field by field (:func:`config_from_args`); ``tests/test_options.py`` checks that every command's
options are its config's fields, with the same names and defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from typing import Any


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows every option's default: ``(default: X)`` is added where the help does not say it.

    Flags (``store_true``) and help that already names its default are left as they are; ``None``
    reads "none". Descriptions and epilogs keep their line breaks (``train``'s recipe).
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.default is argparse.SUPPRESS or action.nargs == 0
                or "default" in text.lower() or "%(default)" in text):
            return text
        value = "none" if action.default is None else "%(default)s"
        return f"{text} (default: {value})" if text else f"default: {value}"


def use_defaults_help(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and every sub-command parser below it :class:`DefaultsHelpFormatter`."""
    parser.formatter_class = DefaultsHelpFormatter
    for action in parser._actions:
        if not action.help and action.option_strings and action.nargs != 0 and action.default is not argparse.SUPPRESS:
            action.help = "default: none" if action.default is None else "default: %(default)s"  # else not shown
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                use_defaults_help(sub)


def default_of(owner: Any, name: str) -> Any:
    """The default of field ``name`` of a config dataclass, or of parameter ``name`` of a function."""
    if dataclasses.is_dataclass(owner):
        for f in dataclasses.fields(owner):
            if f.name == name:
                if f.default is not dataclasses.MISSING:
                    return f.default
                if f.default_factory is not dataclasses.MISSING:
                    return f.default_factory()
                break
        raise KeyError(f"{owner.__name__} has no default for {name!r}")
    parameter = inspect.signature(owner).parameters[name]
    if parameter.default is inspect.Parameter.empty:
        raise KeyError(f"{owner.__name__} has no default for {name!r}")
    return parameter.default


def config_from_args(config: type, args: argparse.Namespace, *, renamed: dict[str, str] | None = None,
                     negated: dict[str, str] | None = None, parsed: dict[str, Any] | None = None) -> Any:
    """The command's config dataclass built from its parsed arguments, field by field: no hand mapping.

    Every argument whose ``dest`` is a field of ``config`` is passed as it is; the others are left out
    (``command``, ``func``, options the command uses itself).

    Args:
        config: the config dataclass (``ScanConfig``).
        args: what the command's parser returned.
        renamed: ``dest`` -> field, where the option's name cannot be the field's (``out`` -> ``out_dir``).
        negated: ``--no-x`` flag's ``dest`` -> the field it turns off (``no_map`` -> ``make_map``).
        parsed: field -> the function that turns the option's text into the field's value.
    """
    renamed, negated, parsed = renamed or {}, negated or {}, parsed or {}
    names = {f.name for f in dataclasses.fields(config)}
    values = {}
    for dest, value in vars(args).items():
        if dest in negated:
            values[negated[dest]] = not value
            continue
        name = renamed.get(dest, dest)
        if name in names:
            values[name] = parsed[name](value) if name in parsed else value
    return config(**values)


SCHOOLS_HELP = ("school Points/Polygons: any OGR vector file in any CRS (GeoJSON, GeoPackage, shapefile, KML ...; "
                "no CRS means EPSG:4326), GeoParquet (needs pyarrow), or a CSV table with WGS84 longitude/latitude "
                "columns or a WKT geometry column in WGS84")
"""Help of ``--schools``: every command reads labels with :func:`schoolvision.io.schools.read_schools`."""


def add_schools_options(parser: argparse.ArgumentParser, config: type) -> None:
    """``--schools-layer``, ``--schools-where`` and ``--lonlat-columns``: how to read a ``--schools`` file.

    ``config`` is the command's config dataclass (``ChipConfig``, ``ScanConfig``), which holds the defaults.
    """
    parser.add_argument(
        "--schools-layer",
        default=default_of(config, "schools_layer"),
        metavar="NAME",
        help="layer of a --schools file with several layers (GeoPackage, KML); required when it has several",
    )
    parser.add_argument(
        "--schools-where",
        default=default_of(config, "schools_where"),
        metavar="KEY=VALUE",
        help="keep only the --schools features whose attribute KEY equals VALUE, e.g. amenity=school "
             "(KEY=V1,V2: any of the values; KEY!=VALUE: all but it), for extracts that hold every building",
    )
    parser.add_argument(
        "--lonlat-columns",
        default=default_of(config, "lonlat_columns"),
        metavar="LON,LAT",
        help="longitude and latitude columns (WGS84 degrees) of a CSV --schools file "
             "(default: found by name: longitude/latitude, lon/lat, lng/lat, long/lat, x/y, any case)",
    )


def add_imagery_options(parser: argparse.ArgumentParser, config: type, from_run: bool = False) -> None:
    """``--bands``, ``--crs`` and ``--scale``: how to read ``--imagery`` (rules in :mod:`schoolvision.io.imagery`).

    ``config`` is the command's config dataclass, which holds the defaults; ``from_run``: the defaults
    are what the run was trained with (``scan``), and ``auto`` asks for the plain rule instead.
    """
    run = "; default: the bands the run's chips used, else " if from_run else "; default: "
    parser.add_argument(
        "--bands",
        default=default_of(config, "bands"),
        metavar="R,G,B",
        help="1-based band numbers of red, green and blue, e.g. 3,2,1 for a blue-green-red-NIR product or 1,1,1 "
             f"for a grey band{run}bands 1-3 of RGB and RGBA rasters (auto)",
    )
    parser.add_argument(
        "--crs",
        default=default_of(config, "crs"),
        metavar="EPSG",
        help="CRS of rasters whose file has none, e.g. EPSG:32636 (a raster's own CRS always wins)",
    )
    run = "; default: the rule the run's chips used, else " if from_run else "; default: "
    parser.add_argument(
        "--scale",
        default=default_of(config, "scale"),
        metavar="MIN,MAX",
        help="how imagery that is not 8-bit (uint16, int16, float) becomes 8-bit: MIN,MAX of the data mapped to "
             "1-255 for every scene and band, e.g. 0,2047 for 11-bit data; 8-bit imagery is read as it is"
             f"{run}each scene's 2nd-98th percentile per band (auto)",
    )


def add_tile_options(parser: argparse.ArgumentParser, config: type) -> None:
    """``--separate-scenes``, ``--tile-scheme``, ``--tile-pattern``, ``--zoom``: how folders of tiles are read.

    Rules in :mod:`schoolvision.io.tiles`; ``config`` (``ChipConfig``, ``ScanConfig``) holds the defaults.
    """
    parser.add_argument(
        "--separate-scenes",
        action="store_true",
        help="read every GeoTIFF of an --imagery folder as a scene of its own; default: adjacent tiles (same CRS "
             "and bands, even on differing grids, as per-tile warps to EPSG:4326) form one mosaic scene",
    )
    parser.add_argument(
        "--tile-scheme",
        choices=("xyz", "tms"),
        default=default_of(config, "tile_scheme"),
        help="y axis of web-map tile folders: xyz (y=0 at the north, slippy-map servers) or tms (y=0 at the "
             "south); default: tms when the folder holds a tilemapresource.xml (gdal2tiles), else xyz",
    )
    parser.add_argument(
        "--tile-pattern",
        default=default_of(config, "tile_pattern"),
        metavar="PATTERN",
        help="names of web-map tiles with {z}, {x} and {y} once each, / for folders, e.g. {z}/{x}/{y}, "
             "OAM-{x}-{y}-{z} or {x}-{y}-{z}; default: {z}-{x}-{y} or {z}/{x}/{y}",
    )
    parser.add_argument(
        "--zoom",
        type=int,
        default=default_of(config, "zoom"),
        metavar="Z",
        help="zoom level to read from a tile folder holding several (0-24); default: the finest, with a warning",
    )


def tile_arguments(args: argparse.Namespace) -> dict:
    """The config fields of :func:`add_tile_options`' options."""
    return {"separate_scenes": args.separate_scenes, "tile_scheme": args.tile_scheme,
            "tile_pattern": args.tile_pattern, "zoom": args.zoom}


OVERWRITE_HELP = ("write into a non-empty --out: removes what an earlier schoolvision run wrote there (the files its "
                  ".schoolvision-manifest lists) and keeps every other file; --out may never be, hold or lie inside "
                  "an input")
"""Help of ``--overwrite`` (see :func:`schoolvision.io.folders.prepare_output`)."""
