"""Hard negatives: warehouses, markets, clinics, pitches, parks, compounds and more that share a school's parts."""

from __future__ import annotations

import math

import numpy as np

from schoolvision.demo.canvas import Building, box, draw_field, pixels, rect
from schoolvision.demo.context import Site, TownContext
from schoolvision.demo.regions import ASPHALT, GREEN_GRASS, WALLS
from schoolvision.demo.schools import courtyard_ring


def place_lookalikes(ctx: TownContext) -> list[tuple[str, np.ndarray]]:
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
            comp = rect(cx, cy, -L / 2, L / 2, -W / 2, W / 2, ang)
            if comp.min() < 4 or comp.max() > size - 4 or not cv.free(comp, 3 * m) or reserved[box(comp, 0)].any():
                continue
            reserved[box(comp, 12 * m)] = True
            cv.occupy(comp, 4 * m)
            first = len(ctx.buildings)
            paint_lookalike(ctx, kind, Site(cx, cy, L, W, ang, comp))
            for b in ctx.buildings[first:]:
                b.kind = kind
            landmarks.append((kind, comp))
            break
    return landmarks



def paint_lookalike(ctx: TownContext, kind: str, site: Site) -> None:
    """Paint one hard negative of ``kind`` on ``site`` (its compound rectangle, L x W px, rotated)."""
    if kind in _REGION_LOOKALIKES:
        _REGION_LOOKALIKES[kind](ctx, site)
        return
    wall_col = WALLS[int(ctx.rng.integers(len(WALLS)))]  # drawn for every shared kind, walled or not
    _LOOKALIKES[kind](ctx, site, wall_col)


def _warehouse(ctx: TownContext, site: Site, wall_col: tuple) -> None:
    """Big corrugated sheds on a concrete apron, no wall, no yard."""
    cv, rng, m = ctx.cv, ctx.rng, ctx.m
    cx, cy, L, W, ang, comp = site
    rr, cc = pixels(comp, cv.shape)
    cv.paint(rr, cc, np.array(ASPHALT) * rng.uniform(1.1, 1.6))
    n = int(rng.integers(1, 3))
    for i in range(n):
        v0 = -W / 2 + 5 * m + i * (W - 10 * m) / n
        ctx.buildings.append(Building(rect(cx, cy, -L / 2 + 6 * m, L / 2 - 6 * m, v0, v0 + (W - 10 * m) / n - 4 * m,
                                           ang),
                                      ctx.roof(), ctx.hs * 1.8, ridge=rng.random() < 0.5, corrugated=True))
    if rng.random() < 0.4:
        ctx.walls.append((comp, wall_col, 2.0 * ctx.sh, int(rng.integers(4))))


def _market(ctx: TownContext, site: Site, wall_col: tuple) -> None:
    """Many small stalls in rows on bare ground."""
    rng, m = ctx.rng, ctx.m
    cx, cy, L, W, ang, comp = site
    ctx.yard(comp)
    step_u, step_v = rng.uniform(5, 8) * m, rng.uniform(6, 9) * m
    for u in np.arange(-L / 2 + 4 * m, L / 2 - 6 * m, step_u):
        for v in np.arange(-W / 2 + 4 * m, W / 2 - 6 * m, step_v):
            if rng.random() < 0.85:
                ctx.buildings.append(Building(rect(cx, cy, u, u + step_u - 1.5 * m, v, v + step_v - 3 * m, ang),
                                              ctx.roof(), ctx.hs * 0.6, ridge=False))


def _clinic(ctx: TownContext, site: Site, wall_col: tuple) -> None:
    """Long blocks like classrooms, in a comb, amid grass and trees, no wall."""
    rng, m, hs = ctx.rng, ctx.m, ctx.hs
    cx, cy, L, W, ang, _ = site
    col = ctx.roof()
    n = int(rng.integers(2, 4))
    bw = rng.uniform(7, 10) * m
    for i in range(n):
        v0 = -W / 2 + 4 * m + i * (W - 8 * m) / n
        ctx.buildings.append(Building(rect(cx, cy, -L / 2 + 8 * m, L / 2 - 4 * m, v0, v0 + bw, ang), col, hs,
                                      corrugated=True))
    ctx.buildings.append(Building(rect(cx, cy, -L / 2 + 2 * m, -L / 2 + 6 * m, -W / 2 + 4 * m, W / 2 - 6 * m, ang),
                                  col, hs * 0.7, ridge=False))
    _yard_trees(ctx, site, int(rng.integers(2, 6)), 0.5, (2, 4.5))


def _sports_field(ctx: TownContext, site: Site, wall_col: tuple) -> None:
    """A marked pitch with no school around it."""
    rng = ctx.rng
    cx, cy, L, W, ang, _ = site
    fl, fw = L * 0.9, min(W * 0.9, L * 0.65)
    fcol = ctx.grass * rng.uniform(0.9, 1.05) if rng.random() < 0.6 else ctx.yard_col * 0.95
    draw_field(ctx.cv, cx, cy, fl, fw, ang, fcol, ctx.m)


def _park(ctx: TownContext, site: Site, wall_col: tuple) -> None:
    """Lawn, tree clumps, paths."""
    cv, rng, m = ctx.cv, ctx.rng, ctx.m
    cx, cy, L, W, ang, comp = site
    rr, cc = pixels(comp, cv.shape)
    cv.paint(rr, cc, np.array(GREEN_GRASS) * rng.uniform(0.9, 1.2))
    for v in (-W / 4, W / 4):
        path = rect(cx, cy, -L / 2, L / 2, v - 1 * m, v + 1 * m, ang + rng.normal(0, 0.2))
        rr, cc = pixels(path, cv.shape)
        cv.paint(rr, cc, ctx.yard_col)
    _yard_trees(ctx, site, int(rng.integers(6, 16)), 0.45, (2.5, 5))


def _walled_compound(ctx: TownContext, site: Site, wall_col: tuple) -> None:
    """Wall and bare yard, but small square houses (or nothing), no long blocks."""
    rng, m = ctx.rng, ctx.m
    cx, cy, L, W, ang, comp = site
    ctx.yard(comp)
    ctx.walls.append((comp, wall_col, 2.0 * ctx.sh, int(rng.integers(4))))
    for _ in range(int(rng.integers(0, 5))):
        s1, s2 = rng.uniform(7, 14, 2) * m
        u, v = rng.uniform(-L / 2 + 4 * m, L / 2 - 4 * m - s1), rng.uniform(-W / 2 + 4 * m, W / 2 - 4 * m - s2)
        ctx.buildings.append(Building(rect(cx, cy, u, u + s1, v, v + s2, ang), ctx.roof(), ctx.hs,
                                      ridge=rng.random() < 0.6))
    _yard_trees(ctx, site, int(rng.integers(0, 4)), 0.4, (2, 4))


def _dense_housing(ctx: TownContext, site: Site, wall_col: tuple) -> None:
    """Tightly packed small houses with narrow lanes."""
    rng, m = ctx.rng, ctx.m
    cx, cy, L, W, ang, comp = site
    ctx.yard(comp)
    for u in np.arange(-L / 2 + 2 * m, L / 2 - 8 * m, 10 * m):
        for v in np.arange(-W / 2 + 2 * m, W / 2 - 7 * m, 9 * m):
            du, dv = rng.uniform(6, 9) * m, rng.uniform(5, 7.5) * m
            ctx.buildings.append(Building(rect(cx, cy, u, u + du, v, v + dv, ang + rng.normal(0, 0.05)), ctx.roof(),
                                          ctx.hs * rng.uniform(0.8, 1.2), ridge=rng.random() < 0.7))


def _yard_trees(ctx: TownContext, site: Site, n: int, spread: float, radius_m: tuple[float, float]) -> None:
    """``n`` trees at uniform local positions within ``spread`` of the site's length and width."""
    rng = ctx.rng
    cx, cy, L, W, ang, _ = site
    for _ in range(n):
        p = rect(cx, cy, *(rng.uniform(-spread, spread) * L,) * 2, *(rng.uniform(-spread, spread) * W,) * 2, ang)[0]
        ctx.yard_trees.append((p[0], p[1], rng.uniform(*radius_m) * ctx.m))


def _apartment_courtyard(ctx: TownContext, site: Site) -> None:
    """Urban look-alike: a courtyard block of flats, courtyard full of parked cars, sheds or shade, no court."""
    cx, cy, L, W, ang, comp = site
    rng, m = ctx.rng, ctx.m
    t, bw = rng.uniform(0, 3) * m, rng.uniform(9, 13) * m
    bw = min(bw, (min(L, W) - 2 * t) / 3.2)
    iu0, iu1, iv0, iv1 = courtyard_ring(ctx, cx, cy, -L / 2 + t, L / 2 - t, -W / 2 + t, W / 2 - t, bw, ang,
                               None if rng.random() < 0.6 else int(rng.integers(4)), ctx.roof(),
                               ctx.hs * rng.uniform(2.0, 4.5))
    ctx.yard(rect(cx, cy, iu0, iu1, iv0, iv1, ang))
    for _ in range(int(rng.integers(4, 16)) if iu1 - iu0 > 8 * m and iv1 - iv0 > 5 * m else 0):  # cars, sheds
        u, v = rng.uniform(iu0, iu1 - 5 * m), rng.uniform(iv0, iv1 - 3 * m)
        car = (np.array(ctx.roof()) * rng.uniform(0.6, 1.2)).clip(0, 1)
        ctx.buildings.append(Building(rect(cx, cy, u, u + rng.uniform(4, 6) * m, v, v + 2 * m, ang),
                                       tuple(car), ctx.hs * 0.3, ridge=False))
    for _ in range(int(rng.integers(0, 3))):
        p = rect(cx, cy, *(rng.uniform(iu0, iu1),) * 2, *(rng.uniform(iv0, iv1),) * 2, ang)[0]
        ctx.yard_trees.append((p[0], p[1], rng.uniform(2, 4) * m))
    if rng.random() < 0.3:
        ctx.walls.append((comp, WALLS[int(rng.integers(len(WALLS)))], 2.0 * ctx.sh, int(rng.integers(4))))


def _mosque(ctx: TownContext, site: Site) -> None:
    """Arid look-alike: a walled yard with one large square prayer hall and a small tall tower."""
    cx, cy, L, W, ang, comp = site
    rng, m = ctx.rng, ctx.m
    ctx.yard(comp)
    side = min(L, W) * rng.uniform(0.45, 0.65)
    u0 = -L / 2 + rng.uniform(3, 6) * m
    ctx.buildings.append(Building(rect(cx, cy, u0, u0 + side, -side / 2, side / 2, ang), ctx.roof(),
                                   ctx.hs * 1.5, ridge=False))
    ctx.buildings.append(Building(rect(cx, cy, u0 + side + 1 * m, u0 + side + 5 * m, -2 * m, 2 * m, ang),
                                   ctx.roof(), ctx.hs * 4, ridge=False))
    for _ in range(int(rng.integers(0, 4))):
        p = rect(cx, cy, *(rng.uniform(0, 0.45) * L,) * 2, *(rng.uniform(-0.45, 0.45) * W,) * 2, ang)[0]
        ctx.yard_trees.append((p[0], p[1], rng.uniform(2, 4) * m))
    ctx.walls.append((comp, WALLS[int(rng.integers(len(WALLS)))], 2.0 * ctx.sh, int(rng.integers(4))))


_LOOKALIKES = {"warehouse": _warehouse, "market": _market, "clinic": _clinic, "sports_field": _sports_field,
               "park": _park, "walled_compound": _walled_compound, "dense_housing": _dense_housing}
"""The look-alikes every region shares, by kind; each draws a wall colour first, used or not."""
_REGION_LOOKALIKES = {"apartment_courtyard": _apartment_courtyard, "mosque": _mosque}
"""The look-alikes of one region only (urban, arid)."""
