"""The Deepness exports, run the way QGIS's Deepness plugin runs them, show what the scan shows.

QGIS is not needed: :func:`deepness_layer` re-implements the plugin's processing of an "Entire layer"
(PUTvision/qgis-plugin-deepness, ``src/deepness``; the lines followed are quoted where they are used):

* the panel's "Load default parameters" (``deepness_dockwidget.py``, ``_load_default_model_parameters``)
  reads ``resolution``, ``tile_size``, ``tiles_overlap``, ``seg_thresh``, ``seg_small_segment`` and
  ``reg_output_scaling`` with ``json.loads`` (``processing/models/model_base.py``, ``get_metadata_*``)
  into spin boxes that keep 2 decimals (resolution cm/px, probability threshold) and 3 (output scaling)
  (``deepness_dockwidget.ui``: ``<property name="decimals">``); the tile size is the input's last axis
  (``input_size_px = input_0_shape[-1]``);
* the extents (``processing/extent_utils.py``): the base extent is the layer's; the extended extent
  adds ``processing_overlap_px // 2`` on every side, is intersected with the layer again, then grows at
  ``xMaximum`` and ``yMaximum`` until it is ``N * stride + tile_size`` pixels; ``processing_overlap_px``
  is ``int(tile_size_px * percentage / 100 * 2) // 2`` (``ProcessingOverlap.get_overlap_px``) and
  ``processing_stride_px`` is ``tile_size_px - processing_overlap_px``;
* tiles (``processing/map_processor/map_processor.py``, ``tiles_generator``; ``processing_utils.py``,
  ``get_tile_image``): ``x_bins_number = round((img_size_x_pixels - tile_size_px) / stride_px) + 1``,
  read at the resolution with bilinear resampling, NHWC uint8; ``model_base.py`` ``preprocessing``:
  ``normalize_values_to_01`` (``np.float32(tiles_batched * 1./255.)``), ``standardize_values``
  (``(tiles_batched - params.mean) / params.std``), ``transpose_nhwc_to_nchw``;
* the Regressor (``map_processor_regression.py``, ``_process_tile``): ``result[np.isnan(result)] = 0``,
  ``result *= self.regression_parameters.output_scaling``; the Segmentor
  (``map_processor_segmentation.py``, ``_process_tile``): ``result[result <
  ...pixel_classification__probability_threshold] = 0.0``, then ``np.argmax(result, axis=1)``, and
  ``cv2.medianBlur(full_result_img[i], blur_size)`` with ``blur_size = int(size // 2) * 2 + 1``;
* stitching: both write into ``_get_array_or_mmapped_array``, ``np.zeros(final_shape_px, np.uint8)``
  (``map_processor.py``), through ``TileParams.set_mask_on_full_img`` (``processing/tile_params.py``):
  only the tile's centre, ``half_overlap = (tile_size_px - stride_px) // 2`` in from each side, except
  at the outer tiles' outer sides (``get_slice_on_full_image_for_copying``); the float tile is cast to
  ``uint8`` by that assignment (truncation); each output channel is stitched on its own plane;
* the result is cut to the base extent (``calculate_base_extent_bbox_in_full_image``) and written with
  the geotransform ``[extent.xMinimum(), rlayer_units_per_pixel, 0, extent.yMaximum(), 0,
  -rlayer_units_per_pixel]`` (``save_result_img_as_tif``).

The layer is then compared with the scan's probability raster of the same town and model.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.warp import Resampling, reproject

from schoolvision.data.windows import window_offsets
from schoolvision.io.imagery import list_sources
from schoolvision.model.backbones import build_model
from schoolvision.model.checkpoint import CheckpointMeta, save_checkpoint
from schoolvision.model.export import read_metadata
from schoolvision.model.runtime import make_runtime
from schoolvision.scan.scene import scan_scene
from schoolvision.scan.windows import to_input

ort = pytest.importorskip("onnxruntime")

IMAGE_SIZE = 112  # 128 m chips at 1 m into 112 px: 114.285714 cm/px, which the plugin's field keeps as 114.29
CHIP = 128
BLOCK_M = 128.0
BATCH = 16


@dataclass(frozen=True)
class PanelSettings:
    """What the plugin's panel holds after "Load default parameters" for one model file."""

    model_type: str
    resolution_cm: float
    tile: int
    overlap_percent: int
    mean: np.ndarray
    std: np.ndarray
    output_scaling: float | None = None
    probability_threshold: float | None = None
    small_segment: int | None = None

    @property
    def overlap_px(self) -> int:
        return int(self.tile * self.overlap_percent / 100 * 2) // 2

    @property
    def stride(self) -> int:
        return self.tile - self.overlap_px


def panel_settings(path) -> PanelSettings:
    """The metadata as the plugin reads it (``json.loads`` of each value) into its spin boxes."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    kind = str(meta["model_type"]).capitalize()
    tile = session.get_inputs()[0].shape[-1]
    assert int(meta["tile_size"]) == tile
    seg = kind == "Segmentor"
    return PanelSettings(
        model_type=kind, resolution_cm=round(float(meta["resolution"]), 2), tile=tile,
        overlap_percent=int(meta["tiles_overlap"]),
        mean=np.array(meta["standardization_mean"], np.float32), std=np.array(meta["standardization_std"], np.float32),
        output_scaling=None if seg else round(float(meta["reg_output_scaling"]), 3),
        probability_threshold=round(float(meta["seg_thresh"]), 2) if seg else None,
        small_segment=int(meta["seg_small_segment"]) if seg else None,
    )


def deepness_layer(model_path, scene_path, settings: PanelSettings, stitch_dtype=np.uint8) -> tuple[np.ndarray, Affine]:
    """The plugin's result for the whole scene: ((channels, H, W) array, geotransform). See the module docstring."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    u = settings.resolution_cm / 100  # metres per tile pixel (a metric CRS: convert_meters_to_rlayer_units)
    tile, stride = settings.tile, settings.stride
    with rasterio.open(scene_path) as src:
        left, bottom, right, top = src.bounds
        # calculate_extended_processing_extent: the half-overlap margin is cut back by the layer's extent,
        # then xMaximum and yMaximum grow to a whole number of strides
        sizes = []
        for length in (right - left, top - bottom):
            px = round(length / u)
            missing = tile - px if px <= tile else (stride - (px - tile) % stride) % stride
            sizes.append(px + missing)
        nx, ny = sizes
        ext_top = top + (ny - round((top - bottom) / u)) * u
        ext_transform = Affine(u, 0, left, 0, -u, ext_top)
        image = np.zeros((3, ny, nx), np.uint8)  # outside the layer: no data, read as 0
        reproject(src.read([1, 2, 3]), image, src_transform=src.transform, src_crs=src.crs,
                  dst_transform=ext_transform, dst_crs=src.crs, resampling=Resampling.bilinear)
    bins_x, bins_y = round((nx - tile) / stride) + 1, round((ny - tile) / stride) + 1
    tiles = [(by, bx) for by in range(bins_y) for bx in range(bins_x)]
    full = None
    half = (tile - stride) // 2
    for start in range(0, len(tiles), BATCH):
        batch = tiles[start : start + BATCH]
        nhwc = np.stack([image[:, by * stride : by * stride + tile, bx * stride : bx * stride + tile]
                         for by, bx in batch]).transpose(0, 2, 3, 1)
        x = (np.float32(nhwc * 1.0 / 255.0) - settings.mean) / settings.std
        result = session.run(None, {session.get_inputs()[0].name: x.transpose(0, 3, 1, 2).astype(np.float32)})[0]
        if settings.model_type == "Regressor":
            result[np.isnan(result)] = 0
            result = (result * settings.output_scaling).astype(np.float32)
        else:
            result[result < settings.probability_threshold] = 0.0
            result = np.argmax(result, axis=1)[:, None] if result.shape[1] > 1 else (result != 0).astype(int)
        if full is None:
            full = np.zeros((result.shape[1], ny, nx), stitch_dtype)
        for (by, bx), tile_result in zip(batch, result):
            y0, x0 = by * stride, bx * stride
            ys = slice(y0 + (0 if by == 0 else half), y0 + tile - (0 if by == bins_y - 1 else half))
            xs = slice(x0 + (0 if bx == 0 else half), x0 + tile - (0 if bx == bins_x - 1 else half))
            full[:, ys, xs] = tile_result[:, ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    if settings.model_type == "Segmentor":
        assert int(settings.small_segment // 2) * 2 + 1 == 1, "medianBlur of size 1 leaves the mask as it is"
    # calculate_base_extent_bbox_in_full_image: the base extent is the bottom-left of the extended image
    height, width = round((top - bottom) / u), round((right - left) / u)
    return full[:, ny - height :, :width], Affine(u, 0, left, 0, -u, top)


def block_means(values: np.ndarray, transform: Affine, origin: tuple[float, float], n: int) -> np.ndarray:
    """Mean of ``values`` over the ``BLOCK_M`` blocks (from ``origin``, n x n) their pixel centres fall in."""
    rows, cols = np.indices(values.shape) + 0.5
    x, y = transform @ (cols, rows)
    bx = np.floor((x - origin[0]) / BLOCK_M).astype(int)
    by = np.floor((origin[1] - y) / BLOCK_M).astype(int)
    ok = (bx >= 0) & (bx < n) & (by >= 0) & (by < n)
    index = (by * n + bx)[ok]
    return np.bincount(index, values[ok], n * n) / np.bincount(index, minlength=n * n)


def on_grid(layer: np.ndarray, transform: Affine, shape: tuple[int, int], target: Affine) -> np.ndarray:
    """``layer`` sampled at the pixel centres of another grid (nearest pixel)."""
    rows, cols = np.indices(shape) + 0.5
    col, row = ~transform @ (target @ (cols, rows))
    col = np.clip(np.floor(col).astype(int), 0, layer.shape[1] - 1)
    row = np.clip(np.floor(row).astype(int), 0, layer.shape[0] - 1)
    return layer[row, col]


def style_break(qml) -> float:
    """The value splitting the two classes of a QGIS DISCRETE colour ramp style (the first item's upper bound)."""
    return float(next(ET.parse(qml).getroot().iter("item")).get("value"))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def town(tmp_path_factory):
    """One 768 m demo town at 1 m."""
    from schoolvision.demo import make_demo

    info = make_demo(tmp_path_factory.mktemp("deepness") / "demo", towns=1, seed=0, size=768, gsd=1.0)
    return info.scenes[0]


@pytest.fixture(scope="module")
def exported(town, tmp_path_factory):
    """A run (ImageNet trunk, seeded head) whose threshold sits inside the scan's P range; its scan and exports."""
    from schoolvision.cli import main

    root = tmp_path_factory.mktemp("deepness_run")
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", pretrained=True)
    with torch.no_grad():
        model.head[1].weight.normal_(0, 0.03)
    meta = CheckpointMeta("efficientnet_lite0", IMAGE_SIZE, CHIP, 1.0, temperature=1.3)
    model.eval()
    source = list_sources([town])[0]
    scan_path = root / "probability.tif"
    scan_scene(model, meta, source, scan_path, runtime="torch", progress=False)
    with rasterio.open(scan_path) as ds:
        prob, transform = ds.read(1), ds.transform
    assert prob.min() >= 0 and prob.std() > 0.02, "the comparison needs a P(school) that varies over the town"
    # the threshold: what marks the top fifth of the town, with three decimals (not a whole percent)
    threshold = round(float(np.quantile(prob, 0.8)), 3)
    if float(threshold * 100).is_integer():
        threshold = round(threshold + 0.001, 3)
    save_checkpoint(root / "run" / "best.pt", model, replace(meta, threshold=threshold))
    with rasterio.open(town) as ds:
        image = ds.read([1, 2, 3]).astype(np.float32) / 255.0
    offsets = window_offsets(image.shape[1], CHIP, CHIP // 2)  # the scan's windows (a square town)
    windows = np.stack([image[:, r : r + CHIP, c : c + CHIP] for r in offsets for c in offsets])
    window_p = make_runtime("torch", model, meta).probability(to_input(windows, IMAGE_SIZE)).reshape(len(offsets), -1)
    out = root / "exported" / "model.onnx"
    assert main(["export", "--run", str(root / "run"), "--out", str(out)]) == 0
    return {"prob": prob, "transform": transform, "threshold": threshold, "dir": out.parent, "window_p": window_p,
            "offsets": offsets}


def test_export_writes_both_deepness_models_and_the_style(exported):
    folder, t = exported["dir"], exported["threshold"]
    regressor = read_metadata(folder / "model_deepness.onnx")
    segmentor = read_metadata(folder / "model_deepness_segmentor.onnx")
    assert regressor["model_type"] == "Regressor" and regressor["reg_output_scaling"] == 100
    assert "percent" in regressor["description"] and f"{t:.4g}" in regressor["description"]
    k = regressor["threshold_percent"]
    assert k - 1 < t * 100 <= k
    assert segmentor["model_type"] == "Segmentor" and segmentor["class_names"] == {"0": "not_school", "1": "school"}
    assert segmentor["seg_thresh"] == math.floor(t * 100) / 100 <= t < segmentor["seg_thresh"] + 0.01
    assert segmentor["seg_small_segment"] == 0
    # 114.285714 cm/px: the plugin's field keeps 114.29, said in the description; the exact value stays beside it
    for meta in (regressor, segmentor):
        assert meta["resolution"] == round(meta["input_gsd_cm"], 2) == 114.29
        assert "114.286 cm/px" in meta["description"] and "two decimals" in meta["description"]
    [low, high] = ET.parse(folder / "model_deepness.qml").getroot().iter("item")
    assert float(low.get("value")) == k - 0.5 and low.get("alpha") == "0"
    assert high.get("value") == "inf" and high.get("alpha") == "255"


@pytest.fixture(scope="module")
def regressor(exported, town):
    """The Regressor layer as Deepness writes it (uint8 stitching) and as float stitching would keep it."""
    path = exported["dir"] / "model_deepness.onnx"
    settings = panel_settings(path)
    layer, transform = deepness_layer(path, town, settings)
    floats, _ = deepness_layer(path, town, settings, stitch_dtype=np.float32)
    return settings, layer[0], floats[0], transform


def painted_cores(window_p: np.ndarray, offsets: list[int], size: int) -> np.ndarray:
    """The scan's window probabilities painted flat over each window's centre, the way Deepness paints tiles."""
    edges = [0] + [(a + b + CHIP) // 2 for a, b in zip(offsets, offsets[1:])] + [size]  # half-way between centres
    cuts = np.repeat(np.arange(len(offsets)), np.diff(edges))
    return window_p[np.ix_(cuts, cuts)]


def agreement(school: np.ndarray, exported, record_property) -> float:
    """IoU of a Deepness school area (on the scan's grid) with the scan's area at or above the threshold.

    The scan blends overlapping windows (Gaussian weights), Deepness paints each tile's centre flat,
    so the areas' borders differ even with equal window probabilities: the yardstick is the scan's own
    window probabilities painted flat (:func:`painted_cores`), which the Deepness area must match
    closely, and whose IoU with the scan's area the Deepness area must reach.
    """
    prob, t = exported["prob"], exported["threshold"]
    scan_area = prob >= t
    painted = painted_cores(exported["window_p"], exported["offsets"], prob.shape[0]) >= t
    overlap, yardstick = iou(school, scan_area), iou(painted, scan_area)
    reported = {"iou": overlap, "iou_painted_scan_windows": yardstick, "iou_with_painted": iou(school, painted),
                "area_share": school.mean(), "scan_area_share": scan_area.mean()}
    for name, value in reported.items():
        record_property(name, round(float(value), 4))
    assert iou(school, painted) >= 0.9  # tiles and windows differ only by resampling: near t only
    assert overlap >= yardstick - 0.05
    return overlap


def test_regressor_layer_matches_the_scan(exported, town, regressor, record_property):
    settings, layer, floats, transform = regressor
    prob, scan_transform = exported["prob"], exported["transform"]
    assert settings.tile == IMAGE_SIZE and settings.stride == IMAGE_SIZE // 2 and settings.resolution_cm == 114.29
    assert layer.dtype == np.uint8 and layer.shape == (round(768 / 1.1429),) * 2
    assert layer.max() <= 100
    # whole percents: the float stitching of the same tiles is less than one percent above the layer
    gap = floats / 100.0 - layer / 100.0
    assert gap.min() >= -1e-6 and gap.max() < 0.01
    # each tile is the scan's window at the same place: tiles of 112 px at 1.1429 m are its 128 m windows
    at = settings.stride * np.arange(len(exported["offsets"])) + settings.tile // 2  # tile centres
    centres = floats[np.ix_(at, at)] / 100.0
    np.testing.assert_allclose(centres, exported["window_p"], atol=0.02)
    n = prob.shape[0] // int(BLOCK_M)
    origin = (scan_transform.c, scan_transform.f)
    corr = float(np.corrcoef(block_means(prob.astype(np.float64), scan_transform, origin, n),
                             block_means(layer / 100.0, transform, origin, n))[0, 1])
    record_property("block_corr", round(corr, 5))
    assert corr >= 0.99
    school = on_grid(layer, transform, prob.shape, scan_transform) > style_break(exported["dir"] / "model_deepness.qml")
    agreement(school, exported, record_property)


def test_segmentor_mask_matches_the_scan(exported, town, regressor, record_property):
    path = exported["dir"] / "model_deepness_segmentor.onnx"
    settings = panel_settings(path)
    assert settings.model_type == "Segmentor" and settings.probability_threshold <= exported["threshold"]
    layer, transform = deepness_layer(path, town, settings)
    assert layer.dtype == np.uint8 and set(np.unique(layer).tolist()) == {0, 1}
    # the mask is where the Regressor's tile P(school) is above the run's threshold, to the pixel
    np.testing.assert_array_equal(layer[0] == 1, regressor[2] / 100.0 > exported["threshold"])
    school = on_grid(layer[0], transform, exported["prob"].shape, exported["transform"]) == 1
    agreement(school, exported, record_property)


def test_scaling_one_loses_the_map_in_uint8_stitching(exported, town):
    """The failure the percent scaling fixes: at reg_output_scaling 1 every P below 1 becomes 0."""
    folder = exported["dir"]
    settings = replace(panel_settings(folder / "model_deepness.onnx"), output_scaling=1.0)
    layer, _ = deepness_layer(folder / "model_deepness.onnx", town, settings)
    assert set(np.unique(layer).tolist()) <= {0, 1}
    assert (layer == 0).mean() > 0.9
