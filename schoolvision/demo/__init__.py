"""Synthetic georeferenced towns with known school footprints: the project's embedded demo data.

No imagery can be downloaded here, so the demo paints overhead views of small towns: textured land
cover, roads, water, trees and many houses, with schools (long classroom blocks in I, L or U shapes
around a yard, often a marked sports field, a boundary wall) and hard negatives that share their
parts (warehouses, markets, clinics, bare sports fields, parks, walled compounds, dense housing), so
that only the spatial arrangement, not colour, tells a school apart. Roofs of schools and houses come
from the same palette for the same reason. The same seed gives byte-identical files.

Modules, in the order a town is made: :mod:`~schoolvision.demo.regions` (palettes and the regions'
looks), :mod:`~schoolvision.demo.canvas` (drawing in pixels), :mod:`~schoolvision.demo.landscape`
(ground, water, roads, fields, trees), :mod:`~schoolvision.demo.schools`,
:mod:`~schoolvision.demo.lookalikes`, :mod:`~schoolvision.demo.houses`,
:mod:`~schoolvision.demo.towns` (one town), :mod:`~schoolvision.demo.registry` (an imperfect school
list) and :mod:`~schoolvision.demo.build` (:func:`make_demo`, the folder).
"""

from schoolvision.demo.build import DemoInfo, make_demo
from schoolvision.demo.regions import NEGATIVE_KINDS, REGIONS, Region, TownConfig, region_style
from schoolvision.demo.registry import REGISTRY_COLUMNS, STATUSES, TRUTH_COLUMNS, RegistryRules, make_registry
from schoolvision.demo.towns import Landmark, Town, generate_town

__all__ = [
    "NEGATIVE_KINDS", "REGIONS", "REGISTRY_COLUMNS", "STATUSES", "TRUTH_COLUMNS", "DemoInfo", "Landmark", "Region",
    "RegistryRules", "Town", "TownConfig", "generate_town", "make_demo", "make_registry", "region_style",
]
