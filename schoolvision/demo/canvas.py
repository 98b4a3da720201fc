"""Drawing in pixels: smooth noise, rotated rectangles, the canvas, roofs with shadows, walls and pitches."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.draw import circle_perimeter
from skimage.draw import polygon as draw_polygon

from schoolvision.demo.regions import LINE


def _bspline_matrix(n: int, scale: float) -> np.ndarray:
    """(n, m) cubic B-spline weights that upsample a coarse grid by ``scale`` (smooth, C2)."""
    m = int(n / scale) + 4
    t = (np.arange(n, dtype=np.float32) + 0.5) / scale + 1.5
    x = np.abs(t[:, None] - np.arange(m, dtype=np.float32)[None, :])
    return np.where(x < 1, 2 / 3 - x**2 + x**3 / 2, np.where(x < 2, (2 - x) ** 3 / 6, 0)).astype(np.float32)


def noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
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


def rect(cx: float, cy: float, u0: float, u1: float, v0: float, v1: float, angle: float) -> np.ndarray:
    """Corners (4, 2) as (x, y) pixels of the local rectangle [u0,u1]x[v0,v1] rotated by ``angle``."""
    ca, sa = math.cos(angle), math.sin(angle)
    uv = np.array([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], dtype=float)
    return np.stack([cx + uv[:, 0] * ca - uv[:, 1] * sa, cy + uv[:, 0] * sa + uv[:, 1] * ca], axis=1)


def pixels(corners: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel rows/cols whose centres lie inside a polygon given in continuous (x, y) pixel coordinates."""
    return draw_polygon(corners[:, 1] - 0.5, corners[:, 0] - 0.5, shape)


def box(corners: np.ndarray, margin: float) -> tuple[slice, slice]:
    """Row/column slices of the bounding box of ``corners`` grown by ``margin`` px (clipped at 0)."""
    x0, y0 = np.floor(corners.min(0) - margin).astype(int)
    x1, y1 = np.ceil(corners.max(0) + margin).astype(int)
    return slice(max(y0, 0), y1 + 1), slice(max(x0, 0), x1 + 1)


def hull(points: np.ndarray) -> np.ndarray:
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


def segment(p0: np.ndarray, p1: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of a 1-px line from p0 to p1 (continuous x, y)."""
    n = int(math.ceil(np.hypot(*(p1 - p0)) * 2)) + 1
    t = np.linspace(0.0, 1.0, n)
    xs = np.floor(p0[0] + t * (p1[0] - p0[0])).astype(int)
    ys = np.floor(p0[1] + t * (p1[1] - p0[1])).astype(int)
    ok = (xs >= 0) & (ys >= 0) & (xs < shape[1]) & (ys < shape[0])
    return ys[ok], xs[ok]


class Canvas:
    """The scene being painted: colour, what stands above ground (no shadow on it) and shadows."""

    def __init__(self, ground: np.ndarray):
        self.img = ground
        self.shape = ground.shape[1:]
        self.raised = np.zeros(self.shape, bool)
        self.shadow = np.zeros(self.shape, bool)
        self.occupied = np.zeros(self.shape, bool)

    def paint(self, rr, cc, colour, alpha: float = 1.0, texture: np.ndarray | None = None):
        """Paint pixels ``rr, cc`` in ``colour`` (times ``texture``), blended by ``alpha``."""
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
        """Mark the polygon's bounding box (plus margin) as taken."""
        x0, y0 = np.floor(corners.min(0) - margin).astype(int)
        x1, y1 = np.ceil(corners.max(0) + margin).astype(int)
        self.occupied[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = True


@dataclass
class Building:
    """A roof to draw: corners (4, 2) in px, colour, shadow length, gable or flat, corrugation, kind."""

    corners: np.ndarray
    colour: tuple
    height: float  # shadow length in px
    ridge: bool = True
    corrugated: bool = False
    kind: str = "house"  # "school", or the hard negative's kind: the ``kind`` of buildings.geojson


def draw_building(cv: Canvas, b: Building, sun: np.ndarray, rng: np.random.Generator):
    """Shadow hull, then the roof: two halves shaded by the sun (gable) or flat, optional corrugation."""
    shape = cv.shape
    off = -sun * b.height
    rr, cc = pixels(hull(np.vstack([b.corners, b.corners + off])), shape)
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
        rr, cc = pixels(poly, shape)
        if rr.size == 0:
            continue
        tex = None
        if b.corrugated:
            s = (cc + 0.5) * ridge_dir[0] + (rr + 0.5) * ridge_dir[1]
            tex = (1.0 + 0.06 * np.sin(s * 2.1)).astype(np.float32)
        cv.paint(rr, cc, np.clip(col * shade, 0, 1), texture=tex)
        cv.raised[rr, cc] = True


def draw_wall(cv: Canvas, corners: np.ndarray, colour, height: float, sun: np.ndarray, gate: int):
    """A boundary wall: 1-px light line with its shadow, one gate gap on side ``gate``."""
    for k in range(4):
        p0, p1 = corners[k], corners[(k + 1) % 4]
        pieces = [(p0, p1)]
        if k == gate:
            length = np.hypot(*(p1 - p0))
            g0, g1 = 0.45, 0.45 + min(6.0 / max(length, 1), 0.2)
            pieces = [(p0, p0 + (p1 - p0) * g0), (p0 + (p1 - p0) * g1, p1)]
        for a, b in pieces:
            rr, cc = segment(a - sun * height, b - sun * height, cv.shape)
            cv.shadow[rr, cc] = True
            rr, cc = segment(a, b, cv.shape)
            cv.paint(rr, cc, colour)
            cv.raised[rr, cc] = True


def draw_field(cv: Canvas, cx, cy, fl, fw, angle, colour, m: float):
    """A sports pitch: coloured rectangle, white outline, halfway line and centre circle."""
    corners = rect(cx, cy, -fl / 2, fl / 2, -fw / 2, fw / 2, angle)
    rr, cc = pixels(corners, cv.shape)
    cv.paint(rr, cc, colour)
    inner = rect(cx, cy, -fl / 2 + 1.5 * m, fl / 2 - 1.5 * m, -fw / 2 + 1.5 * m, fw / 2 - 1.5 * m, angle)
    for k in range(4):
        rr, cc = segment(inner[k], inner[(k + 1) % 4], cv.shape)
        cv.paint(rr, cc, LINE, alpha=0.85)
    half = rect(cx, cy, 0, 0, -fw / 2 + 1.5 * m, fw / 2 - 1.5 * m, angle)
    rr, cc = segment(half[0], half[3], cv.shape)
    cv.paint(rr, cc, LINE, alpha=0.85)
    rr, cc = circle_perimeter(int(cy), int(cx), max(int(min(fw * 0.15, 9 * m)), 2), shape=cv.shape)
    cv.paint(rr, cc, LINE, alpha=0.85)
    return corners

