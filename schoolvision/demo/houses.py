"""Houses: many small roofs aligned to the street grid, at random or on a lattice (terraced towns)."""

from __future__ import annotations

import math

import numpy as np

from schoolvision.demo.canvas import Building, pixels, rect
from schoolvision.demo.context import TownContext
from schoolvision.demo.regions import WALLS


def place_houses(ctx: TownContext) -> int:
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
            rr, cc = pixels(corners_all[i], occ.shape)
            if x0 < 0 or y0 < 0 or x1 >= size or y1 >= size or occ[rr, cc].any():
                continue
        elif x0 < 0 or y0 < 0 or x1 >= size or y1 >= size or occ[y0 : y1 + 1, x0 : x1 + 1].any():
            continue
        if plot[i]:  # swept-earth plot around the house
            plot_rect = rect(*centres[i], -hl[i] / 2 - 3 * m, hl[i] / 2 + 3 * m, -hw[i] / 2 - 3 * m,
                              hw[i] / 2 + 3 * m, angs[i])
            ctx.yard(plot_rect)
            if reg.plot_walls:  # a family compound: the plot walled in
                ctx.walls.append((plot_rect, WALLS[int(rng.integers(len(WALLS)))], 2.0 * ctx.sh, int(rng.integers(4))))
        if reg.terraced:
            occ[rr, cc] = True
        else:
            occ[y0 + 1 : y1, x0 + 1 : x1] = True
        ctx.buildings.append(Building(corners_all[i], reg.roofs[roofs[i]], heights[i], ridge=bool(ridged[i]),
                                       corrugated=bool(corr[i])))
        placed += 1
    return placed


def _terraces(ctx: TownContext) -> tuple:
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

