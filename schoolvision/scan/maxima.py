"""Peaks of a probability raster, as arrays: the h-maxima and the separation rule of the candidates.

Pure array functions of :class:`~schoolvision.scan.candidates.ProbabilityField` (arrays in, arrays out):
:func:`h_maxima`, skimage's answer bit for bit with one sort instead of two, and :func:`separated_peaks`,
the rule that makes far-apart peaks of one region two candidates.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.morphology import h_maxima as skimage_h_maxima

EIGHT = np.ones((3, 3), bool)
"""8-connectivity: regions, markers and watershed all join diagonal neighbours."""


def separated_peaks(peaks: np.ndarray, candidates: np.ndarray, level: np.ndarray, separation_px: float) -> np.ndarray:
    """``peaks`` (bool), where plateaus holding several far-apart ``candidates`` give way to them.

    The rule of :meth:`ProbabilityField.peaks`; a kept candidate outside every plateau is a peak of its own.

    Args:
        peaks: h-maxima that split regions by their valleys.
        candidates: finer peaks (bool), ranked by their highest ``level``.
        level: the surface the candidates are maxima of.
        separation_px: pixels a kept candidate lies from every stronger kept one, at least.
    """
    spots, k = ndimage.label(candidates, structure=EIGHT)
    if k < 2:
        return peaks
    top, first, centres = _spot_stats(spots, k, level)
    index = np.arange(1, k + 1)
    tree, kept, near = cKDTree(centres), np.zeros(k, bool), np.zeros(k, bool)
    for i in np.lexsort((index, -top)):  # strongest first, ties in raster order
        if not near[i]:
            kept[i] = True
            near[tree.query_ball_point(centres[i], np.nextafter(separation_px, 0))] = True
    plateaus, _ = ndimage.label(peaks, structure=EIGHT)
    holder = plateaus[first[:, 0], first[:, 1]]  # the plateau of ``peaks`` holding each candidate (0: none)
    holds = np.bincount(holder[kept], minlength=plateaus.max() + 1)
    holds[0] = 0
    split = holds[plateaus] > 1  # plateaus that give way to the candidates they hold
    chosen = kept & ((holder == 0) | (holds[holder] > 1))
    lut = np.concatenate([[False], chosen])
    return (peaks & ~split) | lut[spots]


def _spot_stats(spots: np.ndarray, k: int, level: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per spot ``1..k``: its highest ``level``, the (row, col) of its first pixel there, its centre (row, col).

    From the spots' own pixels only (a few thousand of millions): ndimage's ``maximum`` and
    ``maximum_position`` each sort the whole raster. Ties go to the first pixel in raster order.
    """
    flat = np.flatnonzero(spots)
    label = spots.ravel()[flat]
    values = level.ravel()[flat]
    top = np.full(k + 1, -np.inf)
    np.maximum.at(top, label, values)
    at_top = values == top[label]
    _, where = np.unique(label[at_top], return_index=True)  # ``flat`` is in raster order: the first one
    first = np.column_stack(np.divmod(flat[at_top][where], spots.shape[1]))
    rows, cols = np.divmod(flat, spots.shape[1])
    counts = np.bincount(label, minlength=k + 1)[1:]
    sums = [np.bincount(label, weights, k + 1)[1:] for weights in (rows, cols)]
    centres = np.column_stack(sums) / counts[:, None]
    return top[1:], first, centres


def h_maxima(image: np.ndarray, h: float, tolerance: np.ndarray | float = 0.0) -> np.ndarray:
    """The ``h_maxima`` of skimage for a 2-D float64 image (8-connected), sorting the pixels once, not twice.

    skimage 0.26's grey reconstruction sorts its (seed, mask) stack twice, once for the visiting order
    and once more in ``rank_order`` for the ranks, with the same ``argsort``; this sorts once and feeds
    the same arrays to skimage's own inner loop, so the answer is skimage's, bit for bit
    (``tests/test_candidates.py``), in two thirds of the time. Where that loop is not importable
    (another skimage), skimage's own function runs.

    ``tolerance`` (a number, or one per pixel): a dome's top is every pixel within it of the dome's
    highest value, not only the pixels at exactly that value. A flat plateau whose values differ by a
    float32 unit (windows that saw the same nodata, a model's batch noise) is then one top, not
    hundreds of one-pixel ones; 0 is skimage's answer.
    """
    try:
        from skimage.morphology._grayreconstruct import reconstruction_loop
    except ImportError:  # pragma: no cover - another skimage layout
        return skimage_h_maxima(image, h)
    image = np.asarray(image, np.float64)
    if image.ndim != 2 or h > np.ptp(image):
        return skimage_h_maxima(image, h)  # no dome of height h: none, whatever the tolerance
    resolution = 2 * np.finfo(image.dtype).resolution * np.abs(image)
    seed = image - h - resolution
    rows, cols = image.shape
    images = np.full((2, rows + 2, cols + 2), np.min(seed), dtype=np.float64)  # padded by one, as skimage pads
    images[0, 1:-1, 1:-1] = seed
    images[1, 1:-1, 1:-1] = image
    size = images.size
    signed = np.result_type(np.min_scalar_type(-size), np.int32)
    width = cols + 2
    strides = np.array([-width - 1, -width, -width + 1, -1, 1, width - 1, width, width + 1], signed)
    flat = images.reshape(-1)
    order = flat.argsort()  # the one sort: skimage runs this same argsort twice
    index_sorted = order.astype(signed, copy=False)[::-1]
    prev = np.full(size, -1, signed)
    nxt = np.full(size, -1, signed)
    prev[index_sorted[1:]] = index_sorted[:-1]
    nxt[index_sorted[:-1]] = index_sorted[1:]
    ranked = flat[order]  # rank_order: equal values share a rank
    different = ranked[:-1] != ranked[1:]
    sort_rank = np.zeros(size, np.min_scalar_type(size))
    np.cumsum(different, out=sort_rank[1:])
    values = np.concatenate([ranked[:1], ranked[1:][different]])
    rank = np.zeros_like(sort_rank)
    rank[order] = sort_rank
    rank = rank.astype(np.dtype(signed.char.upper()), copy=False)
    try:
        reconstruction_loop(rank, prev, nxt, strides, index_sorted[0], size // 2)
    except (TypeError, ValueError):  # pragma: no cover - a skimage whose inner loop takes other arguments
        return skimage_h_maxima(image, h)
    reconstructed = values[rank[: size // 2]].reshape(rows + 2, cols + 2)[1:-1, 1:-1]
    return ((image - reconstructed) >= h - np.asarray(tolerance)).astype(np.uint8)


def bounding_box(mask: np.ndarray) -> tuple[slice, slice]:
    """The smallest box holding every True pixel of a 2-D mask that has one."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
