"""The probability GeoTIFF of a scan: blended row by row as windows are scored, then put on the scene's grid.

Each window's P(school) is spread over its pixels with a Gaussian weight (sigma = chip/4) and
blended: ``prob = sum(w * p) / sum(w)``. Rows are written to a tiled float32 GeoTIFF as soon as no
later window can touch them, so memory is one band of ``chip + 256`` rows whatever the scene's
height (it grows with its width only). When the scan grid differs from the scene's (resampled or
warped), the raster is warped back block by block onto the scene's exact CRS, transform and size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from schoolvision.io.rasters import BLOCK, build_overviews, geotiff_profile
from schoolvision.io.scans import STRIDE_TAG
from schoolvision.scan.windows import gaussian_weight

NODATA = -1.0
"""Nodata value of probability rasters (P(school) is in [0, 1])."""

def raster_profile(width: int, height: int, crs, transform) -> dict:
    """Profile of a probability GeoTIFF: one float32 band with ``NODATA``, the project's GeoTIFF profile.

    Rows are flushed in multiples of its tile size (``BLOCK``).
    """
    return geotiff_profile(width, height, 1, "float32", crs, transform, nodata=NODATA)


class RowBlender:
    """Blend window probabilities into a rolling band of rows and flush finished rows to ``dst``."""

    def __init__(self, dst, width: int, height: int, chip: int):
        self.dst, self.width, self.height, self.chip = dst, width, height, chip
        self.rows = BLOCK + chip
        # float64 sums: a float32 weight times a float32 probability is exact there, so where one window
        # alone covers a pixel (or equal ones do) the blend gives back its probability exactly; float32 sums
        # left one-ulp noise on such plateaus, which split them into many "peaks"
        self.acc = np.zeros((self.rows, width), np.float64)
        self.wsum = np.zeros((self.rows, width), np.float64)
        self.top = 0
        self.weight = gaussian_weight(chip)

    def add(self, ro: int, co: int, p: float, mask: np.ndarray) -> None:
        """Add probability ``p`` of the window at (row, col), weighted where ``mask`` holds data."""
        if ro - self.top >= BLOCK:
            self._flush(((ro - self.top) // BLOCK) * BLOCK)
        h, w = min(self.chip, self.height - ro), min(self.chip, self.width - co)
        wgt = self.weight[:h, :w] * mask[:h, :w]
        r0 = ro - self.top
        self.acc[r0 : r0 + h, co : co + w] += wgt * p
        self.wsum[r0 : r0 + h, co : co + w] += wgt

    def _flush(self, n: int) -> None:
        n = min(n, self.height - self.top)
        if n <= 0:
            return
        with np.errstate(invalid="ignore", divide="ignore"):
            prob = np.where(self.wsum[:n] > 0, self.acc[:n] / self.wsum[:n], NODATA).astype(np.float32)
        self.dst.write(prob[None], window=Window(0, self.top, self.width, n))
        self.acc = np.roll(self.acc, -n, axis=0)
        self.wsum = np.roll(self.wsum, -n, axis=0)
        self.acc[-n:] = 0
        self.wsum[-n:] = 0
        self.top += n

    def finish(self) -> None:
        """Write the rows still held (call once, after the last window)."""
        while self.top < self.height:
            self._flush(min(self.rows, self.height - self.top))


def warp_back(scan_path: Path, scene, out_path: Path, stride_px: float | None = None) -> None:
    """Resample the scan-grid raster onto the scene's exact grid, block rows at a time, nodata outside data.

    ``stride_px``: the window stride in the scene's pixels, recorded as :data:`~schoolvision.io.scans.STRIDE_TAG`.
    """
    prof = raster_profile(scene.width, scene.height, scene.crs, scene.transform)
    with rasterio.open(scan_path) as src, rasterio.open(out_path, "w", **prof) as dst:
        if stride_px:
            dst.update_tags(**{STRIDE_TAG: f"{stride_px:.6g}"})
        opts = {"crs": scene.crs, "transform": scene.transform, "width": scene.width, "height": scene.height,
                "src_nodata": NODATA, "nodata": NODATA}
        with (WarpedVRT(src, resampling=Resampling.bilinear, **opts) as vb,
              WarpedVRT(src, resampling=Resampling.nearest, **opts) as vn):
            for top in range(0, scene.height, BLOCK):
                win = Window(0, top, scene.width, min(BLOCK, scene.height - top))
                prob = vb.read(1, window=win)
                data = scene.dataset_mask(window=win) > 0
                hole = data & (prob == NODATA)
                if hole.any():  # bilinear needs neighbours; border pixels take the nearest value
                    prob = np.where(hole, vn.read(1, window=win), prob)
                prob[~data] = NODATA
                dst.write(prob[None], window=win)
        build_overviews(dst)
