"""School candidates: regions of a probability raster above the run's tuned threshold.

Regions with several peaks (neighbouring schools blurred together) are split at the valleys
between the peaks, and, with a ``min_separation`` (``scan --min-separation``), between peaks that far
apart however shallow the valley: two schools on adjacent compounds are both seen by the windows
between them, so one high region often covers both (:meth:`ProbabilityField.peaks`). Each part
becomes one ranked candidate (a point at its peak; grad-CAM peaks are placed by
:func:`schoolvision.scan.peaks.place_at_cam_peaks`) with its footprint, its maximum and mean
probability and its area. Regions are labelled on a decimated read (at most ``max_side`` pixels a
side, through the raster's overviews) so a country-size raster never has to fit in memory; a
2048 px side is still finer than the scan stride for scenes up to 2048 x stride pixels (131 km at
1 m, stride 64). Scenes that overlap give the same school twice: points from different scenes
closer than ``merge_distance`` are merged, keeping the most probable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from rasterio.features import shapes
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components
from shapely.geometry import Point, shape
from skimage.segmentation import watershed

from schoolvision.io.crs import metric_crs
from schoolvision.io.folders import ScanFolder, read_probability
from schoolvision.io.vectors import write_vectors
from schoolvision.scan.maxima import EIGHT, bounding_box, h_maxima, separated_peaks

SPLIT_DIP = 0.5
"""Log-odds dip between two peaks that makes them two candidates (see :func:`split_regions`)."""

SATURATION = 0.999
"""P(school) above which log-odds are capped (one plateau, not many peaks)."""

FINE_SATURATION = 1 - 1e-6
"""P(school) above which the log-odds that place separated peaks are capped (see :meth:`ProbabilityField.peaks`).

A float32 raster still resolves 1 - P to a few 1e-8 there: a valley between two saturated schools that the
``SATURATION`` cap flattens shows below this one."""

PLATEAU_TOLERANCE = 1e-5
"""P(school) within which a peak's pixels count as its top (one marker): a model's outputs for windows that
saw the same pixels differ by float32 units, so a plateau is flat only to about this."""

SEPARATED_DIP = 0.1
"""Log-odds dip around a peak that makes it a peak of the separation rule (distance does the rest)."""

MIN_SEPARATION_CHIPS = 0.75
"""``scan --min-separation``'s default, in chips' ground widths (96 m for 128 px chips at 1 m).

A school compound is 40 to 120 m across (the demo draws 50 to 120 m), so two peaks of one school lie
well within a chip of each other, while the centres of two schools on adjacent compounds lie 80 to 200 m
apart; each window scores a whole chip, so the raster cannot place two schools much closer than half
a chip apart anyway."""

COLUMNS = ["rank", "scene", "max_prob", "mean_prob", "area_m2", "peak", "geometry"]


PEAK_FLOOR = 0.05
"""Lowest threshold the log-odds peaks are first computed for (the sweep's lowest); a lower one recomputes them."""

SWEEP_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.05, 1.0, 0.05), 2))
"""Thresholds of the evaluation's precision-recall sweep (:func:`~schoolvision.scan.evaluation.pr_curve`)."""

FIELD_PER_STRIDE = 16
"""Pixels per window stride at which a scan's raster is searched for peaks (4 m at stride 64 and 1 m).

The raster blends windows a stride apart with weights a quarter of a chip wide: it holds no detail
finer than a fraction of the stride, and a candidate placed to within a sixteenth of it is placed
far within the match distance. Imagery finer than that is averaged down on reading, so the peak
search, the watershed and the sweep visit sixteen times fewer pixels at 1 m (hundreds at 5 cm).
"""

MIN_AREA_M2 = 100.0
"""Smallest candidate region (m^2 above the threshold) that is kept: ``scan --min-area``'s default.

A school is a building or a yard of at least a few hundred m^2 (the demo's smallest classroom block is
about 36 x 7 m, its smallest compound 50 x 30 m), and the blended windows spread a school's
probability over tens of metres, so a region of a few m^2 is a rounding speck of the raster at the
threshold, not a school the model saw. 100 m^2 (10 x 10 px at 1 m) is well under half that block:
it drops specks and keeps every school-sized region; lower it for imagery coarser than 1 m only if
small schools are lost (0 keeps every region)."""


class ProbabilityField:
    """One probability raster made ready for candidate extraction at any threshold.

    What does not depend on the threshold is computed once per raster and reused by the tuned
    threshold's candidates and every threshold of the precision-recall sweep: the log-odds, their
    h-maxima (the peaks that split a region, see :func:`split_regions`) and the sort of the values
    (for the regions' maxima). Per threshold only the watershed and the labelling run, and the sweep
    reuses the lowest threshold's watershed where it can (``labels(reuse=True)``). Candidates, and the
    sweep's counts, equal those of the per-threshold code this replaced (``tests/test_candidates.py``).

    Args:
        prob: P(school), NaN where there is no data.
        transform: the raster's affine transform.
        crs: its CRS.
        scene: the scene name the candidates carry.
        dip: log-odds dip between two peaks that makes them two candidates.
        min_separation: metres between two peaks of one region that makes them two candidates, however
            shallow the valley between them (0: only ``dip`` splits; see :meth:`peaks`).
    """

    def __init__(self, prob: np.ndarray, transform, crs, scene: str = "", dip: float = SPLIT_DIP,
                 min_separation: float = 0.0):
        self.prob, self.transform, self.crs, self.scene, self.dip = prob, transform, crs, scene, dip
        self.min_separation = float(min_separation)
        self.finite = np.isfinite(prob)
        self.p = np.clip(np.where(self.finite, prob, 0.0), 1 - SATURATION, SATURATION)
        self.values = np.nan_to_num(prob, nan=0.0)
        self.logit = np.log(self.p / (1 - self.p)).astype(np.float64)
        self._fine: np.ndarray | None = None  # log-odds capped at FINE_SATURATION (with a min_separation)
        self._peaks: tuple[float, np.ndarray] | None = None  # (lowest threshold they hold for, h-maxima)
        # lowest threshold's (threshold, basins in box, peaks, box): the box of its pixels above, which holds
        # every pixel above any higher threshold, so the sweep's per-threshold work runs on that box only
        self._base: tuple[float, np.ndarray, int, tuple[slice, slice]] | None = None
        self._order: np.ndarray | None = None  # argsort of the values, and each pixel's place in it
        self._rank: np.ndarray | None = None

    @classmethod
    def read(cls, path: str | Path, scene: str = "", dip: float = SPLIT_DIP,
             min_separation: float = 0.0) -> ProbabilityField:
        """The probability raster at ``path`` (decimated as :func:`read_probability` does)."""
        return cls(*read_probability(path, per_stride=FIELD_PER_STRIDE), scene=scene, dip=dip,
                   min_separation=min_separation)

    def peaks(self, threshold: float) -> np.ndarray:
        """The h-maxima of the log-odds, exact where P(school) >= ``threshold`` (bool, full raster).

        Whether a pixel whose log-odds are at least L is an h-maximum depends only on the connected
        part of the raster above L - h around it (any path out of it dips by more than h), so the
        h-maxima are computed on each such part's bounding box alone: the same answer, in a
        fraction of the time when most of the raster is far below every threshold.

        With a ``min_separation``, peaks far apart split a region even without a deep valley between
        them: two schools on adjacent compounds are both seen by the windows between them, so the raster
        stays high (often saturated) from one to the other. Peaks here are the h-maxima of the log-odds
        capped at ``FINE_SATURATION`` with a ``SEPARATED_DIP`` dip; the strongest is kept, then every one
        at least ``min_separation`` metres from all those kept before (:func:`separated_peaks`). A region's
        h-maximum above (a plateau at ``SATURATION``, or a peak with a shallow valley beside it) that holds
        two or more kept peaks gives way to them; a kept peak outside every h-maximum becomes a peak of its
        own. A region whose peaks all lie closer than that stays one, as before.
        """
        if self._peaks is not None and threshold >= self._peaks[0]:
            return self._peaks[1]
        floor = min(float(threshold), PEAK_FLOOR)
        low = np.log(floor / (1 - floor)) - self.dip if floor > 0 else -np.inf
        parts, n = ndimage.label(self.logit > low, structure=EIGHT)
        boxes = ndimage.find_objects(parts)
        whole = n > 256 or sum((r.stop - r.start) * (c.stop - c.start) for r, c in boxes) > 0.9 * self.logit.size
        if self.min_separation > 0:
            # the fine log-odds equal the capped ones below SATURATION: the same parts hold their h-maxima;
            # the two searches run side by side (the sort and skimage's loop release the GIL)
            with ThreadPoolExecutor(1) as pool:
                fine = pool.submit(self._h_maxima, self.surface, SEPARATED_DIP, low, parts, boxes, whole)
                peaks = self._h_maxima(self.logit, self.dip, low, parts, boxes, whole, self._tolerance())
                candidates = fine.result()
            peaks = separated_peaks(peaks, candidates, self.surface, self.min_separation / _pixel_size(self.transform))
        else:
            peaks = self._h_maxima(self.logit, self.dip, low, parts, boxes, whole, self._tolerance())
        self._peaks = (floor, peaks)
        return peaks

    @property
    def surface(self) -> np.ndarray:
        """The log-odds the watershed floods: capped at ``SATURATION``, or at ``FINE_SATURATION`` with a separation.

        With a ``min_separation`` each separated peak's basin is then its own hill, and its top the peak.
        """
        if self.min_separation <= 0:
            return self.logit
        if self._fine is None:
            p = np.clip(self.values, 1 - FINE_SATURATION, FINE_SATURATION)
            self._fine = np.log(p / (1 - p)).astype(np.float64)
        return self._fine

    def _tolerance(self) -> np.ndarray:
        """:data:`PLATEAU_TOLERANCE` in log-odds at every pixel (float64)."""
        return PLATEAU_TOLERANCE / (self.p * (1 - self.p))

    @staticmethod
    def _h_maxima(logit: np.ndarray, h: float, low: float, parts: np.ndarray, boxes: list, whole: bool,
                  tolerance: np.ndarray | None = None) -> np.ndarray:
        """h-maxima of ``logit`` where it exceeds ``low`` (bool), on the whole raster or on each part's box.

        ``tolerance``: per pixel, as :func:`~schoolvision.scan.maxima.h_maxima` takes it (None: 0).
        """
        if whole:
            # below ``low`` nothing matters (as outside a part below): one level there, a faster sort
            return h_maxima(np.maximum(logit, low), h, 0.0 if tolerance is None else tolerance).astype(bool)
        peaks = np.zeros(logit.shape, bool)
        for i, box in enumerate(boxes, start=1):
            inside = parts[box] == i
            part = np.where(inside, logit[box], low)
            peaks[box] |= h_maxima(part, h, 0.0 if tolerance is None else tolerance[box]).astype(bool) & inside
        return peaks

    def labels(self, threshold: float, reuse: bool = False) -> tuple[np.ndarray, int]:
        """Region labels (int32, 0 = background) where P(school) >= ``threshold``, and their number.

        ``reuse``: split regions with the basins of the lowest threshold run so far where they agree
        (see :meth:`_from_base`); for the precision-recall sweep, which keeps each region's peak only.
        That runs on the lower threshold's bounding box (labels in raster order, as on the whole raster).
        """
        labels, n, box = self._labels_in_box(threshold, reuse)
        if labels.shape == self.prob.shape:
            return labels, n
        full = np.zeros(self.prob.shape, np.int32)
        full[box] = labels
        return full, n

    def _labels_in_box(self, threshold: float, reuse: bool) -> tuple[np.ndarray, int, tuple[slice, slice]]:
        """:meth:`labels` on a box that holds every labelled pixel: (labels in the box, their number, the box)."""
        if reuse and self._base is not None and threshold >= self._base[0]:
            box = self._base[3]
            above = self.finite[box] & (self.p[box] >= threshold)
            if not above.any():
                return np.zeros((0, 0), np.int32), 0, np.s_[0:0, 0:0]
            sub = bounding_box(above)  # a higher threshold's pixels: a smaller box, numbered in the same order
            above = above[sub]
            box = (slice(box[0].start + sub[0].start, box[0].start + sub[0].stop),
                   slice(box[1].start + sub[1].start, box[1].start + sub[1].stop))
            markers, n = ndimage.label(self.peaks(threshold)[box] & above, structure=EIGHT)
            reused = self._from_base(threshold, above, markers, n, sub)
            if reused is not None:
                return reused[0], reused[1], box
        return (*self._labels_watershed(threshold, keep=reuse), np.s_[:, :])

    def _labels_watershed(self, threshold: float, keep: bool = True) -> tuple[np.ndarray, int]:
        """:meth:`labels` by a watershed on the whole raster.

        ``keep``: the lowest threshold run so far with it sets ``_base`` (a sweep's calls keep it; a
        single extraction does not, so it never changes what a sweep running beside it reads).
        """
        above = self.finite & (self.p >= threshold)
        if not above.any():
            return np.zeros(self.prob.shape, np.int32), 0
        markers, n = ndimage.label(self.peaks(threshold) & above, structure=EIGHT)
        labels = self._watershed(above, markers)
        if keep and (self._base is None or threshold < self._base[0]):
            box = bounding_box(above)
            self._base = (threshold, labels[box].copy(), n, box)
        rest, m = ndimage.label(above & (labels == 0), structure=EIGHT)  # regions whose peak sits below the threshold
        labels[rest > 0] = rest[rest > 0] + n
        return labels, n + m

    def _watershed(self, above: np.ndarray, markers: np.ndarray) -> np.ndarray:
        """Basins of ``markers`` within ``above``, run on the bounding box of ``above``.

        Exactly the whole raster's result: the flood visits the same pixels in the same order.
        """
        box = bounding_box(above)
        basins = np.zeros(above.shape, np.int32)
        basins[box] = watershed(-self.surface[box], markers[box], mask=above[box], connectivity=2)
        return basins

    def _from_base(self, threshold: float, above: np.ndarray, markers: np.ndarray, n: int,
                   sub: tuple[slice, slice] = np.s_[:, :]) -> tuple[np.ndarray, int] | None:
        """:meth:`labels` at ``threshold`` from the watershed at a lower one; None where they may differ more.

        The flood fills higher log-odds first, so within a connected part above ``threshold`` it
        reaches every pixel from that part's own peaks before any lower one: a part with one peak is
        that peak's basin whole, a part with none a region of its own (numbered after the peaks' in
        raster order, as :meth:`labels` numbers them), and a part with several is
        split as the lower threshold's basins split it. None (run the watershed) where a lower basin
        holds two of this threshold's peaks (a peak region cut in two by the threshold). Pixels
        between two basins at exactly equal log-odds (common on a blended raster's borders) may fall
        to the other basin than a watershed of their own would give them, since skimage breaks such
        ties by the order of its heap: region areas and means can move there. The sweep keeps only
        each region's peak, at its top, so its counts stay those of a watershed per threshold
        (``tests/test_candidates.py`` compares them on rasters with such ties). ``above`` and
        ``markers`` cover ``sub`` of the lower threshold's box (``self._base``), and so do the labels returned.
        """
        if self._base is None or threshold < self._base[0]:
            return None
        _, base, base_n, _ = self._base
        base = base[sub]
        parts, k = ndimage.label(above, structure=EIGHT)
        pixels = np.flatnonzero(markers)
        marker = markers.ravel()[pixels]
        part_of = np.zeros(n + 1, np.int32)  # the part holding each peak
        part_of[marker] = parts.ravel()[pixels]
        basin_of = np.zeros(n + 1, np.int32)  # the lower threshold's basin holding each peak
        basin_of[marker] = base.ravel()[pixels]
        if (np.bincount(basin_of[1:], minlength=base_n + 1)[1:] > 1).any():
            return None
        peaks_in = np.bincount(part_of[1:], minlength=k + 1)
        single = peaks_in[part_of[1:]] == 1
        label_of = np.zeros(k + 1, np.int32)  # the label of a whole part: its one peak's, or its own
        label_of[part_of[1:][single]] = np.arange(1, n + 1, dtype=np.int32)[single]
        none = peaks_in == 0
        none[0] = False
        label_of[none] = n + np.arange(1, int(none.sum()) + 1, dtype=np.int32)
        labels = label_of[parts]
        several = peaks_in[parts] > 1
        if several.any():
            lut = np.zeros(base_n + 1, np.int32)
            lut[basin_of[1:]] = np.arange(1, n + 1, dtype=np.int32)
            mapped = lut[base[several]]
            if not (mapped > 0).all() or (part_of[mapped] != parts[several]).any():
                return None
            labels[several] = mapped
        return labels, n + int(none.sum())

    def points(self, threshold: float, min_area_m2: float = MIN_AREA_M2,
               reuse: bool = False) -> tuple[gpd.GeoDataFrame, np.ndarray]:
        """(unranked points with their ``label``, region labels) at ``threshold`` (``reuse``: see :meth:`labels`)."""
        labels, n, box = self._labels_in_box(threshold, reuse)
        label, maxs, means, areas, xs, ys = self._peak_arrays(labels, n, box, min_area_m2)
        if labels.shape != self.prob.shape:
            full = np.zeros(self.prob.shape, np.int32)
            full[box] = labels
            labels = full
        rows = [{"label": int(i), "scene": self.scene, "max_prob": float(mx), "mean_prob": float(mn),
                 "area_m2": float(area), "peak": "probability", "geometry": Point(x, y)}
                for i, mx, mn, area, x, y in zip(label, maxs, means, areas, xs, ys)]
        points = gpd.GeoDataFrame(rows, geometry="geometry", crs=self.crs) if rows else _empty(self.crs)
        return points, labels

    def peak_arrays(self, threshold: float, min_area_m2: float = MIN_AREA_M2,
                    reuse: bool = False) -> tuple[np.ndarray, ...]:
        """(label, max, mean, area m^2, x, y) of the regions kept at ``threshold``, in label order.

        :meth:`points`'s numbers as arrays, no frame and no full-raster labels: the precision-recall sweep
        needs them at every threshold (``reuse``: see :meth:`labels`).
        """
        return self._peak_arrays(*self._labels_in_box(threshold, reuse), min_area_m2)

    def _peak_arrays(self, labels: np.ndarray, n: int, box: tuple[slice, slice],
                     min_area_m2: float) -> tuple[np.ndarray, ...]:
        if n == 0:
            return (np.zeros(0, np.intp), *(np.zeros(0) for _ in range(5)))
        transform, width = self.transform, self.prob.shape[1]
        px_area = abs(transform.a * transform.e - transform.b * transform.d)
        maxs, means, counts, peaks = self._stats(labels, n, box)
        areas = counts * px_area
        keep = (counts > 0) & (areas >= min_area_m2)
        r, c = np.divmod(peaks[keep], width)
        xs, ys = transform @ (c + 0.5, r + 0.5)
        label = np.flatnonzero(keep) + 1
        return label, maxs[keep], means[keep], areas[keep], np.asarray(xs, float), np.asarray(ys, float)

    def _stats(self, labels: np.ndarray, n: int, box: tuple[slice, slice] | None = None) -> tuple[np.ndarray, ...]:
        """Max, mean, pixel count and flat index (in the whole raster) of the max of regions ``1..n``.

        ``labels`` cover ``box`` of the raster (default: all of it).

        The numbers of ``ndimage.maximum``, ``mean`` and ``maximum_position``, ties included: like them,
        each region's peak is its last pixel in the sort of all values (done once, not per threshold),
        and sums add the region's pixels in raster order. Only labelled pixels are visited.
        """
        self._sort_values()
        inside = np.flatnonzero(labels)
        region = labels.ravel()[inside]
        pixels = inside
        if labels.shape != self.prob.shape:  # box to raster: the same pixels, in the same (raster) order
            rows, cols = np.divmod(inside, labels.shape[1])
            pixels = (rows + box[0].start) * self.prob.shape[1] + cols + box[1].start
        values = self.values.ravel()[pixels]
        last = np.full(n + 1, -1, np.intp)
        np.maximum.at(last, region, self._rank[pixels])
        peaks = self._order[last[1:]]
        counts = np.bincount(region, minlength=n + 1)[1:]
        sums = np.bincount(region, weights=values, minlength=n + 1)[1:]
        return self.values.ravel()[peaks], sums / counts, counts, peaks

    def sweep(self, thresholds: Sequence[float] = SWEEP_THRESHOLDS, min_area_m2: float = MIN_AREA_M2,
              workers: int = 1) -> PeakSweep:
        """:meth:`peak_arrays` at every threshold, lowest first, as the evaluation's sweep computes them.

        A scan unit runs it while the raster is in memory (:meth:`start_sweep`, beside its own
        candidates, which reuse the peaks and the sort computed here), so the evaluation reads no raster
        and repeats no peak search. ``workers`` threads share the thresholds.
        """
        with ThreadPoolExecutor(max(1, workers)) as pool:
            return self.start_sweep(pool, thresholds, min_area_m2)()

    def start_sweep(self, pool: ThreadPoolExecutor, thresholds: Sequence[float] = SWEEP_THRESHOLDS,
                    min_area_m2: float = MIN_AREA_M2) -> Callable[[], PeakSweep]:
        """Start :meth:`sweep`: returns once the lowest threshold is done; call the result for the sweep.

        The lowest threshold sets what the others reuse (peaks, basins, the sort of the values); from
        then on the sweep only reads the field, so its other thresholds run on ``pool`` (numpy and scipy
        release the GIL) while the caller extracts candidates from the same field, with the same arrays
        as one after the other.
        """
        ts = sorted(float(t) for t in thresholds)
        if not ts:
            return lambda: PeakSweep(self.scene, self.crs, float(min_area_m2), {}, self.min_separation)

        def arrays_at(t: float) -> tuple[np.ndarray, ...]:
            return self.peak_arrays(t, min_area_m2, reuse=True)[1:]

        sorting = pool.submit(self._sort_values)  # beside the peak search, which does not need it
        self.peaks(ts[0])
        sorting.result()
        first = arrays_at(ts[0])
        rest = [pool.submit(arrays_at, t) for t in ts[1:]]
        return lambda: PeakSweep(self.scene, self.crs, float(min_area_m2),
                                 dict(zip(ts, [first, *(f.result() for f in rest)], strict=True)), self.min_separation)

    def _sort_values(self) -> None:
        """The sort of the values :meth:`_stats` breaks ties by (once per raster)."""
        if self._rank is None:
            order = self.values.ravel().argsort()
            rank = np.empty(order.size, np.intp)
            rank[order] = np.arange(order.size)
            self._order, self._rank = order, rank

    def candidates(self, threshold: float,
                   min_area_m2: float = MIN_AREA_M2) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
        """(ranked points, region polygons) at ``threshold``: :func:`extract_candidates`."""
        points, labels = self.points(threshold, min_area_m2)
        crs = self.crs
        if not len(points):
            return rank(points), gpd.GeoDataFrame({"scene": [], "label": []}, geometry=[], crs=crs)
        keep = set(points["label"])
        polys = [{"scene": self.scene, "label": int(v), "geometry": shape(g)}
                 for g, v in shapes(labels, mask=labels > 0, transform=self.transform) if int(v) in keep]
        regions = gpd.GeoDataFrame(polys, geometry="geometry", crs=crs) if polys else gpd.GeoDataFrame(
            {"scene": [], "label": []}, geometry=[], crs=crs)
        if len(regions):
            regions = regions.dissolve(by=["scene", "label"], as_index=False)
        return rank(points), regions


def _pixel_size(transform) -> float:
    """Metres (CRS units) per pixel side: 1 without a transform (:func:`split_regions` works in pixels)."""
    return 1.0 if transform is None else float(np.sqrt(abs(transform.a * transform.e - transform.b * transform.d)))


def split_regions(prob: np.ndarray, threshold: float, dip: float = SPLIT_DIP) -> tuple[np.ndarray, int]:
    """Label regions where ``prob >= threshold``; a region with several peaks is split between them.

    Two schools a street apart blur into one region above the threshold, and where the model is
    confident the probability saturates near 1, hiding the valley between them. In log-odds the valley
    shows: peaks are the h-maxima of the log-odds with a dip of at least ``dip`` (0.5 = odds drop by
    1.65x between the peaks), and the region is split along the watershed between them. Above
    ``SATURATION`` the log-odds are flat: differences between 0.99999 and 0.999995 are noise.
    """
    return ProbabilityField(prob, None, None, dip=dip).labels(threshold)


def extract_candidates(prob: np.ndarray, transform, crs, threshold: float, scene: str = "",
                       min_area_m2: float = MIN_AREA_M2, dip: float = SPLIT_DIP,
                       min_separation: float = 0.0) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """(points, region polygons) of regions where ``prob >= threshold``, ranked.

    Regions split at deep valleys (see :func:`split_regions`) and, with ``min_separation`` metres, between
    peaks that far apart (see :meth:`ProbabilityField.peaks`).
    """
    return ProbabilityField(prob, transform, crs, scene, dip, min_separation).candidates(threshold, min_area_m2)


def default_min_separation(chip_size: int, gsd: float | None) -> float:
    """``scan --min-separation``'s default: ``MIN_SEPARATION_CHIPS`` of a chip's ground width, in metres."""
    return MIN_SEPARATION_CHIPS * chip_size * float(gsd or 1.0)


def empty_candidates(crs) -> gpd.GeoDataFrame:
    """No candidates: the columns of a candidates frame, typed, in ``crs``."""
    return _empty(crs)


def _empty(crs) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({c: pd.Series(dtype="float64" if "prob" in c or c == "area_m2" else "object")
                             for c in COLUMNS if c != "geometry"}, geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def rank(cands: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Sort by max then mean probability (descending) and number them 1..N."""
    if not len(cands):
        return cands
    out = cands.sort_values(["max_prob", "mean_prob", "scene"], ascending=[False, False, True], kind="stable")
    out = out.reset_index(drop=True)
    out["rank"] = np.arange(1, len(out) + 1)
    return out[[c for c in COLUMNS if c in out.columns] + [c for c in out.columns if c not in COLUMNS]]


def merge_duplicates(cands: gpd.GeoDataFrame, distance: float, same_scene: float = 0.0) -> gpd.GeoDataFrame:
    """Merge candidates closer than ``distance`` metres from different scenes, keeping the most probable.

    One school seen by two overlapping scenes is one candidate; within a scene, ``same_scene`` metres
    (0: never) merge. Close pairs come from a spatial index (shapely's STRtree), never an n x n
    matrix, so a country's candidates merge in seconds; pairs join transitively (connected
    components) and each group keeps its most probable member (the first one on ties).
    """
    if len(cands) < 2 or (cands["scene"].nunique() < 2 and same_scene <= 0):
        return cands
    metric = cands if cands.crs.is_projected else cands.to_crs(metric_crs(cands))
    keep = merged_rows(metric.geometry.to_numpy(), cands["scene"].to_numpy(), cands["max_prob"].to_numpy(),
                       distance, same_scene)
    return rank(cands.iloc[keep].copy())


def merged_rows(points: np.ndarray, scenes: np.ndarray, probs: np.ndarray, distance: float,
                same_scene: float = 0.0) -> np.ndarray:
    """The rows :func:`merge_duplicates` keeps (sorted), from metric points, scene names and probabilities."""
    left, right = shapely.STRtree(points).query(points, predicate="dwithin", distance=distance)
    keep = left < right
    left, right = left[keep], right[keep]
    join = scenes[left] != scenes[right]
    if same_scene > 0:
        join |= shapely.distance(points[left], points[right]) <= same_scene
    n = len(points)
    graph = sparse.coo_matrix((np.ones(int(join.sum()), bool), (left[join], right[join])), shape=(n, n))
    _, group = connected_components(graph, directed=False)
    order = np.lexsort((np.arange(n), -probs, group))  # by group, most probable first, then first in order
    first = np.ones(n, bool)
    first[1:] = group[order][1:] != group[order][:-1]
    return np.sort(order[first])


def common_crs(crss: Sequence):
    """The scenes' CRS when they share one, else EPSG:4326 (metric work reprojects to local UTM)."""
    unique = {rasterio.crs.CRS.from_user_input(c).to_string() for c in crss}
    return next(iter(unique)) if len(unique) == 1 else "EPSG:4326"


@dataclass(frozen=True)
class PeakSweep:
    """One scene's region peaks at each threshold of a sweep: what the evaluation needs of its raster.

    Made by :meth:`ProbabilityField.sweep` in the scene's unit and kept in its done-record
    (:meth:`record`), so that evaluating a scan of many scenes reads no raster again. It answers
    :meth:`peak_arrays` as the field would, for its own thresholds and minimum area only.
    """

    scene: str
    crs: Any
    min_area_m2: float
    arrays: dict[float, tuple[np.ndarray, ...]]  # threshold -> (max, mean, area m^2, x, y) of the kept regions
    min_separation: float = 0.0

    def covers(self, thresholds: Sequence[float], min_area_m2: float, min_separation: float = 0.0) -> bool:
        """Whether it holds every one of ``thresholds`` at ``min_area_m2`` and ``min_separation``."""
        return ((min_area_m2, min_separation) == (self.min_area_m2, self.min_separation)
                and all(float(t) in self.arrays for t in thresholds))

    def peak_arrays(self, threshold: float, min_area_m2: float = MIN_AREA_M2,
                    reuse: bool = False) -> tuple[np.ndarray, ...]:
        """(label, max, mean, area m^2, x, y) as :meth:`ProbabilityField.peak_arrays` (labels are 1..n here)."""
        if not self.covers([threshold], min_area_m2, self.min_separation):
            raise KeyError(f"no sweep at threshold {threshold} and min area {min_area_m2} for scene {self.scene}")
        values = self.arrays[float(threshold)]
        return (np.arange(1, len(values[0]) + 1), *values)

    def record(self) -> dict[str, Any]:
        """JSON-ready: float64 numbers round-trip exactly, so the evaluation's counts stay the same."""
        return {"min_area_m2": self.min_area_m2, "min_separation": self.min_separation,
                "crs": self.crs.to_wkt() if self.crs else None,
                "thresholds": {repr(t): [np.asarray(v, float).tolist() for v in a] for t, a in self.arrays.items()}}

    @classmethod
    def from_record(cls, scene: str, record: dict[str, Any]) -> PeakSweep:
        """The sweep :meth:`record` wrote."""
        crs = rasterio.crs.CRS.from_wkt(record["crs"]) if record.get("crs") else None
        arrays = {float(t): tuple(np.asarray(v, float) for v in a) for t, a in record["thresholds"].items()}
        return cls(scene, crs, float(record["min_area_m2"]), arrays, float(record.get("min_separation", 0.0)))


def read_fields(scenes: Sequence, sweeps: Mapping[str, PeakSweep] | None = None,
                min_area_m2: float = MIN_AREA_M2, min_separation: float = 0.0) -> list[ProbabilityField | PeakSweep]:
    """The probability raster of each scanned scene (``SceneScan`` items), ready for any threshold.

    ``sweeps``: scenes' kept :class:`PeakSweep` (by scene name); one that covers the sweep's thresholds at
    ``min_area_m2`` and ``min_separation`` stands in for its raster, the others are read.
    """
    sweeps = sweeps or {}
    out: list[ProbabilityField | PeakSweep] = []
    for s in scenes:
        kept = sweeps.get(s.scene)
        ok = kept is not None and kept.covers(SWEEP_THRESHOLDS, min_area_m2, min_separation)
        out.append(kept if ok else ProbabilityField.read(s.probability, s.scene, min_separation=min_separation))
    return out


def extract_all(scenes: Sequence, threshold: float, merge_distance: float = 64.0,
                min_area_m2: float = MIN_AREA_M2, fields: Sequence[ProbabilityField] | None = None,
                min_separation: float = 0.0) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """Candidates and regions of every scanned scene (``SceneScan`` items), in one CRS, merged and ranked.

    Points closer than ``merge_distance`` from different scenes, or half that within one scene (a
    school split at a scene edge), are one candidate. ``fields``: the scenes' rasters from
    :func:`read_fields`, when the caller reuses them (the evaluation's sweep does); else they are read
    with ``min_separation`` (see :meth:`ProbabilityField.peaks`).
    """
    if not scenes:
        return _empty("EPSG:4326"), gpd.GeoDataFrame({"scene": [], "label": []}, geometry=[], crs="EPSG:4326")
    crs = common_crs([s.crs for s in scenes])
    pts, regs = [], []
    for field in read_fields(scenes, min_separation=min_separation) if fields is None else fields:
        p, r = field.candidates(threshold, min_area_m2)
        pts.append(p.to_crs(crs))
        regs.append(r.to_crs(crs))
    points = gpd.GeoDataFrame(pd.concat(pts, ignore_index=True), geometry="geometry", crs=crs)
    regions = gpd.GeoDataFrame(pd.concat(regs, ignore_index=True), geometry="geometry", crs=crs)
    points = merge_duplicates(rank(points), merge_distance, merge_distance / 2) if len(points) else _empty(crs)
    return points, regions


def write_candidates(cands: gpd.GeoDataFrame, out_dir: str | Path,
                     extra_layers: Mapping[str, object] | None = None) -> dict[str, Path]:
    """Write ``candidates.gpkg`` (layer ``candidates`` plus ``extra_layers``) and ``candidates.geojson`` (EPSG:4326)."""
    folder = ScanFolder(out_dir)
    paths = {"gpkg": folder.candidates_path, "geojson": folder.root / ScanFolder.CANDIDATES_GEOJSON}
    cols = [c for c in cands.columns if c != "label"]
    write_vectors(cands[cols], gpkg=paths["gpkg"], geojson=paths["geojson"], layer="candidates",
                  extra_layers=extra_layers)
    return paths
