"""The demo's regions: palettes, places and the numbers that make rural, urban and arid towns differ.

Regions (:data:`REGIONS`, ``demo --region``) change the look, not the rules: ``rural`` is the
original demo; ``urban`` and ``arid`` draw other roofs, ground, density, light and school layouts,
with their own look-alikes, so that a model trained on one region can be seen failing on another.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources

from schoolvision.errors import UserError

# (place, EPSG of its UTM zone, easting, northing of the scene's upper-left corner) — plausible origins.
LOCATIONS = (
    ("Dodoma, Tanzania", 32736, 803000, 9318000),
    ("Patna, India", 32645, 309000, 2833000),
    ("Lima outskirts, Peru", 32718, 282000, 8673000),
    ("Kampala, Uganda", 32636, 453000, 36000),
    ("Dhaka outskirts, Bangladesh", 32646, 235000, 2633000),
    ("Kumasi, Ghana", 32630, 652000, 740000),
    ("Quetzaltenango, Guatemala", 32615, 659000, 1640000),
    ("Nakuru, Kenya", 32737, 170000, 9968000),
)

# Roof materials shared by houses, schools and hard negatives (RGB in [0, 1]).
ROOFS = (
    (0.63, 0.65, 0.67),  # galvanised metal
    (0.42, 0.44, 0.47),  # weathered dark metal
    (0.33, 0.46, 0.62),  # painted blue metal
    (0.55, 0.33, 0.22),  # rusted metal
    (0.70, 0.39, 0.27),  # terracotta tiles
    (0.60, 0.53, 0.37),  # thatch
    (0.76, 0.74, 0.70),  # concrete
    (0.35, 0.50, 0.40),  # painted green metal
    (0.62, 0.24, 0.20),  # painted red metal
)
SOILS = ((0.62, 0.45, 0.33), (0.58, 0.50, 0.40), (0.66, 0.52, 0.38), (0.55, 0.47, 0.42))
GREEN_GRASS = (0.30, 0.40, 0.20)
DRY_GRASS = (0.58, 0.53, 0.36)
TREE = (0.17, 0.27, 0.13)
ASPHALT = (0.36, 0.36, 0.37)
LINE = (0.93, 0.93, 0.90)
WALLS = ((0.80, 0.77, 0.72), (0.62, 0.42, 0.32), (0.70, 0.70, 0.68))
NEGATIVE_KINDS = ("warehouse", "market", "clinic", "sports_field", "park", "walled_compound", "dense_housing")


@dataclass(frozen=True)
class Region:
    """How the towns of one region look, as the numbers that differ from the rural towns.

    A model trained in one region meets other roofs, layouts and light in another. Every region keeps
    the same kind of school cue (a walled yard, a pitch or court, a building larger than the houses)
    in its own look, with its own look-alikes, so that a model can learn it from a few reviewed
    examples. Ranges are (low, high) of uniform draws; ``house_height`` is in storeys.
    """

    name: str
    description: str
    stream: int  # extra seed word; 0 (rural) draws the towns exactly as before regions existed
    locations: tuple
    roofs: tuple
    soils: tuple
    negative_kinds: tuple[str, ...]
    closest: str  # the look-alike drawn most often (a third more of it)
    school_layout: str  # "blocks" (rural), "courtyard" (urban) or "rows" (arid)
    school_size_m: tuple[float, float] | None = None  # None: TownConfig.school_size_m
    greenness: tuple[float, float] = (0.1, 0.95)
    haze: tuple[float, float] = (0.0, 0.18)
    sun_elevation_deg: tuple[float, float] = (35, 70)
    water_p: tuple[float, float, float] = (0.4, 0.35, 0.25)  # river, pond, none
    spread: float = 0.42  # radius of the built-up centre, as a share of the scene
    street_spacing_m: tuple[float, float] = (70, 120)
    paved_share: float = 0.25
    houses_factor: float = 1.0  # times TownConfig.houses_per_km2
    house_length_m: tuple[float, float] = (6, 15)
    house_width_m: tuple[float, float] = (5, 9)
    house_gap_m: float = 1.5
    house_height: tuple[float, float] = (0.8, 1.3)
    ridge_share: float = 0.7
    corrugated_share: float = 0.3
    plot_share: float = 0.35  # houses with a swept-earth plot
    plot_walls: bool = False  # plots walled in (family compounds)
    terraced: bool = False  # houses on a lattice that fills the blocks (dense towns)
    dry_grass: tuple[float, float, float] = DRY_GRASS  # vegetation colour at greenness 0
    tree_factor: float = 1.0
    crop_factor: float = 1.0


def _tuples(value):
    """TOML arrays as the tuples a frozen Region holds (nested)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def load_regions(text: str) -> dict[str, Region]:
    """Regions from TOML text: one table per region, holding what differs from the rural towns."""
    shared = {"locations": LOCATIONS, "roofs": ROOFS, "soils": SOILS, "negative_kinds": NEGATIVE_KINDS}
    return {name: Region(name=name, **(shared | {key: _tuples(value) for key, value in table.items()}))
            for name, table in tomllib.loads(text).items()}


REGIONS = load_regions(resources.files(__package__).joinpath("regions.toml").read_text(encoding="utf-8"))
"""The demo's regions by name (``schoolvision demo --region``), from ``regions.toml``; ``rural`` is the original
demo. The numbers are data, not code: a new region is a new table there."""


def region_style(name: str) -> Region:
    """The :class:`Region` called ``name``.

    Raises:
        UserError: no region has that name.
    """
    try:
        return REGIONS[name]
    except KeyError:
        raise UserError(f"unknown region {name!r}: choose one of {', '.join(REGIONS)}") from None


@dataclass(frozen=True)
class TownConfig:
    """Knobs of one synthetic town; densities are per km² so small test towns stay proportionate."""

    schools_per_km2: tuple[float, float] = (3.4, 6.0)
    min_schools: int = 2
    school_size_m: tuple[float, float] = (50.0, 120.0)
    edge_margin_px: int = 64
    school_spacing_m: float = 30.0
    negatives_per_km2: float = 11.0
    houses_per_km2: float = 2600.0
    fields_per_km2: float = 12.0

