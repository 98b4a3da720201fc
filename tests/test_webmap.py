"""The map's overlays: the small-array warp gives the picture a full-resolution WarpedVRT gives, on its grid."""

from __future__ import annotations

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from schoolvision.scan.webmap import MERCATOR, mercator_overlay

from fixtures import write_scene


def test_mercator_overlay_matches_a_full_resolution_warp(tmp_path):
    path = tmp_path / "scene.tif"
    # west of its zone's central meridian at 50 N: the frame turns by ~1.5 degrees in Web Mercator
    write_scene(path, size=512, origin=(300_000.0, 5_540_000.0), schools_px=((100, 100, 60), (300, 350, 80)))
    with rasterio.open(path) as ds:
        arr, mask, bounds = mercator_overlay(ds, max_side=256)
        with WarpedVRT(ds, crs=MERCATOR, resampling=Resampling.bilinear) as vrt:  # the reference: warp, then shrink
            ref = vrt.read(out_shape=(3, *arr.shape[1:]), resampling=Resampling.average)
            w, s, e, n = transform_bounds(MERCATOR, "EPSG:4326", *vrt.bounds)
    assert max(arr.shape[1:]) == 256 and arr.dtype == np.uint8 and mask.shape == arr.shape[1:]
    np.testing.assert_allclose(bounds, [[s, w], [n, e]], rtol=0, atol=1e-9)  # the same grid
    inside = mask & (ref.max(axis=0) > 0)
    assert inside.mean() > 0.9 and not mask[0, 0]  # the warped frame's empty corner is transparent
    diff = np.abs(arr.astype(int) - ref.astype(int))[:, inside]
    assert np.median(diff) <= 2 and np.percentile(diff, 99) <= 25  # the same picture (bright schools included)
    assert (arr[:, inside] > 200).sum() > 0.5 * (ref[:, inside] > 200).sum()
