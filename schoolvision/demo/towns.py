"""One synthetic town: the painting stages in order, the camera look, and its georeference.

Everything is drawn in pixel units from sizes in metres (``gsd`` m/px) and seeded per town, so the
same seed gives byte-identical images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from affine import Affine
from scipy import ndimage
from shapely.geometry import Polygon

from schoolvision.demo.canvas import draw_building, draw_wall, noise
from schoolvision.demo.context import TownContext
from schoolvision.demo.houses import place_houses
from schoolvision.demo.landscape import paint_crops, paint_ground, paint_roads, paint_trees, paint_water
from schoolvision.demo.lookalikes import place_lookalikes
from schoolvision.demo.regions import GREEN_GRASS, REGIONS, Region, TownConfig, region_style
from schoolvision.demo.schools import place_schools


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
    ctx = TownContext(
        rng=rng, cfg=cfg, size=size, m=m, sun=np.array([math.sin(az), -math.cos(az)]), sh=st["shadow_px_per_m"],
        green=green, soil=soil,
        grass=(np.array(reg.dry_grass) * (1 - green) + np.array(GREEN_GRASS) * green).astype(np.float32),
        yard_col=np.clip(soil * 1.12 + 0.03, 0, 1).astype(np.float32), roof_p=roof_p / roof_p.sum(), region=reg,
    )
    schools, landmarks, water, houses = _paint_stages(ctx)
    image = _finish(ctx.cv.img, st, rng, m)

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


def _paint_stages(ctx: TownContext) -> tuple[list, list, str, int]:
    """Paint the town in its fixed order; returns school corners, (kind, corners) of look-alikes, water, houses."""
    paint_ground(ctx)
    water = paint_water(ctx)
    near_road = paint_roads(ctx)
    schools = place_schools(ctx)
    for b in ctx.buildings:  # only schools have built so far
        b.kind = "school"
    landmarks = place_lookalikes(ctx)
    ctx.cv.occupied |= near_road
    paint_crops(ctx)
    houses = place_houses(ctx)
    paint_trees(ctx)
    cv = ctx.cv
    for b in ctx.buildings:
        draw_building(cv, b, ctx.sun, ctx.rng)
    for corners, colour, height, gate in ctx.walls:
        draw_wall(cv, corners, colour, height, ctx.sun, gate)
    cv.img[:, cv.shadow & ~cv.raised] *= np.float32(0.5)
    return schools, landmarks, water, houses


def _finish(img: np.ndarray, st: dict, rng: np.random.Generator, m: float) -> np.ndarray:
    """Camera look: optics blur, colour balance, haze, sensor noise, 8-bit quantisation."""
    img = ndimage.gaussian_filter(img, (0, 0.55, 0.55))
    img *= np.asarray(st["gains"], np.float32)[:, None, None]
    haze = np.float32(st["haze"]) * (1 + 0.5 * noise(rng, img.shape[1:], 300 * m))[None]
    img = img * (1 - haze) + np.float32(0.78) * haze * np.array([0.95, 0.98, 1.05], np.float32)[:, None, None]
    img += np.float32(st["noise"]) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)

