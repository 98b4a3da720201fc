"""The ground a town stands on: soil and grass, water, roads and tracks, crop fields, trees."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from schoolvision.demo.canvas import Canvas, noise, pixels, rect
from schoolvision.demo.context import TownContext
from schoolvision.demo.regions import ASPHALT, DRY_GRASS, TREE


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



def paint_ground(ctx: TownContext) -> None:
    """Soil/grass mix at two scales with fine texture; greener away from the built-up centre."""
    rng, size, m, shape = ctx.rng, ctx.size, ctx.m, ctx.shape
    veg = 1 / (1 + np.exp(-(1.4 * noise(rng, shape, 90 * m) + 0.7 * noise(rng, shape, 22 * m)
                            + 2.5 * (ctx.green - 0.5))))
    ctx.ctr = np.array([size * rng.uniform(0.35, 0.65), size * rng.uniform(0.35, 0.65)])
    yy, xx = np.ogrid[0:size, 0:size]
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    dens = (np.exp(-(((xx - ctx.ctr[0]) ** 2 + (yy - ctx.ctr[1]) ** 2) / (ctx.region.spread * size) ** 2))
            + 0.2 * noise(rng, shape, 150 * m))
    ctx.dens = np.clip(dens, 0, 1).astype(np.float32)
    veg = veg * (1 - 0.5 * ctx.dens)
    ground = ctx.soil[:, None, None] * (1 - veg) + ctx.grass[:, None, None] * veg
    ground = ground * (1 + 0.07 * noise(rng, shape, 4 * m) + 0.04 * noise(rng, shape, 1.5 * m))[None]
    ctx.cv = Canvas(ground.astype(np.float32))


def paint_water(ctx: TownContext) -> str:
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
        edge = r * (1 + 0.25 * noise(rng, shape, 30 * m)) - np.hypot(xx.astype(np.float32) - pc[0],
                                                                       yy.astype(np.float32) - pc[1])
    shore = np.clip((edge + 4 * m) / (3 * m), 0, 1)
    wet = np.clip(edge / (4 * m), 0, 1)
    sand = np.clip(ctx.soil * 1.2, 0, 1).astype(np.float32)
    cv.img = cv.img * (1 - shore) + sand[:, None, None] * shore
    wtex = 1 + 0.04 * noise(rng, shape, 6 * m)
    cv.img = cv.img * (1 - wet) + (water_col[:, None, None] * wtex) * wet
    cv.occupied |= edge > -8 * m
    return kind_water


def paint_roads(ctx: TownContext) -> np.ndarray:
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
    road_tex = 1 + 0.05 * noise(rng, shape, 3 * m)
    cv.img = cv.img * (1 - shoulder) + (dirt[:, None, None] * road_tex) * shoulder
    surface = np.where((cls == 1)[None], np.array(ASPHALT, np.float32)[:, None, None], dirt[:, None, None]) * road_tex
    cv.img = cv.img * (1 - alpha) + surface * alpha
    near_road = dist < half + 2.5 * m
    cv.occupied |= near_road & (cls == 1)
    ctx.reserved = np.zeros(shape, bool)  # compounds plus their spacing
    return near_road



def paint_crops(ctx: TownContext) -> None:
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
        corners = rect(cx, cy, -fl / 2, fl / 2, -fw / 2, fw / 2, ang)
        cx0, cy0 = np.clip(corners.min(0).astype(int), 0, size - 1)
        cx1, cy1 = np.clip(corners.max(0).astype(int), 0, size - 1)
        if cv.occupied[cy0 : cy1 + 1, cx0 : cx1 + 1].mean() > 0.02:
            continue
        rr, cc = pixels(corners, ctx.shape)
        if rr.size == 0:
            continue
        crop = rng.choice(3)
        base = (ctx.grass * rng.uniform(0.75, 1.1), ctx.soil * rng.uniform(0.8, 1.0),
                np.array(DRY_GRASS) * rng.uniform(0.9, 1.15))[crop]
        period = rng.uniform(2.5, 6) * m
        s = (cc * math.cos(ang) + rr * math.sin(ang)) * 2 * math.pi / period
        cv.paint(rr, cc, base, texture=(1 + 0.12 * np.sin(s)).astype(np.float32))
        cv.occupied[cy0 : cy1 + 1, cx0 : cx1 + 1] = True



def paint_trees(ctx: TownContext) -> None:
    """Clumpy crowns as domes (distance to scattered trunks), sun-shaded and casting shadows."""
    rng, size, m, shape, cv, sun = ctx.rng, ctx.size, ctx.m, ctx.shape, ctx.cv, ctx.sun
    tree_p = ((0.0015 + 0.006 * ctx.green) * ctx.region.tree_factor
              * np.clip(0.6 + 0.8 * noise(rng, shape, 40 * m), 0, 3) / m**2)
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
    shade = np.clip(0.85 + 0.25 * (gx * sun[0] + gy * sun[1]), 0.55, 1.25) * (1 + 0.12 * noise(rng, shape, 1.2 * m))
    tcol = (np.array(TREE) * (0.8 + 0.4 * ctx.green)).astype(np.float32)
    cv.img = np.where(canopy[None], tcol[:, None, None] * shade[None], cv.img).astype(np.float32)
    cv.raised |= canopy
    off = -sun * 6 * ctx.sh
    cv.shadow |= ndimage.shift(canopy, (off[1], off[0]), order=0, mode="constant", cval=False)

