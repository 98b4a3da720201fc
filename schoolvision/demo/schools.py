"""Schools: a walled yard with classroom blocks (rural), a courtyard building (urban) or rows (arid)."""

from __future__ import annotations

import math

import numpy as np

from schoolvision.demo.canvas import Building, box, draw_field, rect
from schoolvision.demo.context import Site, TownContext
from schoolvision.demo.regions import WALLS


def place_schools(ctx: TownContext) -> list[np.ndarray]:
    """Schools in the region's layout (:data:`SCHOOL_LAYOUTS`), never touching each other; corners in px."""
    rng, size, m, cv, cfg, reserved = ctx.rng, ctx.size, ctx.m, ctx.cv, ctx.cfg, ctx.reserved
    km2 = (size / m / 1000.0) ** 2
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
        comp = rect(cx, cy, -L / 2, L / 2, -W / 2, W / 2, ang)
        if (comp.min() < margin or comp.max() > size - margin or not cv.free(comp, 3 * m)
                or reserved[box(comp, 0)].any()):
            continue
        reserved[box(comp, cfg.school_spacing_m * m)] = True  # schools never touch each other
        SCHOOL_LAYOUTS[ctx.region.school_layout](ctx, Site(cx, cy, L, W, ang, comp))
        schools.append(comp)
    return schools


def _school_blocks(ctx: TownContext, site: Site) -> None:
    """Rural school: walled yard, 1-3 long classroom blocks (I, II, L, U), often a marked field."""
    rng, m, cv, hs = ctx.rng, ctx.m, ctx.cv, ctx.hs
    cx, cy, L, W, ang, comp = site
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
        ctx.buildings.append(Building(rect(cx, cy, *b, ang), col, hs, ridge=rng.random() < 0.8, corrugated=True))
    # free part of the yard: between the side blocks, below the top block(s)
    fu0 = u0 + (bw + 3 * m if layout in ("L", "U") else 0)
    fu1 = u1 - (bw + 3 * m if layout == "U" else 0)
    fv0 = max(b[3] for b in blocks) + 4 * m
    fv1 = W / 2 - inset
    if rng.random() < 0.7 and fv1 - fv0 > 18 * m and fu1 - fu0 > 25 * m:
        fl = min((fu1 - fu0) * rng.uniform(0.75, 0.95), 100 * m)
        fw = min((fv1 - fv0) * rng.uniform(0.8, 0.95), fl * 0.7)
        fc = rect(cx, cy, (fu0 + fu1) / 2, (fu0 + fu1) / 2, (fv0 + fv1) / 2, (fv0 + fv1) / 2, ang)[0]
        fcol = ctx.grass * rng.uniform(0.9, 1.05) if rng.random() < 0.6 else ctx.yard_col * 0.95
        draw_field(cv, fc[0], fc[1], fl, fw, ang, fcol, m)
    elif rng.random() < 0.5:  # a latrine block in a corner of the yard
        ctx.buildings.append(Building(rect(cx, cy, fu1 - 8 * m, fu1 - 2 * m, fv1 - 5 * m, fv1, ang), ctx.roof(),
                                      hs * 0.8))
    for _ in range(int(rng.integers(0, 4))):
        p = rect(cx, cy, *(rng.uniform(-0.45, 0.45) * L,) * 2, *(rng.uniform(0.1, 0.45) * W,) * 2, ang)[0]
        ctx.yard_trees.append((p[0], p[1], rng.uniform(2, 4) * m))
    ctx.walls.append((comp, WALLS[int(rng.integers(len(WALLS)))], 2.0 * ctx.sh, int(rng.integers(4))))


def courtyard_ring(ctx: TownContext, cx, cy, u0, u1, v0, v1, bw, ang, open_side: int | None, col, height) -> tuple:
    """A courtyard building of flat wings ``bw`` deep; returns the courtyard as local (u0, u1, v0, v1).

    Closed, or with wing ``open_side`` (0 top, 1 right, 2 bottom, 3 left) left out.
    """
    vb = v1 if open_side == 2 else v1 - bw
    wings = {0: (u0, u1, v0, v0 + bw), 1: (u1 - bw, u1, v0 + bw, vb), 2: (u0, u1, v1 - bw, v1),
             3: (u0, u0 + bw, v0 + bw, vb)}
    wings.pop(open_side, None)
    for w in wings.values():
        ctx.buildings.append(Building(rect(cx, cy, *w, ang), col, height, ridge=False))
    return (u0 if open_side == 3 else u0 + bw, u1 if open_side == 1 else u1 - bw,
            v0 if open_side == 0 else v0 + bw, vb)


def _school_courtyard(ctx: TownContext, site: Site) -> None:
    """Urban school: a walled plot, a 2-4 storey courtyard building and a marked court in the courtyard."""
    cx, cy, L, W, ang, comp = site
    rng, m, cv = ctx.rng, ctx.m, ctx.cv
    cv.occupy(comp, 1 * m)  # neighbours crowd right up to the wall
    ctx.yard(comp)
    t, bw = rng.uniform(2, 5) * m, rng.uniform(9, 12) * m
    bw = min(bw, (min(L, W) - 2 * t) / 3.2)  # the courtyard at least as deep as a wing
    u0, u1, v0, v1 = -L / 2 + t, L / 2 - t, -W / 2 + t, W / 2 - t
    open_side = None if rng.random() < 0.5 else 2  # closed ring, or a U open towards the gate side
    iu0, iu1, iv0, iv1 = courtyard_ring(ctx, cx, cy, u0, u1, v0, v1, bw, ang, open_side, ctx.roof(),
                               ctx.hs * rng.uniform(2.0, 3.5))
    cu, cvv = (iu0 + iu1) / 2, (iv0 + iv1) / 2
    fl, fw = (iu1 - iu0) * rng.uniform(0.75, 0.9), (iv1 - iv0) * rng.uniform(0.7, 0.85)
    fc = rect(cx, cy, cu, cu, cvv, cvv, ang)[0]
    court = (ctx.yard_col * 0.92, np.array((0.44, 0.52, 0.40)), np.array((0.56, 0.36, 0.30)))[int(rng.integers(3))]
    draw_field(cv, fc[0], fc[1], max(fl, fw), min(fl, fw), ang if fl >= fw else ang + math.pi / 2, court, m)
    for _ in range(int(rng.integers(0, 3))):
        p = rect(cx, cy, *(rng.uniform(iu0, iu1),) * 2, *(rng.uniform(iv0, iv1),) * 2, ang)[0]
        ctx.yard_trees.append((p[0], p[1], rng.uniform(2, 3.5) * m))
    ctx.walls.append((comp, WALLS[int(rng.integers(len(WALLS)))], 2.0 * ctx.sh, 2))


def _school_rows(ctx: TownContext, site: Site) -> None:
    """Arid school: a large walled yard, 1-3 parallel rows of flat-roofed classrooms and a dirt pitch."""
    cx, cy, L, W, ang, comp = site
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
        ctx.buildings.append(Building(rect(cx, cy, a, a + length, vk, vk + bw, ang), col, ctx.hs,
                                       ridge=rng.random() < 0.2, corrugated=rng.random() < 0.5))
    fv0, fv1 = v0 + rows * (bw + gap), W / 2 - inset
    fu0, fu1 = u0, L / 2 - inset
    if fv1 - fv0 > 18 * m and rng.random() < 0.85:
        fl = min((fu1 - fu0) * rng.uniform(0.7, 0.95), 100 * m)
        fw = min((fv1 - fv0) * rng.uniform(0.8, 0.95), fl * 0.7)
        fc = rect(cx, cy, (fu0 + fu1) / 2, (fu0 + fu1) / 2, (fv0 + fv1) / 2, (fv0 + fv1) / 2, ang)[0]
        draw_field(cv, fc[0], fc[1], fl, fw, ang, ctx.soil * rng.uniform(0.88, 0.97), m)
    for _ in range(int(rng.integers(1, 5))):  # shade trees along the wall
        u = rng.uniform(-0.45, 0.45) * L
        v = rng.uniform(0.3, 0.45) * W * rng.choice([-1, 1])
        p = rect(cx, cy, u, u, v, v, ang)[0]
        ctx.yard_trees.append((p[0], p[1], rng.uniform(2.5, 4.5) * m))
    ctx.walls.append((comp, WALLS[int(rng.integers(len(WALLS)))], 2.5 * ctx.sh, int(rng.integers(4))))



SCHOOL_LAYOUTS = {"blocks": _school_blocks, "courtyard": _school_courtyard, "rows": _school_rows}
"""How each region's ``school_layout`` paints a school on its site."""
