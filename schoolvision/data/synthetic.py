"""Synthetic georeferenced towns with known school footprints: the project's embedded demo data.

No imagery can be downloaded here, so the demo paints overhead views of small towns: textured land
cover, roads, water, trees and many houses, with schools (long classroom blocks in I, L or U shapes
around a yard, often a marked sports field, a boundary wall) and hard negatives that share their
parts (warehouses, markets, clinics, bare sports fields, parks, walled compounds, dense housing), so
that only the spatial arrangement, not colour, tells a school apart. Roofs of schools and houses come
from the same palette for the same reason.

Everything is drawn in pixel units from sizes in metres (``gsd`` m/px) and seeded per town, so the
same seed gives byte-identical files.

Regions (:data:`REGIONS`, ``demo --region``) change the look, not the rules: ``rural`` is the demo
above; ``urban`` and ``arid`` draw other roofs, ground, density, light and school layouts, with their
own look-alikes, so that a model trained on one region can be seen failing on another. Each demo also
writes an imperfect school registry (:mod:`schoolvision.data.registry`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from affine import Affine
from scipy import ndimage
from shapely.geometry import Polygon
from skimage.draw import circle_perimeter
from skimage.draw import polygon as draw_polygon
from tqdm.auto import tqdm

from schoolvision.data.registry import STATUSES, RegistryRules, make_registry
from schoolvision.errors import UserError, check_range
from schoolvision.io.atomic import atomic_path, write_json, write_text
from schoolvision.io.folders import prepare_output
from schoolvision.io.rasters import write_geotiff

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


REGIONS = {
    "rural": Region(
        "rural", "small towns of pitched metal, tile and thatch roofs amid fields and trees; schools are long "
        "classroom blocks around a walled yard, often with a grass pitch", 0, LOCATIONS, ROOFS, SOILS,
        NEGATIVE_KINDS, "walled_compound", "blocks"),
    "urban": Region(
        "urban", "dense multi-storey blocks with flat concrete roofs, like many South Asian towns; schools are "
        "courtyard buildings with a marked court, walled in between close houses", 1,
        (("Dhaka, Bangladesh", 32646, 232000, 2635000), ("Karachi, Pakistan", 32642, 298000, 2754000),
         ("Kolkata, India", 32645, 637000, 2500000), ("Lahore, Pakistan", 32643, 433000, 3490000),
         ("Kathmandu, Nepal", 32645, 330000, 3068000), ("Chittagong, Bangladesh", 32646, 375000, 2475000),
         ("Patna, India", 32645, 309000, 2835000), ("Colombo, Sri Lanka", 32644, 372000, 769000)),
        ((0.74, 0.72, 0.68), (0.62, 0.60, 0.57), (0.52, 0.50, 0.48), (0.80, 0.78, 0.74), (0.66, 0.52, 0.45),
         (0.55, 0.58, 0.62), (0.45, 0.40, 0.36), (0.70, 0.62, 0.50), (0.33, 0.46, 0.62), (0.63, 0.65, 0.67)),
        ((0.52, 0.48, 0.42), (0.58, 0.54, 0.48), (0.48, 0.44, 0.38), (0.60, 0.52, 0.44)),
        ("apartment_courtyard", "sports_field", "warehouse", "market", "walled_compound", "clinic",
         "dense_housing"), "apartment_courtyard", "courtyard", school_size_m=(50.0, 90.0),
        greenness=(0.05, 0.35), haze=(0.04, 0.22), water_p=(0.1, 0.35, 0.55), spread=0.9,
        street_spacing_m=(40, 65), paved_share=0.15, houses_factor=2.2, house_length_m=(9, 20),
        house_width_m=(7, 14), house_gap_m=0.8, house_height=(1.5, 4.5), terraced=True, ridge_share=0.05,
        corrugated_share=0.08, plot_share=0.1, tree_factor=0.35, crop_factor=0.2),
    "arid": Region(
        "arid", "flat earth-coloured roofs and walled family compounds on bare sandy ground, like many Sahel "
        "towns; schools are rows of classrooms in a large walled yard with a dirt pitch", 2,
        (("Niamey, Niger", 32631, 401000, 1497000), ("Kano, Nigeria", 32632, 445000, 1330000),
         ("N'Djamena, Chad", 32633, 502000, 1344000), ("Timbuktu, Mali", 32630, 497000, 1857000),
         ("Khartoum, Sudan", 32636, 450000, 1717000), ("Agadez, Niger", 32632, 389000, 1880000),
         ("Hargeisa, Somaliland", 32638, 394000, 1060000), ("Nouakchott, Mauritania", 32628, 393000, 2002000)),
        ((0.72, 0.56, 0.40), (0.66, 0.50, 0.36), (0.78, 0.64, 0.48), (0.60, 0.46, 0.34), (0.84, 0.80, 0.72),
         (0.63, 0.65, 0.67), (0.55, 0.33, 0.22), (0.76, 0.74, 0.70)),
        ((0.80, 0.64, 0.46), (0.76, 0.58, 0.40), (0.84, 0.70, 0.52), (0.72, 0.56, 0.42)),
        ("walled_compound", "mosque", "sports_field", "market", "warehouse", "clinic", "dense_housing"),
        "walled_compound", "rows", school_size_m=(60.0, 130.0), greenness=(0.0, 0.12), haze=(0.08, 0.26),
        sun_elevation_deg=(50, 80), water_p=(0.1, 0.15, 0.75), spread=0.6, street_spacing_m=(80, 140),
        paved_share=0.1, houses_factor=1.3, house_length_m=(6, 13), house_width_m=(5, 9), house_gap_m=3.5,
        house_height=(0.8, 1.1), ridge_share=0.03, corrugated_share=0.15, plot_share=0.7, plot_walls=True,
        tree_factor=0.25, crop_factor=0.15, dry_grass=(0.68, 0.58, 0.42)),
}
"""The demo's regions by name (``schoolvision demo --region``); ``rural`` is the original demo."""


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


@dataclass
class Landmark:
    """A hard negative: something that shares parts with a school but is not one."""

    kind: str
    polygon: object  # shapely Polygon in the scene CRS


@dataclass
class Town:
    """One painted scene with its georeference and the true school footprints (scene CRS)."""

    name: str
    image: np.ndarray  # (3, H, W) uint8 RGB
    crs: str
    transform: Affine
    gsd: float
    place: str
    schools: list  # shapely Polygons in the scene CRS
    landmarks: list[Landmark]
    style: dict = field(default_factory=dict)
    buildings: list = field(default_factory=list)  # (kind, Polygon in the scene CRS) of every roof drawn


@dataclass
class DemoInfo:
    """What :func:`make_demo` wrote."""

    out_dir: Path
    scenes: list[Path]
    schools: Path
    landmarks: Path
    meta: Path
    n_schools: dict[str, int]
    n_landmarks: dict[str, int]
    buildings: Path | None = None  # every roof drawn (``kind``, ``scene``): a footprint mask for ``scan --mask``
    registry: Path | None = None  # the imperfect school list (schoolvision.data.registry)
    registry_truth: Path | None = None  # what each registry row (and each missing school) really is


# --------------------------------------------------------------------------- drawing helpers


def _bspline_matrix(n: int, scale: float) -> np.ndarray:
    """(n, m) cubic B-spline weights that upsample a coarse grid by ``scale`` (smooth, C2)."""
    m = int(n / scale) + 4
    t = (np.arange(n, dtype=np.float32) + 0.5) / scale + 1.5
    x = np.abs(t[:, None] - np.arange(m, dtype=np.float32)[None, :])
    return np.where(x < 1, 2 / 3 - x**2 + x**3 / 2, np.where(x < 2, (2 - x) ** 3 / 6, 0)).astype(np.float32)


def _noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth noise (std ~1, float32) with features of ``scale`` px.

    Fine noise is blurred white noise; coarse noise is a small random grid upsampled with B-splines as
    two matrix products, which is far faster than filtering or ``ndimage.zoom`` at large scales.
    """
    h, w = shape
    if scale < 3:
        out = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), scale / 2)
    else:
        ay, ax = _bspline_matrix(h, scale), _bspline_matrix(w, scale)
        out = ay @ rng.standard_normal((ay.shape[1], ax.shape[1]), dtype=np.float32) @ ax.T
    return ((out - out.mean()) / (out.std() + 1e-6)).astype(np.float32)


def _rect(cx: float, cy: float, u0: float, u1: float, v0: float, v1: float, angle: float) -> np.ndarray:
    """Corners (4, 2) as (x, y) pixels of the local rectangle [u0,u1]x[v0,v1] rotated by ``angle``."""
    ca, sa = math.cos(angle), math.sin(angle)
    uv = np.array([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], dtype=float)
    return np.stack([cx + uv[:, 0] * ca - uv[:, 1] * sa, cy + uv[:, 0] * sa + uv[:, 1] * ca], axis=1)


def _pixels(corners: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel rows/cols whose centres lie inside a polygon given in continuous (x, y) pixel coordinates."""
    return draw_polygon(corners[:, 1] - 0.5, corners[:, 0] - 0.5, shape)


def _box(corners: np.ndarray, margin: float) -> tuple[slice, slice]:
    """Row/column slices of the bounding box of ``corners`` grown by ``margin`` px (clipped at 0)."""
    x0, y0 = np.floor(corners.min(0) - margin).astype(int)
    x1, y1 = np.ceil(corners.max(0) + margin).astype(int)
    return slice(max(y0, 0), y1 + 1), slice(max(x0, 0), x1 + 1)


def _hull(points: np.ndarray) -> np.ndarray:
    """Convex hull (monotone chain) — the outline of a building plus its cast shadow."""
    pts = sorted(map(tuple, np.round(points, 6)))
    if len(pts) <= 2:
        return np.array(pts)

    def half(seq):
        out: list = []
        for p in seq:
            while len(out) >= 2 and (
                (out[-1][0] - out[-2][0]) * (p[1] - out[-2][1]) - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])
            ) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = half(pts), half(reversed(pts))
    return np.array(lower[:-1] + upper[:-1])


def _segment(p0: np.ndarray, p1: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of a 1-px line from p0 to p1 (continuous x, y)."""
    n = int(math.ceil(np.hypot(*(p1 - p0)) * 2)) + 1
    t = np.linspace(0.0, 1.0, n)
    xs = np.floor(p0[0] + t * (p1[0] - p0[0])).astype(int)
    ys = np.floor(p0[1] + t * (p1[1] - p0[1])).astype(int)
    ok = (xs >= 0) & (ys >= 0) & (xs < shape[1]) & (ys < shape[0])
    return ys[ok], xs[ok]


class _Canvas:
    """The scene being painted: colour, what stands above ground (no shadow on it) and shadows."""

    def __init__(self, ground: np.ndarray):
        self.img = ground
        self.shape = ground.shape[1:]
        self.raised = np.zeros(self.shape, bool)
        self.shadow = np.zeros(self.shape, bool)
        self.occupied = np.zeros(self.shape, bool)

    def paint(self, rr, cc, colour, alpha: float = 1.0, texture: np.ndarray | None = None):
        col = np.asarray(colour, np.float32)[:, None]
        if texture is not None:
            col = col * texture[None, :]
        if alpha >= 1.0:
            self.img[:, rr, cc] = col
        else:
            self.img[:, rr, cc] = (1 - alpha) * self.img[:, rr, cc] + alpha * col

    def free(self, corners: np.ndarray, margin: float = 0.0) -> bool:
        """True when the polygon's bounding box (plus margin) is inside the scene and unoccupied."""
        x0, y0 = np.floor(corners.min(0) - margin).astype(int)
        x1, y1 = np.ceil(corners.max(0) + margin).astype(int)
        if x0 < 0 or y0 < 0 or x1 >= self.shape[1] or y1 >= self.shape[0]:
            return False
        return not self.occupied[y0 : y1 + 1, x0 : x1 + 1].any()

    def occupy(self, corners: np.ndarray, margin: float = 0.0):
        x0, y0 = np.floor(corners.min(0) - margin).astype(int)
        x1, y1 = np.ceil(corners.max(0) + margin).astype(int)
        self.occupied[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = True


@dataclass
class _Building:
    corners: np.ndarray
    colour: tuple
    height: float  # shadow length in px
    ridge: bool = True
    corrugated: bool = False
    kind: str = "house"  # "school", or the hard negative's kind: the ``kind`` of buildings.geojson


def _draw_building(cv: _Canvas, b: _Building, sun: np.ndarray, rng: np.random.Generator):
    """Shadow hull, then the roof: two halves shaded by the sun (gable) or flat, optional corrugation."""
    shape = cv.shape
    off = -sun * b.height
    rr, cc = _pixels(_hull(np.vstack([b.corners, b.corners + off])), shape)
    cv.shadow[rr, cc] = True
    c = b.corners
    col = np.asarray(b.colour, np.float32) * rng.uniform(0.9, 1.1)
    long_first = np.hypot(*(c[1] - c[0])) >= np.hypot(*(c[2] - c[1]))
    if not long_first:
        c = np.roll(c, -1, axis=0)  # c[0]->c[1] is now the long side (ridge direction)
    if b.ridge:
        mid0, mid1 = (c[0] + c[3]) / 2, (c[1] + c[2]) / 2
        halves = (np.array([c[0], c[1], mid1, mid0]), np.array([mid0, mid1, c[2], c[3]]))
        normal = c[3] - c[0]
        normal = normal / (np.hypot(*normal) + 1e-9)
        shades = (1.0 - 0.22 * float(normal @ sun), 1.0 + 0.22 * float(normal @ sun))
    else:
        halves, shades = (c,), (1.0,)
    ridge_dir = (c[1] - c[0]) / (np.hypot(*(c[1] - c[0])) + 1e-9)
    for poly, shade in zip(halves, shades):
        rr, cc = _pixels(poly, shape)
        if rr.size == 0:
            continue
        tex = None
        if b.corrugated:
            s = (cc + 0.5) * ridge_dir[0] + (rr + 0.5) * ridge_dir[1]
            tex = (1.0 + 0.06 * np.sin(s * 2.1)).astype(np.float32)
        cv.paint(rr, cc, np.clip(col * shade, 0, 1), texture=tex)
        cv.raised[rr, cc] = True


def _draw_wall(cv: _Canvas, corners: np.ndarray, colour, height: float, sun: np.ndarray, gate: int):
    """A boundary wall: 1-px light line with its shadow, one gate gap on side ``gate``."""
    for k in range(4):
        p0, p1 = corners[k], corners[(k + 1) % 4]
        pieces = [(p0, p1)]
        if k == gate:
            length = np.hypot(*(p1 - p0))
            g0, g1 = 0.45, 0.45 + min(6.0 / max(length, 1), 0.2)
            pieces = [(p0, p0 + (p1 - p0) * g0), (p0 + (p1 - p0) * g1, p1)]
        for a, b in pieces:
            rr, cc = _segment(a - sun * height, b - sun * height, cv.shape)
            cv.shadow[rr, cc] = True
            rr, cc = _segment(a, b, cv.shape)
            cv.paint(rr, cc, colour)
            cv.raised[rr, cc] = True


def _draw_field(cv: _Canvas, cx, cy, fl, fw, angle, colour, m: float):
    """A sports pitch: coloured rectangle, white outline, halfway line and centre circle."""
    corners = _rect(cx, cy, -fl / 2, fl / 2, -fw / 2, fw / 2, angle)
    rr, cc = _pixels(corners, cv.shape)
    cv.paint(rr, cc, colour)
    inner = _rect(cx, cy, -fl / 2 + 1.5 * m, fl / 2 - 1.5 * m, -fw / 2 + 1.5 * m, fw / 2 - 1.5 * m, angle)
    for k in range(4):
        rr, cc = _segment(inner[k], inner[(k + 1) % 4], cv.shape)
        cv.paint(rr, cc, LINE, alpha=0.85)
    half = _rect(cx, cy, 0, 0, -fw / 2 + 1.5 * m, fw / 2 - 1.5 * m, angle)
    rr, cc = _segment(half[0], half[3], cv.shape)
    cv.paint(rr, cc, LINE, alpha=0.85)
    rr, cc = circle_perimeter(int(cy), int(cx), max(int(min(fw * 0.15, 9 * m)), 2), shape=cv.shape)
    cv.paint(rr, cc, LINE, alpha=0.85)
    return corners


# --------------------------------------------------------------------------- the town


def _walk(rng, start, heading, length, turn_sd) -> np.ndarray:
    """A smooth random-walk polyline sampled every 0.5 px: roads, tracks and rivers."""
    n = max(int(length / 0.5), 2)
    turns = ndimage.gaussian_filter1d(rng.normal(0, turn_sd, n), 40)
    head = heading + np.cumsum(turns)
    steps = 0.5 * np.stack([np.cos(head), np.sin(head)], axis=1)
    return np.asarray(start, float) + np.cumsum(steps, axis=0)


def _stroke(points_list, widths, shape, classes=None):
    """Distance to the nearest centre line, its half width and class — for soft-edged roads and rivers."""
    centre = np.zeros(shape, bool)
    half = np.zeros(shape, np.float32)
    cls = np.zeros(shape, np.int8)
    for i, (pts, w) in enumerate(zip(points_list, widths)):
        xs, ys = np.floor(pts[:, 0]).astype(int), np.floor(pts[:, 1]).astype(int)
        ok = (xs >= 0) & (ys >= 0) & (xs < shape[1]) & (ys < shape[0])
        xs, ys = xs[ok], ys[ok]
        centre[ys, xs] = True
        half[ys, xs] = np.maximum(half[ys, xs], w / 2)
        if classes is not None:
            cls[ys, xs] = classes[i]
    if not centre.any():
        return None
    dist, (iy, ix) = ndimage.distance_transform_edt(~centre, return_indices=True)
    return dist.astype(np.float32), half[iy, ix], cls[iy, ix]


def _town_style(rng: np.random.Generator, gsd: float, region: Region = REGIONS["rural"]) -> dict:
    """Per-town look: sun, season, haze, sensor noise and colour balance, within the region's ranges."""
    elev = rng.uniform(*region.sun_elevation_deg)
    return {
        "sun_azimuth_deg": round(float(rng.uniform(0, 360)), 2),
        "sun_elevation_deg": round(float(elev), 2),
        "shadow_px_per_m": 1.0 / math.tan(math.radians(elev)) / gsd,
        "greenness": round(float(rng.uniform(*region.greenness)), 3),
        "haze": round(float(rng.uniform(*region.haze)), 3),
        "noise": round(float(rng.uniform(0.006, 0.02)), 4),
        "gains": [round(float(g), 3) for g in rng.uniform(0.92, 1.08, 3)],
        "soil": int(rng.integers(len(region.soils))),
        "roof_weights": [round(float(w), 4) for w in rng.dirichlet(np.full(len(region.roofs), 1.5))],
    }


@dataclass
class _Ctx:
    """What the painting stages of one town share: its random stream, canvas, sun and palette."""

    rng: np.random.Generator
    cfg: TownConfig
    size: int
    m: float  # px per metre
    sun: np.ndarray  # unit vector towards the sun, image x right / y down
    sh: float  # shadow px per metre of height
    green: float
    soil: np.ndarray
    grass: np.ndarray
    yard_col: np.ndarray
    roof_p: np.ndarray
    cv: _Canvas | None = None
    dens: np.ndarray | None = None  # 0..1 how built-up each pixel is
    ctr: np.ndarray | None = None
    theta: float = 0.0  # street-grid orientation
    buildings: list = field(default_factory=list)
    walls: list = field(default_factory=list)
    yard_trees: list = field(default_factory=list)
    reserved: np.ndarray | None = None
    region: Region = REGIONS["rural"]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    @property
    def hs(self) -> float:
        return 3.5 * self.sh  # shadow of a one-storey building

    def roof(self) -> tuple:
        return self.region.roofs[int(self.rng.choice(len(self.region.roofs), p=self.roof_p))]

    def yard(self, corners: np.ndarray) -> None:
        """Packed earth: school yards, walled compounds, markets and swept house plots all share it."""
        rr, cc = _pixels(corners, self.shape)
        self.cv.paint(rr, cc, self.yard_col, texture=(1 + 0.04 * self.rng.standard_normal(rr.size)).astype(np.float32))


def generate_town(seed: int, size: int = 1536, gsd: float = 1.0, *, index: int = 0,
                  config: TownConfig | None = None, region: str = "rural") -> Town:
    """Paint town number ``index`` of demo ``seed``: a square ``size`` px scene at ``gsd`` m/px.

    ``region`` names the look (:data:`REGIONS`); each region draws from its own random stream, and
    ``rural`` from the one the demo always used, so its towns are the same as before regions existed.
    """
    cfg = config or TownConfig()
    reg = region_style(region)
    rng = np.random.default_rng([seed, index] if reg.stream == 0 else [seed, index, reg.stream])
    m = 1.0 / gsd
    st = _town_style(rng, gsd, reg)
    az = math.radians(st["sun_azimuth_deg"])
    green = st["greenness"]
    soil = np.array(reg.soils[st["soil"]], np.float32)
    roof_p = np.array(st["roof_weights"])
    ctx = _Ctx(
        rng=rng, cfg=cfg, size=size, m=m, sun=np.array([math.sin(az), -math.cos(az)]), sh=st["shadow_px_per_m"],
        green=green, soil=soil,
        grass=(np.array(reg.dry_grass) * (1 - green) + np.array(GREEN_GRASS) * green).astype(np.float32),
        yard_col=np.clip(soil * 1.12 + 0.03, 0, 1).astype(np.float32), roof_p=roof_p / roof_p.sum(), region=reg,
    )
    _paint_ground(ctx)
    water = _paint_water(ctx)
    near_road = _paint_roads(ctx)
    schools = _place_schools(ctx)
    for b in ctx.buildings:  # only schools have built so far
        b.kind = "school"
    landmarks = _place_negatives(ctx)
    ctx.cv.occupied |= near_road
    _paint_crops(ctx)
    houses = _place_houses(ctx)
    _paint_trees(ctx)
    cv = ctx.cv
    for b in ctx.buildings:
        _draw_building(cv, b, ctx.sun, rng)
    for corners, colour, height, gate in ctx.walls:
        _draw_wall(cv, corners, colour, height, ctx.sun, gate)
    cv.img[:, cv.shadow & ~cv.raised] *= np.float32(0.5)
    image = _finish(cv.img, st, rng, m)

    place, epsg, east, north = reg.locations[index % len(reg.locations)]
    x0 = float(east + 5000 * (index // len(reg.locations)) + 100 * int(rng.integers(0, 20)))
    y0 = float(north + 100 * int(rng.integers(0, 20)))

    def to_crs(corners):
        return Polygon([(x0 + x * gsd, y0 - y * gsd) for x, y in corners])

    st = {k: v for k, v in st.items() if k != "shadow_px_per_m"} | {"water": water, "houses": houses}
    return Town(
        name=f"town_{index:02d}",
        image=image,
        crs=f"EPSG:{epsg}",
        transform=Affine(gsd, 0.0, x0, 0.0, -gsd, y0),
        gsd=gsd,
        place=place,
        schools=[to_crs(c) for c in schools],
        landmarks=[Landmark(k, to_crs(c)) for k, c in landmarks],
        buildings=[(b.kind, to_crs(b.corners)) for b in ctx.buildings],
        style=st,
    )


def _paint_ground(ctx: _Ctx) -> None:
    """Soil/grass mix at two scales with fine texture; greener away from the built-up centre."""
    rng, size, m, shape = ctx.rng, ctx.size, ctx.m, ctx.shape
    veg = 1 / (1 + np.exp(-(1.4 * _noise(rng, shape, 90 * m) + 0.7 * _noise(rng, shape, 22 * m)
                            + 2.5 * (ctx.green - 0.5))))
    ctx.ctr = np.array([size * rng.uniform(0.35, 0.65), size * rng.uniform(0.35, 0.65)])
    yy, xx = np.ogrid[0:size, 0:size]
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    dens = (np.exp(-(((xx - ctx.ctr[0]) ** 2 + (yy - ctx.ctr[1]) ** 2) / (ctx.region.spread * size) ** 2))
            + 0.2 * _noise(rng, shape, 150 * m))
    ctx.dens = np.clip(dens, 0, 1).astype(np.float32)
    veg = veg * (1 - 0.5 * ctx.dens)
    ground = ctx.soil[:, None, None] * (1 - veg) + ctx.grass[:, None, None] * veg
    ground = ground * (1 + 0.07 * _noise(rng, shape, 4 * m) + 0.04 * _noise(rng, shape, 1.5 * m))[None]
    ctx.cv = _Canvas(ground.astype(np.float32))


def _paint_water(ctx: _Ctx) -> str:
    """A river across the scene or a pond (or none), with a soft sandy shore."""
    rng, size, m, shape, cv = ctx.rng, ctx.size, ctx.m, ctx.shape, ctx.cv
    kind_water = str(rng.choice(["river", "pond", "none"], p=list(ctx.region.water_p)))
    t = rng.uniform(0, 1)
    water_col = (np.array((0.12, 0.20, 0.22)) * (1 - t) + np.array((0.36, 0.35, 0.26)) * t).astype(np.float32)
    if kind_water == "none":
        return kind_water
    if kind_water == "river":
        start = (rng.uniform(0, size), -20) if rng.random() < 0.5 else (-20, rng.uniform(0, size))
        heading = math.pi / 2 if start[1] < 0 else 0.0
        dist, half, _ = _stroke([_walk(rng, start, heading + rng.normal(0, 0.3), size * 1.6, 0.02)],
                                [rng.uniform(14, 35) * m], shape)
        edge = half - dist
    else:
        pc = rng.uniform(0.15, 0.85, 2) * size
        r = rng.uniform(25, 60) * m
        yy, xx = np.ogrid[0:size, 0:size]
        edge = r * (1 + 0.25 * _noise(rng, shape, 30 * m)) - np.hypot(xx.astype(np.float32) - pc[0],
                                                                       yy.astype(np.float32) - pc[1])
    shore = np.clip((edge + 4 * m) / (3 * m), 0, 1)
    wet = np.clip(edge / (4 * m), 0, 1)
    sand = np.clip(ctx.soil * 1.2, 0, 1).astype(np.float32)
    cv.img = cv.img * (1 - shore) + sand[:, None, None] * shore
    wtex = 1 + 0.04 * _noise(rng, shape, 6 * m)
    cv.img = cv.img * (1 - wet) + (water_col[:, None, None] * wtex) * wet
    cv.occupied |= edge > -8 * m
    return kind_water


def _paint_roads(ctx: _Ctx) -> np.ndarray:
    """Main paved roads through the centre, a wobbly street grid where built up, dirt tracks outward.

    Returns the pixels near any road; only paved ones block compounds (a school may sit on a track).
    """
    rng, size, m, shape, cv, ctr, dens = ctx.rng, ctx.size, ctx.m, ctx.shape, ctx.cv, ctx.ctr, ctx.dens
    km2 = (size / m / 1000.0) ** 2
    lines, widths, classes = [], [], []
    for _ in range(int(rng.integers(2, 4))):
        ang = rng.uniform(0, 2 * math.pi)
        start = ctr - np.array([math.cos(ang), math.sin(ang)]) * size * 0.9 + rng.normal(0, 60 * m, 2)
        lines.append(_walk(rng, start, ang, size * 2, 0.01))
        widths.append(rng.uniform(6, 10) * m)
        classes.append(1)
    ctx.theta = theta = rng.uniform(0, math.pi / 2)
    spacing = rng.uniform(*ctx.region.street_spacing_m) * m
    for k in range(-int(size / spacing) - 1, int(size / spacing) + 2):
        for perp in (0, math.pi / 2):
            a = theta + perp
            d = np.array([math.cos(a), math.sin(a)])
            n = np.array([-d[1], d[0]])
            start = ctr + n * (k * spacing + rng.normal(0, 8 * m)) - d * size * 1.5
            pts = _walk(rng, start, a, size * 3, 0.004)
            xi, yi = np.clip(pts[:, 0].astype(int), 0, size - 1), np.clip(pts[:, 1].astype(int), 0, size - 1)
            keep = dens[yi, xi] > 0.45 + 0.1 * rng.random()
            if keep.sum() > 20:
                lines.append(pts[keep])
                paved = rng.random() < ctx.region.paved_share
                widths.append(rng.uniform(4, 7) * m if paved else rng.uniform(3.5, 5.5) * m)
                classes.append(1 if paved else 2)
    for _ in range(int(rng.integers(12, 24) * km2 / 2.36 + 2)):
        base = lines[int(rng.integers(len(lines)))]
        start = base[int(rng.integers(len(base)))]
        lines.append(_walk(rng, start, rng.uniform(0, 2 * math.pi), rng.uniform(100, 500) * m, 0.05))
        widths.append(rng.uniform(2.5, 4) * m)
        classes.append(2)
    dist, half, cls = _stroke(lines, widths, shape, classes)
    alpha = np.clip(half - dist + 0.5, 0, 1)
    shoulder = np.clip(half + 1.5 * m - dist + 0.5, 0, 1) * (cls == 1)
    dirt = np.clip(ctx.soil * 1.18 + 0.04, 0, 1).astype(np.float32)
    road_tex = 1 + 0.05 * _noise(rng, shape, 3 * m)
    cv.img = cv.img * (1 - shoulder) + (dirt[:, None, None] * road_tex) * shoulder
    surface = np.where((cls == 1)[None], np.array(ASPHALT, np.float32)[:, None, None], dirt[:, None, None]) * road_tex
    cv.img = cv.img * (1 - alpha) + surface * alpha
    near_road = dist < half + 2.5 * m
    cv.occupied |= near_road & (cls == 1)
    ctx.reserved = np.zeros(shape, bool)  # compounds plus their spacing
    return near_road


def _place_schools(ctx: _Ctx) -> list[np.ndarray]:
    """Schools: walled yard, 1-3 long classroom blocks (I, II, L, U), often a marked field; corners in px."""
    rng, size, m, cv, cfg, reserved = ctx.rng, ctx.size, ctx.m, ctx.cv, ctx.cfg, ctx.reserved
    km2 = (size / m / 1000.0) ** 2
    hs = ctx.hs
    schools = []
    lo, hi = cfg.schools_per_km2
    n_target = max(cfg.min_schools, int(rng.integers(round(lo * km2), round(hi * km2) + 1)))
    margin = cfg.edge_margin_px
    for _ in range(n_target * 60):
        if len(schools) >= n_target:
            break
        L = rng.uniform(*(ctx.region.school_size_m or cfg.school_size_m)) * m
        W = L * rng.uniform(0.6, 1.0)
        ang = rng.uniform(0, math.pi)
        cx, cy = rng.uniform(margin + L / 2, size - margin - L / 2, 2)
        comp = _rect(cx, cy, -L / 2, L / 2, -W / 2, W / 2, ang)
        if (comp.min() < margin or comp.max() > size - margin or not cv.free(comp, 3 * m)
                or reserved[_box(comp, 0)].any()):
            continue
        reserved[_box(comp, cfg.school_spacing_m * m)] = True  # schools never touch each other
        if ctx.region.school_layout != "blocks":  # the other regions' schools; rural ones below
            _REGION_SCHOOLS[ctx.region.school_layout](ctx, cx, cy, L, W, ang, comp)
            schools.append(comp)
            continue
        cv.occupy(comp, 4 * m)  # but houses may crowd up to the wall
        ctx.yard(comp)
        inset, bw = rng.uniform(3, 7) * m, rng.uniform(7, 10) * m
        layout = rng.choice(["I", "II", "L", "U"], p=[0.2, 0.15, 0.3, 0.35])
        col = ctx.roof()
        u0, u1, v0 = -L / 2 + inset, L / 2 - inset, -W / 2 + inset
        blocks = [(u0, u1, v0, v0 + bw)]
        if layout == "II":
            blocks.append((u0 + rng.uniform(0, 0.3) * L, u1, v0 + bw + rng.uniform(8, 14) * m, v0 + 2 * bw + 11 * m))
        side = rng.uniform(0.45, 0.7) * W
        if layout in ("L", "U"):
            blocks.append((u0, u0 + bw, v0 + bw + 2 * m, v0 + bw + side))
        if layout == "U":
            blocks.append((u1 - bw, u1, v0 + bw + 2 * m, v0 + bw + side))
        for b in blocks:
            ctx.buildings.append(_Building(_rect(cx, cy, *b, ang), col, hs, ridge=rng.random() < 0.8, corrugated=True))
        # free part of the yard: between the side blocks, below the top block(s)
        fu0 = u0 + (bw + 3 * m if layout in ("L", "U") else 0)
        fu1 = u1 - (bw + 3 * m if layout == "U" else 0)
        fv0 = max(b[3] for b in blocks) + 4 * m
        fv1 = W / 2 - inset
        if rng.random() < 0.7 and fv1 - fv0 > 18 * m and fu1 - fu0 > 25 * m:
            fl = min((fu1 - fu0) * rng.uniform(0.75, 0.95), 100 * m)
            fw = min((fv1 - fv0) * rng.uniform(0.8, 0.95), fl * 0.7)
            fc = _rect(cx, cy, (fu0 + fu1) / 2, (fu0 + fu1) / 2, (fv0 + fv1) / 2, (fv0 + fv1) / 2, ang)[0]
            fcol = ctx.grass * rng.uniform(0.9, 1.05) if rng.random() < 0.6 else ctx.yard_col * 0.95
            _draw_field(cv, fc[0], fc[1], fl, fw, ang, fcol, m)
        elif rng.random() < 0.5:  # a latrine block in a corner of the yard
            ctx.buildings.append(_Building(_rect(cx, cy, fu1 - 8 * m, fu1 - 2 * m, fv1 - 5 * m, fv1, ang), ctx.roof(),
                                           hs * 0.8))
        for _ in range(int(rng.integers(0, 4))):
            p = _rect(cx, cy, *(rng.uniform(-0.45, 0.45) * L,) * 2, *(rng.uniform(0.1, 0.45) * W,) * 2, ang)[0]
            ctx.yard_trees.append((p[0], p[1], rng.uniform(2, 4) * m))
        ctx.walls.append((comp, WALLS[int(rng.integers(len(WALLS)))], 2.0 * ctx.sh, int(rng.integers(4))))
        schools.append(comp)
    return schools


def _place_negatives(ctx: _Ctx) -> list[tuple[str, np.ndarray]]:
    """Hard negatives: each shares some part of a school (yard, wall, long roofs, field), never all of it."""
    rng, size, m, cv, cfg, reserved = ctx.rng, ctx.size, ctx.m, ctx.cv, ctx.cfg, ctx.reserved
    km2 = (size / m / 1000.0) ** 2
    landmarks: list[tuple[str, np.ndarray]] = []
    n_neg = max(int(round(cfg.negatives_per_km2 * km2 * rng.uniform(0.85, 1.15))),
                len(ctx.region.negative_kinds) if km2 > 0.5 else 3)
    own, k = ctx.region.negative_kinds, len(ctx.region.negative_kinds)
    kinds = [own[(i + int(rng.integers(k))) % k] if i >= k else own[i] for i in range(n_neg)]
    kinds += [ctx.region.closest] * (n_neg // 3)  # the closest look-alike, so the most frequent
    for kind in kinds:
        for _try in range(40):
            L = rng.uniform(40, 115) * m
            W = L * rng.uniform(0.55, 1.0)
            ang = rng.uniform(0, math.pi)
            cx, cy = rng.uniform(L / 2 + 8, size - L / 2 - 8, 2)
            comp = _rect(cx, cy, -L / 2, L / 2, -W / 2, W / 2, ang)
            if comp.min() < 4 or comp.max() > size - 4 or not cv.free(comp, 3 * m) or reserved[_box(comp, 0)].any():
                continue
            reserved[_box(comp, 12 * m)] = True
            cv.occupy(comp, 4 * m)
            first = len(ctx.buildings)
            _paint_negative(ctx, kind, cx, cy, L, W, ang, comp)
            for b in ctx.buildings[first:]:
                b.kind = kind
            landmarks.append((kind, comp))
            break
    return landmarks


def _paint_crops(ctx: _Ctx) -> None:
    """Crop fields with row patterns where the town thins out."""
    rng, size, m, cv = ctx.rng, ctx.size, ctx.m, ctx.cv
    km2 = (size / m / 1000.0) ** 2
    rural = ctx.dens < 0.3
    for _ in range(int(ctx.cfg.fields_per_km2 * km2 * 3 * ctx.region.crop_factor)):
        fl, fw = rng.uniform(40, 170, 2) * m
        ang = rng.uniform(0, math.pi)
        cx, cy = rng.uniform(0, size, 2)
        if not rural[int(cy), int(cx)]:
            continue
        corners = _rect(cx, cy, -fl / 2, fl / 2, -fw / 2, fw / 2, ang)
        cx0, cy0 = np.clip(corners.min(0).astype(int), 0, size - 1)
        cx1, cy1 = np.clip(corners.max(0).astype(int), 0, size - 1)
        if cv.occupied[cy0 : cy1 + 1, cx0 : cx1 + 1].mean() > 0.02:
            continue
        rr, cc = _pixels(corners, ctx.shape)
        if rr.size == 0:
            continue
        crop = rng.choice(3)
        base = (ctx.grass * rng.uniform(0.75, 1.1), ctx.soil * rng.uniform(0.8, 1.0),
                np.array(DRY_GRASS) * rng.uniform(0.9, 1.15))[crop]
        period = rng.uniform(2.5, 6) * m
        s = (cc * math.cos(ang) + rr * math.sin(ang)) * 2 * math.pi / period
        cv.paint(rr, cc, base, texture=(1 + 0.12 * np.sin(s)).astype(np.float32))
        cv.occupied[cy0 : cy1 + 1, cx0 : cx1 + 1] = True


def _place_houses(ctx: _Ctx) -> int:
    """Many small gable or flat roofs aligned to the street grid, densest in the centre; returns the count.

    Candidates are drawn in one vectorised batch; the loop only checks and marks occupancy.
    """
    rng, size, m, cv = ctx.rng, ctx.size, ctx.m, ctx.cv
    km2 = (size / m / 1000.0) ** 2
    n_houses = int(ctx.cfg.houses_per_km2 * ctx.region.houses_factor * km2)
    reg = ctx.region
    if reg.terraced:
        centres, hl, hw, angs = _terraces(ctx)
        n_cand = len(centres)
    else:
        weights = (ctx.dens**1.5).ravel().astype(np.float64)
        n_cand = n_houses * 5
        cand = rng.choice(size * size, size=n_cand, p=weights / weights.sum())
        cy, cx = np.divmod(cand, size)
        centres = np.stack([cx, cy], 1) + rng.random((n_cand, 2))
        hl, hw = rng.uniform(*reg.house_length_m, n_cand) * m, rng.uniform(*reg.house_width_m, n_cand) * m
        angs = ctx.theta + rng.integers(0, 2, n_cand) * (math.pi / 2) + rng.normal(0, 0.12, n_cand)
    du = np.stack([np.cos(angs), np.sin(angs)], 1)
    dv = np.stack([-du[:, 1], du[:, 0]], 1)
    sign = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], float)
    corners_all = centres[:, None] + (sign[None, :, :1] * hl[:, None, None] / 2) * du[:, None] \
        + (sign[None, :, 1:] * hw[:, None, None] / 2) * dv[:, None]
    lo_xy = np.floor(corners_all.min(1) - reg.house_gap_m * m).astype(int)
    hi_xy = np.ceil(corners_all.max(1) + reg.house_gap_m * m).astype(int)
    plot, heights = rng.random(n_cand) < reg.plot_share, ctx.hs * rng.uniform(*reg.house_height, n_cand)
    ridged, corr = rng.random(n_cand) < reg.ridge_share, rng.random(n_cand) < reg.corrugated_share
    roofs = rng.choice(len(reg.roofs), size=n_cand, p=ctx.roof_p)
    placed = 0
    occ = cv.occupied
    for i in range(n_cand):
        if placed >= n_houses:
            break
        (x0, y0), (x1, y1) = lo_xy[i], hi_xy[i]
        if reg.terraced:  # packed rotated houses: test the footprint, as their boxes overlap
            rr, cc = _pixels(corners_all[i], occ.shape)
            if x0 < 0 or y0 < 0 or x1 >= size or y1 >= size or occ[rr, cc].any():
                continue
        elif x0 < 0 or y0 < 0 or x1 >= size or y1 >= size or occ[y0 : y1 + 1, x0 : x1 + 1].any():
            continue
        if plot[i]:  # swept-earth plot around the house
            plot_rect = _rect(*centres[i], -hl[i] / 2 - 3 * m, hl[i] / 2 + 3 * m, -hw[i] / 2 - 3 * m,
                              hw[i] / 2 + 3 * m, angs[i])
            ctx.yard(plot_rect)
            if reg.plot_walls:  # a family compound: the plot walled in
                ctx.walls.append((plot_rect, WALLS[int(rng.integers(len(WALLS)))], 2.0 * ctx.sh, int(rng.integers(4))))
        if reg.terraced:
            occ[rr, cc] = True
        else:
            occ[y0 + 1 : y1, x0 + 1 : x1] = True
        ctx.buildings.append(_Building(corners_all[i], reg.roofs[roofs[i]], heights[i], ridge=bool(ridged[i]),
                                       corrugated=bool(corr[i])))
        placed += 1
    return placed


def _terraces(ctx: _Ctx) -> tuple:
    """Dense blocks: house candidates on a jittered lattice along the street grid, in random order.

    Random placement jams at about half the free ground; a lattice fills a block as terraced
    multi-storey houses do. Returns centres (n, 2) px, lengths, widths (px) and angles.
    """
    rng, size, m, reg = ctx.rng, ctx.size, ctx.m, ctx.region
    su = rng.uniform(*reg.house_length_m) * m + reg.house_gap_m * m
    sv = rng.uniform(*reg.house_width_m) * m + reg.house_gap_m * m
    gu, gv = np.meshgrid(np.arange(-size, size, su), np.arange(-size, size, sv))
    d0 = np.array([math.cos(ctx.theta), math.sin(ctx.theta)])
    d1 = np.array([-d0[1], d0[0]])
    pts = ctx.ctr + gu.ravel()[:, None] * d0 + gv.ravel()[:, None] * d1
    pts = pts[(pts >= 0).all(1) & (pts < size - 1).all(1)]
    pts = pts[rng.random(len(pts)) < ctx.dens[pts[:, 1].astype(int), pts[:, 0].astype(int)] ** 0.5]
    pts = pts[rng.permutation(len(pts))] + rng.normal(0, 0.4 * m, (len(pts), 2))
    n = len(pts)
    hl = su - reg.house_gap_m * m - rng.uniform(0, 3, n) * m
    hw = sv - reg.house_gap_m * m - rng.uniform(0, 2, n) * m
    return pts, hl, hw, ctx.theta + rng.normal(0, 0.015, n)


def _paint_trees(ctx: _Ctx) -> None:
    """Clumpy crowns as domes (distance to scattered trunks), sun-shaded and casting shadows."""
    rng, size, m, shape, cv, sun = ctx.rng, ctx.size, ctx.m, ctx.shape, ctx.cv, ctx.sun
    tree_p = ((0.0015 + 0.006 * ctx.green) * ctx.region.tree_factor
              * np.clip(0.6 + 0.8 * _noise(rng, shape, 40 * m), 0, 3) / m**2)
    trunks = (rng.random(shape, dtype=np.float32) < tree_p) & ~cv.occupied
    for x, y, _r in ctx.yard_trees:
        if 0 <= int(y) < size and 0 <= int(x) < size:
            trunks[int(y), int(x)] = True
    radius = np.zeros(shape, np.float32)
    radius[trunks] = rng.uniform(1.5, 4.5, int(trunks.sum())) * m
    for x, y, r in ctx.yard_trees:
        if 0 <= int(y) < size and 0 <= int(x) < size:
            radius[int(y), int(x)] = r
    if not trunks.any():
        return
    d, (iy, ix) = ndimage.distance_transform_edt(~trunks, return_indices=True)
    r = radius[iy, ix]
    hmap = np.sqrt(np.clip(r**2 - d**2, 0, None)).astype(np.float32)
    canopy = hmap > 0
    gy, gx = np.gradient(hmap)
    shade = np.clip(0.85 + 0.25 * (gx * sun[0] + gy * sun[1]), 0.55, 1.25) * (1 + 0.12 * _noise(rng, shape, 1.2 * m))
    tcol = (np.array(TREE) * (0.8 + 0.4 * ctx.green)).astype(np.float32)
    cv.img = np.where(canopy[None], tcol[:, None, None] * shade[None], cv.img).astype(np.float32)
    cv.raised |= canopy
    off = -sun * 6 * ctx.sh
    cv.shadow |= ndimage.shift(canopy, (off[1], off[0]), order=0, mode="constant", cval=False)


def _paint_negative(ctx: _Ctx, kind: str, cx: float, cy: float, L: float, W: float, ang: float,
                    comp: np.ndarray) -> None:
    """Paint one hard negative of ``kind`` into the compound rectangle ``comp`` (L x W px, rotated ``ang``)."""
    if kind in _REGION_NEGATIVES:
        _REGION_NEGATIVES[kind](ctx, cx, cy, L, W, ang, comp)
        return
    cv, rng, m, hs, sh, roof, yard = ctx.cv, ctx.rng, ctx.m, ctx.hs, ctx.sh, ctx.roof, ctx.yard
    yard_col, grass, buildings, walls, yard_trees = ctx.yard_col, ctx.grass, ctx.buildings, ctx.walls, ctx.yard_trees
    wall_col = WALLS[int(rng.integers(len(WALLS)))]
    if kind == "warehouse":  # big corrugated sheds on a concrete apron, no wall, no yard
        rr, cc = _pixels(comp, cv.shape)
        cv.paint(rr, cc, np.array(ASPHALT) * rng.uniform(1.1, 1.6))
        n = int(rng.integers(1, 3))
        for i in range(n):
            v0 = -W / 2 + 5 * m + i * (W - 10 * m) / n
            buildings.append(_Building(_rect(cx, cy, -L / 2 + 6 * m, L / 2 - 6 * m, v0, v0 + (W - 10 * m) / n - 4 * m,
                                             ang),
                                       roof(), hs * 1.8, ridge=rng.random() < 0.5, corrugated=True))
        if rng.random() < 0.4:
            walls.append((comp, wall_col, 2.0 * sh, int(rng.integers(4))))
    elif kind == "market":  # many small stalls in rows on bare ground
        yard(comp)
        step_u, step_v = rng.uniform(5, 8) * m, rng.uniform(6, 9) * m
        for u in np.arange(-L / 2 + 4 * m, L / 2 - 6 * m, step_u):
            for v in np.arange(-W / 2 + 4 * m, W / 2 - 6 * m, step_v):
                if rng.random() < 0.85:
                    buildings.append(_Building(_rect(cx, cy, u, u + step_u - 1.5 * m, v, v + step_v - 3 * m, ang),
                                               roof(), hs * 0.6, ridge=False))
    elif kind == "clinic":  # long blocks like classrooms, in a comb, amid grass and trees, no wall
        col = roof()
        n = int(rng.integers(2, 4))
        bw = rng.uniform(7, 10) * m
        for i in range(n):
            v0 = -W / 2 + 4 * m + i * (W - 8 * m) / n
            buildings.append(_Building(_rect(cx, cy, -L / 2 + 8 * m, L / 2 - 4 * m, v0, v0 + bw, ang), col, hs,
                                       corrugated=True))
        buildings.append(_Building(_rect(cx, cy, -L / 2 + 2 * m, -L / 2 + 6 * m, -W / 2 + 4 * m, W / 2 - 6 * m, ang),
                                   col, hs * 0.7, ridge=False))
        for _ in range(int(rng.integers(2, 6))):
            p = _rect(cx, cy, *(rng.uniform(-0.5, 0.5) * L,) * 2, *(rng.uniform(-0.5, 0.5) * W,) * 2, ang)[0]
            yard_trees.append((p[0], p[1], rng.uniform(2, 4.5) * m))
    elif kind == "sports_field":  # a marked pitch with no school around it
        fl, fw = L * 0.9, min(W * 0.9, L * 0.65)
        fcol = grass * rng.uniform(0.9, 1.05) if rng.random() < 0.6 else yard_col * 0.95
        _draw_field(cv, cx, cy, fl, fw, ang, fcol, m)
    elif kind == "park":  # lawn, tree clumps, paths
        rr, cc = _pixels(comp, cv.shape)
        cv.paint(rr, cc, np.array(GREEN_GRASS) * rng.uniform(0.9, 1.2))
        for v in (-W / 4, W / 4):
            path = _rect(cx, cy, -L / 2, L / 2, v - 1 * m, v + 1 * m, ang + rng.normal(0, 0.2))
            rr, cc = _pixels(path, cv.shape)
            cv.paint(rr, cc, yard_col)
        for _ in range(int(rng.integers(6, 16))):
            p = _rect(cx, cy, *(rng.uniform(-0.45, 0.45) * L,) * 2, *(rng.uniform(-0.45, 0.45) * W,) * 2, ang)[0]
            yard_trees.append((p[0], p[1], rng.uniform(2.5, 5) * m))
    elif kind == "walled_compound":  # wall + bare yard, but small square houses (or nothing), no long blocks
        yard(comp)
        walls.append((comp, wall_col, 2.0 * sh, int(rng.integers(4))))
        for _ in range(int(rng.integers(0, 5))):
            s1, s2 = rng.uniform(7, 14, 2) * m
            u, v = rng.uniform(-L / 2 + 4 * m, L / 2 - 4 * m - s1), rng.uniform(-W / 2 + 4 * m, W / 2 - 4 * m - s2)
            buildings.append(_Building(_rect(cx, cy, u, u + s1, v, v + s2, ang), roof(), hs, ridge=rng.random() < 0.6))
        for _ in range(int(rng.integers(0, 4))):
            p = _rect(cx, cy, *(rng.uniform(-0.4, 0.4) * L,) * 2, *(rng.uniform(-0.4, 0.4) * W,) * 2, ang)[0]
            yard_trees.append((p[0], p[1], rng.uniform(2, 4) * m))
    elif kind == "dense_housing":  # tightly packed small houses with narrow lanes
        yard(comp)
        for u in np.arange(-L / 2 + 2 * m, L / 2 - 8 * m, 10 * m):
            for v in np.arange(-W / 2 + 2 * m, W / 2 - 7 * m, 9 * m):
                du, dv = rng.uniform(6, 9) * m, rng.uniform(5, 7.5) * m
                buildings.append(_Building(_rect(cx, cy, u, u + du, v, v + dv, ang + rng.normal(0, 0.05)), roof(),
                                           hs * rng.uniform(0.8, 1.2), ridge=rng.random() < 0.7))


# --------------------------------------------------------------------------- the other regions' schools and look-alikes


def _ring(ctx: _Ctx, cx, cy, u0, u1, v0, v1, bw, ang, open_side: int | None, col, height) -> tuple:
    """A courtyard building of flat wings ``bw`` deep; returns the courtyard as local (u0, u1, v0, v1).

    Closed, or with wing ``open_side`` (0 top, 1 right, 2 bottom, 3 left) left out.
    """
    vb = v1 if open_side == 2 else v1 - bw
    wings = {0: (u0, u1, v0, v0 + bw), 1: (u1 - bw, u1, v0 + bw, vb), 2: (u0, u1, v1 - bw, v1),
             3: (u0, u0 + bw, v0 + bw, vb)}
    wings.pop(open_side, None)
    for w in wings.values():
        ctx.buildings.append(_Building(_rect(cx, cy, *w, ang), col, height, ridge=False))
    return (u0 if open_side == 3 else u0 + bw, u1 if open_side == 1 else u1 - bw,
            v0 if open_side == 0 else v0 + bw, vb)


def _school_courtyard(ctx: _Ctx, cx, cy, L, W, ang, comp) -> None:
    """Urban school: a walled plot, a 2-4 storey courtyard building and a marked court in the courtyard."""
    rng, m, cv = ctx.rng, ctx.m, ctx.cv
    cv.occupy(comp, 1 * m)  # neighbours crowd right up to the wall
    ctx.yard(comp)
    t, bw = rng.uniform(2, 5) * m, rng.uniform(9, 12) * m
    bw = min(bw, (min(L, W) - 2 * t) / 3.2)  # the courtyard at least as deep as a wing
    u0, u1, v0, v1 = -L / 2 + t, L / 2 - t, -W / 2 + t, W / 2 - t
    open_side = None if rng.random() < 0.5 else 2  # closed ring, or a U open towards the gate side
    iu0, iu1, iv0, iv1 = _ring(ctx, cx, cy, u0, u1, v0, v1, bw, ang, open_side, ctx.roof(),
                               ctx.hs * rng.uniform(2.0, 3.5))
    cu, cvv = (iu0 + iu1) / 2, (iv0 + iv1) / 2
    fl, fw = (iu1 - iu0) * rng.uniform(0.75, 0.9), (iv1 - iv0) * rng.uniform(0.7, 0.85)
    fc = _rect(cx, cy, cu, cu, cvv, cvv, ang)[0]
    court = (ctx.yard_col * 0.92, np.array((0.44, 0.52, 0.40)), np.array((0.56, 0.36, 0.30)))[int(rng.integers(3))]
    _draw_field(cv, fc[0], fc[1], max(fl, fw), min(fl, fw), ang if fl >= fw else ang + math.pi / 2, court, m)
    for _ in range(int(rng.integers(0, 3))):
        p = _rect(cx, cy, *(rng.uniform(iu0, iu1),) * 2, *(rng.uniform(iv0, iv1),) * 2, ang)[0]
        ctx.yard_trees.append((p[0], p[1], rng.uniform(2, 3.5) * m))
    ctx.walls.append((comp, WALLS[int(rng.integers(len(WALLS)))], 2.0 * ctx.sh, 2))


def _school_rows(ctx: _Ctx, cx, cy, L, W, ang, comp) -> None:
    """Arid school: a large walled yard, 1-3 parallel rows of flat-roofed classrooms and a dirt pitch."""
    rng, m, cv = ctx.rng, ctx.m, ctx.cv
    cv.occupy(comp, 4 * m)
    ctx.yard(comp)
    inset, bw, gap = rng.uniform(4, 8) * m, rng.uniform(7, 10) * m, rng.uniform(6, 10) * m
    col = ctx.roof()
    u0, v0 = -L / 2 + inset, -W / 2 + inset
    rows = max(1, min(int(rng.integers(1, 4)), int((W - 2 * inset + gap) // (bw + gap))))
    for k in range(rows):
        length = (L - 2 * inset) * rng.uniform(0.5, 0.85)
        a = u0 + rng.uniform(0, L - 2 * inset - length)
        vk = v0 + k * (bw + gap)
        ctx.buildings.append(_Building(_rect(cx, cy, a, a + length, vk, vk + bw, ang), col, ctx.hs,
                                       ridge=rng.random() < 0.2, corrugated=rng.random() < 0.5))
    fv0, fv1 = v0 + rows * (bw + gap), W / 2 - inset
    fu0, fu1 = u0, L / 2 - inset
    if fv1 - fv0 > 18 * m and rng.random() < 0.85:
        fl = min((fu1 - fu0) * rng.uniform(0.7, 0.95), 100 * m)
        fw = min((fv1 - fv0) * rng.uniform(0.8, 0.95), fl * 0.7)
        fc = _rect(cx, cy, (fu0 + fu1) / 2, (fu0 + fu1) / 2, (fv0 + fv1) / 2, (fv0 + fv1) / 2, ang)[0]
        _draw_field(cv, fc[0], fc[1], fl, fw, ang, ctx.soil * rng.uniform(0.88, 0.97), m)
    for _ in range(int(rng.integers(1, 5))):  # shade trees along the wall
        u = rng.uniform(-0.45, 0.45) * L
        v = rng.uniform(0.3, 0.45) * W * rng.choice([-1, 1])
        p = _rect(cx, cy, u, u, v, v, ang)[0]
        ctx.yard_trees.append((p[0], p[1], rng.uniform(2.5, 4.5) * m))
    ctx.walls.append((comp, WALLS[int(rng.integers(len(WALLS)))], 2.5 * ctx.sh, int(rng.integers(4))))


def _apartment_courtyard(ctx: _Ctx, cx, cy, L, W, ang, comp) -> None:
    """Urban look-alike: a courtyard block of flats, courtyard full of parked cars, sheds or shade, no court."""
    rng, m = ctx.rng, ctx.m
    t, bw = rng.uniform(0, 3) * m, rng.uniform(9, 13) * m
    bw = min(bw, (min(L, W) - 2 * t) / 3.2)
    iu0, iu1, iv0, iv1 = _ring(ctx, cx, cy, -L / 2 + t, L / 2 - t, -W / 2 + t, W / 2 - t, bw, ang,
                               None if rng.random() < 0.6 else int(rng.integers(4)), ctx.roof(),
                               ctx.hs * rng.uniform(2.0, 4.5))
    ctx.yard(_rect(cx, cy, iu0, iu1, iv0, iv1, ang))
    for _ in range(int(rng.integers(4, 16)) if iu1 - iu0 > 8 * m and iv1 - iv0 > 5 * m else 0):  # cars, sheds
        u, v = rng.uniform(iu0, iu1 - 5 * m), rng.uniform(iv0, iv1 - 3 * m)
        car = (np.array(ctx.roof()) * rng.uniform(0.6, 1.2)).clip(0, 1)
        ctx.buildings.append(_Building(_rect(cx, cy, u, u + rng.uniform(4, 6) * m, v, v + 2 * m, ang),
                                       tuple(car), ctx.hs * 0.3, ridge=False))
    for _ in range(int(rng.integers(0, 3))):
        p = _rect(cx, cy, *(rng.uniform(iu0, iu1),) * 2, *(rng.uniform(iv0, iv1),) * 2, ang)[0]
        ctx.yard_trees.append((p[0], p[1], rng.uniform(2, 4) * m))
    if rng.random() < 0.3:
        ctx.walls.append((comp, WALLS[int(rng.integers(len(WALLS)))], 2.0 * ctx.sh, int(rng.integers(4))))


def _mosque(ctx: _Ctx, cx, cy, L, W, ang, comp) -> None:
    """Arid look-alike: a walled yard with one large square prayer hall and a small tall tower."""
    rng, m = ctx.rng, ctx.m
    ctx.yard(comp)
    side = min(L, W) * rng.uniform(0.45, 0.65)
    u0 = -L / 2 + rng.uniform(3, 6) * m
    ctx.buildings.append(_Building(_rect(cx, cy, u0, u0 + side, -side / 2, side / 2, ang), ctx.roof(),
                                   ctx.hs * 1.5, ridge=False))
    ctx.buildings.append(_Building(_rect(cx, cy, u0 + side + 1 * m, u0 + side + 5 * m, -2 * m, 2 * m, ang),
                                   ctx.roof(), ctx.hs * 4, ridge=False))
    for _ in range(int(rng.integers(0, 4))):
        p = _rect(cx, cy, *(rng.uniform(0, 0.45) * L,) * 2, *(rng.uniform(-0.45, 0.45) * W,) * 2, ang)[0]
        ctx.yard_trees.append((p[0], p[1], rng.uniform(2, 4) * m))
    ctx.walls.append((comp, WALLS[int(rng.integers(len(WALLS)))], 2.0 * ctx.sh, int(rng.integers(4))))


_REGION_SCHOOLS = {"courtyard": _school_courtyard, "rows": _school_rows}
_REGION_NEGATIVES = {"apartment_courtyard": _apartment_courtyard, "mosque": _mosque}


def _finish(img: np.ndarray, st: dict, rng: np.random.Generator, m: float) -> np.ndarray:
    """Camera look: optics blur, colour balance, haze, sensor noise, 8-bit quantisation."""
    img = ndimage.gaussian_filter(img, (0, 0.55, 0.55))
    img *= np.asarray(st["gains"], np.float32)[:, None, None]
    haze = np.float32(st["haze"]) * (1 + 0.5 * _noise(rng, img.shape[1:], 300 * m))[None]
    img = img * (1 - haze) + np.float32(0.78) * haze * np.array([0.95, 0.98, 1.05], np.float32)[:, None, None]
    img += np.float32(st["noise"]) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- writing the demo


def _params(towns: int, seed: int, size: int, gsd: float, config: TownConfig) -> dict:
    """Everything that determines the output, as plain JSON values (compared on re-runs)."""
    cfg = json.loads(json.dumps(asdict(config)))
    return {"towns": int(towns), "seed": int(seed), "size": int(size), "gsd": float(gsd), "config": cfg}


def _same_demo(out: Path, params: dict) -> bool:
    """Whether ``out/demo.json`` records these very parameters (then re-running rewrites the same files)."""
    try:
        return json.loads((out / "demo.json").read_text()).get("parameters") == params
    except (OSError, ValueError):
        return False


def make_demo(out_dir, towns: int = 6, seed: int = 0, size: int = 1536, gsd: float = 1.0, overwrite: bool = False,
              config: TownConfig | None = None, region: str = "rural",
              registry_missing: float = RegistryRules.missing, registry_displaced: float = RegistryRules.displaced,
              registry_false: int = RegistryRules.false) -> DemoInfo:
    """Write ``towns`` synthetic scenes, their school footprints and hard negatives to ``out_dir``.

    The same parameters regenerate byte-identical files, so the demo can stand in for downloaded
    imagery in tests and in the book.

    Args:
        out_dir: folder to write ``scenes/town_NN.tif``, ``schools.geojson``, ``landmarks.geojson``,
            ``buildings.geojson`` (the footprint of every roof drawn, with its ``kind``: house, school
            or the hard negative's kind), ``registry.csv``, ``registry_truth.csv`` and ``demo.json``
            (the parameters) into.
        towns: number of towns, one scene each.
        seed: seeds every town (town ``i`` draws from ``(seed, i)``).
        size: scene width and height in pixels (at least 256).
        gsd: ground sampling distance in metres per pixel.
        overwrite: replace a non-empty folder that is not this very demo.
        config: how towns are drawn (defaults: ``TownConfig()``).
        region: the towns' look, a key of :data:`REGIONS` (``rural``: the original demo).
        registry_missing: share of each town's schools left out of ``registry.csv``.
        registry_displaced: share of the listed schools placed 100-500 m off.
        registry_false: look-alikes per town listed as schools. ``registry_truth.csv`` records what
            each row is (rules: :mod:`schoolvision.data.registry`).

    Returns:
        The written paths and the number of schools and hard negatives per town.

    Raises:
        UserError: a parameter is out of range, or ``out_dir`` holds something else (or is a file)
            and ``overwrite`` is not set.
    """
    out = Path(out_dir)
    check_range("--towns", towns, minimum=1)
    check_range("--size", size, minimum=256)
    check_range("--gsd", gsd, above=0)
    config = config or TownConfig()
    reg = region_style(region)
    rules = RegistryRules(missing=registry_missing, displaced=registry_displaced, false=registry_false)
    params = _params(towns, seed, size, gsd, config)
    params |= json.loads(json.dumps({"region": region, "registry": asdict(rules)}))
    prepare_output(out, overwrite, create=False,
                   own_files=("scenes/town_*.tif", "schools.geojson", "landmarks.geojson", "buildings.geojson",
                              "registry.csv", "registry_truth.csv", "demo.json"),
                   is_same=lambda o: _same_demo(o, params),
                   message="folder already holds something else; pass --overwrite (overwrite=True) or another --out")
    scenes, rows, marks, per_town, roofs, frames = [], [], [], [], [], []
    for i in tqdm(range(towns), desc="towns", leave=False):
        town = generate_town(seed, size, gsd, index=i, config=config, region=region)
        path = out / "scenes" / f"{town.name}.tif"
        write_geotiff(path, town.image, town.crs, town.transform, overviews=True, photometric="RGB")
        scenes.append(path)
        sgdf = gpd.GeoDataFrame(
            {"name": [f"School {town.name} #{k + 1}" for k in range(len(town.schools))], "scene": town.name},
            geometry=town.schools, crs=town.crs,
        ).to_crs("EPSG:4326")
        rows.append(sgdf)
        lgdf = gpd.GeoDataFrame(
            {"kind": [lm.kind for lm in town.landmarks],
             "name": [f"{lm.kind} {town.name} #{k + 1}" for k, lm in enumerate(town.landmarks)], "scene": town.name},
            geometry=[lm.polygon for lm in town.landmarks], crs=town.crs,
        ).to_crs("EPSG:4326")
        marks.append(lgdf)
        roofs.append(gpd.GeoDataFrame({"kind": [k for k, _ in town.buildings], "scene": town.name},
                                      geometry=[g for _, g in town.buildings], crs=town.crs).to_crs("EPSG:4326"))
        kinds = {k: sum(lm.kind == k for lm in town.landmarks) for k in reg.negative_kinds}
        left, top = town.transform.c, town.transform.f
        frames.append({"name": town.name, "crs": town.crs, "bounds": (left, top - size * gsd, left + size * gsd, top)})
        per_town.append({"name": town.name, "path": f"scenes/{town.name}.tif", "crs": town.crs, "place": town.place,
                         "gsd": gsd, "size": size, "schools": len(town.schools), "landmarks": kinds,
                         "style": town.style})

    def rounded(gdf):
        gdf = gdf.copy()
        gdf["geometry"] = shapely.transform(gdf.geometry.values, lambda xy: np.round(xy, 7))
        return gdf

    schools = rounded(gpd.GeoDataFrame(pd.concat(rows, ignore_index=True), crs="EPSG:4326"))
    landmarks = rounded(gpd.GeoDataFrame(pd.concat(marks, ignore_index=True), crs="EPSG:4326"))
    buildings = rounded(gpd.GeoDataFrame(pd.concat(roofs, ignore_index=True), crs="EPSG:4326"))
    for gdf, name in ((schools, "schools"), (landmarks, "landmarks"), (buildings, "buildings")):
        # not io.vectors.write_vectors: it lets GDAL name the collection after the random temporary file
        with atomic_path(out / f"{name}.geojson") as tmp:
            gdf.to_file(tmp, driver="GeoJSON", layer=name)
    registry, truth = make_registry(schools, landmarks, frames, seed=seed, rules=rules, closest=reg.closest,
                                    stream=reg.stream)
    write_text(out / "registry.csv", registry.to_csv(index=False, lineterminator="\n"))
    write_text(out / "registry_truth.csv", truth.to_csv(index=False, lineterminator="\n"))
    for t in per_town:
        t["registry"] = {s: int(((truth["scene"] == t["name"]) & (truth["status"] == s)).sum()) for s in STATUSES}
    meta = write_json(out / "demo.json", {
        "parameters": params,
        "generator": "schoolvision.data.synthetic",
        "schools": "schools.geojson",
        "landmarks": "landmarks.geojson",
        "buildings": "buildings.geojson",
        "registry": "registry.csv",
        "registry_truth": "registry_truth.csv",
        "region": region,
        "towns": per_town,
        "total_schools": int(len(schools)),
    })
    return DemoInfo(out, scenes, out / "schools.geojson", out / "landmarks.geojson", meta,
                    {t["name"]: t["schools"] for t in per_town},
                    {t["name"]: sum(t["landmarks"].values()) for t in per_town}, out / "buildings.geojson",
                    out / "registry.csv", out / "registry_truth.csv")
