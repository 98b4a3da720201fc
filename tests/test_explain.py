"""Explanations: every method on every backbone, no hook leaks, georeferenced heatmaps, SHAP additivity, CLI errors."""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
from PIL import Image
from torch import nn

from schoolvision.cli import main
from schoolvision.commands.explain import write_galleries
from schoolvision.errors import UserError
from schoolvision.explain.layers import resolve_layer
from schoolvision.explain.methods import METHODS, Explainer, explain_batch, explainer
from schoolvision.explain.runner import ExplainConfig, explain_chips
from schoolvision.io.folders import ExplainFolder
from schoolvision.model.backbones import available_backbones, build_model
from schoolvision.plotting.explain import plot_faithfulness

from fixtures import save_untrained_run


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def lite0():
    torch.manual_seed(0)
    return build_model("efficientnet_lite0", pretrained=False).eval()


@pytest.mark.parametrize("backbone", available_backbones())
def test_every_method_on_every_backbone_releases_hooks(backbone):
    torch.manual_seed(0)
    model = build_model(backbone, pretrained=False).eval()
    x = torch.rand(2, 3, 32, 32)
    inplace = [m.inplace for m in model.modules() if hasattr(m, "inplace")]
    for method in [m for m in METHODS if m != "shap"]:
        maps = explain_batch(model, x, method)
        assert maps.shape == (2, 32, 32) and maps.dtype == np.float32, method
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1 + 1e-5, method
        assert _hooks(model) == 0, f"{method} left hooks on {backbone}"
    assert [m.inplace for m in model.modules() if hasattr(m, "inplace")] == inplace
    assert all(p.requires_grad for p in model.parameters())


class _Tiny(nn.Module):
    """Two convolutions and a linear head: small enough that its maps are fixed numbers."""

    target_layer_name = "trunk.3"

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                   nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))

    @property
    def target_layer(self):
        return self.trunk[3]

    def forward(self, x):
        return self.head(self.trunk(x))


# Per method: mean of the map of chip 0 and chip 1, map[0, 6, 6] and map[1, 4, 2]; computed before the
# methods became classes, so a change of layout that changes an explanation fails here.
STORED = {
    "gradcam": (0.0647706612944603, 0.027777772396802902, 0.5892893075942993, 0.9999997615814209),
    "gradcam++": (0.5761784315109253, 0.5990248918533325, 0.6664097309112549, 0.8294194340705872),
    "eigencam": (0.24702635407447815, 0.18764548003673553, 0.3220818340778351, 0.2638262212276459),
    "guided-backprop": (0.24914029240608215, 0.2615123987197876, 0.06339813768863678, 0.056559979915618896),
    "guided-gradcam": (0.03727654367685318, 0.015207985416054726, 0.08451514691114426, 0.14343030750751495),
    "shap": (-2.5573544917278923e-05, -1.6104215319501236e-05, 6.991074042161927e-05, 7.602793630212545e-05),
}


@pytest.mark.parametrize("method", list(STORED))
def test_maps_equal_stored_values(method):
    torch.manual_seed(0)
    model = _Tiny().eval()
    x, background = torch.rand(2, 3, 16, 16), torch.rand(4, 3, 16, 16)
    maps = explain_batch(model, x, method, background=background, shap_nsamples=8, seed=0)
    assert model.trunk[0].weight.is_contiguous(memory_format=torch.channels_last)  # the gradients' layout
    got = [*maps.mean(axis=(1, 2)).tolist(), float(maps[0, 6, 6]), float(maps[1, 4, 2])]
    scale = 1e-3 if method == "shap" else 1.0  # SHAP values are ~1e-4: compare them relative to their size
    np.testing.assert_allclose(got, STORED[method], rtol=0, atol=1e-6 * scale)
    assert _hooks(model) == 0


def test_registry_holds_one_class_per_method():
    assert list(METHODS) == ["gradcam", "gradcam++", "eigencam", "guided-backprop", "guided-gradcam", "shap"]
    assert all(issubclass(cls, Explainer) and cls.name == name for name, cls in METHODS.items())
    with pytest.raises(UserError, match="background"):
        explainer(_Tiny(), "shap")


def test_hooks_released_on_error(lite0):
    with pytest.raises(RuntimeError), explainer(lite0, "gradcam") as explain:
        explain(torch.rand(1, 2, 32, 32))  # wrong channel count
    assert _hooks(lite0) == 0


def test_fast_gradcam_equals_library_gradcam():
    """Cutting the graph at the target layer must not change Grad-CAM."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(1)
    model = build_model("resnet18", pretrained=False).eval()
    x = torch.rand(3, 3, 64, 64)
    with GradCAM(model=model, target_layers=[model.target_layer]) as cam:
        ref = cam(x, targets=[ClassifierOutputTarget(1)] * 3)
    np.testing.assert_allclose(explain_batch(model, x, "gradcam", layer="target"), ref, atol=1e-5)


def test_default_layer_adapts_to_tiny_inputs_only(lite0):
    """At 64 px the last block is 2 x 2: the deepest 4 x 4 block is used; at 128 px the target layer."""
    assert resolve_layer(lite0, None, 128)[0] == lite0.target_layer_name
    name, _ = resolve_layer(lite0, None, 64)
    assert name == "trunk.blocks.4"
    assert resolve_layer(lite0, "target", 64)[0] == lite0.target_layer_name
    resnet = build_model("resnet18", pretrained=False).eval()
    assert resolve_layer(resnet, None, 64)[0].startswith("trunk.layer3")


def test_layer_and_method_errors(lite0):
    assert resolve_layer(lite0)[0] == lite0.target_layer_name
    name, module = resolve_layer(lite0, "trunk.conv_head")
    assert module is lite0.trunk.conv_head
    with pytest.raises(UserError, match="trunk.conv_stem"):
        resolve_layer(lite0, "layer4.1")
    with pytest.raises(UserError, match="gradcam\\+\\+.*guided-backprop.*shap"):
        explain_batch(lite0, torch.rand(1, 3, 32, 32), "lime")
    maps = explain_batch(lite0, torch.rand(1, 3, 64, 64), "gradcam", layer="trunk.blocks.5")
    assert maps.shape == (1, 64, 64)


@pytest.mark.slow
def test_deep_explainer_additivity_and_gradient_explainer_gap():
    from schoolvision.explain.shap_values import additivity, deep_shap, deeplift_copy, gradient_shap

    torch.manual_seed(0)
    model = build_model("resnet18", pretrained=False).eval()
    x, bg = torch.rand(2, 3, 32, 32), torch.rand(4, 3, 32, 32)
    with torch.no_grad():  # the DeepLIFT-ready copy is the same function
        torch.testing.assert_close(deeplift_copy(model)(x), model(x), atol=1e-5, rtol=1e-5)
    deep = deep_shap(model, x, bg)  # shap raises if additivity fails
    assert deep.shape == (2, 3, 32, 32)
    info = additivity(model, x, bg, deep)
    np.testing.assert_allclose(info["shap_sum"], info["output_minus_background"], rtol=1e-2, atol=1e-3)
    assert _hooks(model) == 0 and any(m.inplace for m in model.modules() if hasattr(m, "inplace"))
    with pytest.raises(UserError, match="ResNet"):
        deeplift_copy(build_model("efficientnet_lite0", pretrained=False))
    grad = gradient_shap(model, x, bg, nsamples=800, seed=0)
    assert grad.shape == (2, 3, 32, 32)
    gap = additivity(model, x, bg, grad)["relative_gap"]
    assert max(gap) < 0.3  # expected gradients: approximate (about 0.4 at 200 samples here), converging with nsamples
    few = gradient_shap(model, x, bg, nsamples=16, seed=3)
    np.testing.assert_array_equal(few, gradient_shap(model, x, bg, nsamples=16, seed=3))  # seeded
    layer_maps = gradient_shap(model, x, bg, nsamples=8, layer="trunk.layer4")
    assert layer_maps.shape == (2, 32, 32)


# --- a chips folder without georeference and a fake run --------------------------------------


@pytest.fixture()
def png_chips(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("school", "not_school"):
        (tmp_path / "chips" / label).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "chips" / label / f"{label}_{i}.png")
    save_untrained_run(tmp_path / "run", image_size=64, chip_size=48, gsd=None)
    return tmp_path


def test_chips_without_crs_give_png_heatmaps_and_a_warning(png_chips):
    out = png_chips / "out"
    config = ExplainConfig(run=png_chips / "run", chips_dir=png_chips / "chips", out_dir=out, split=None, device="cpu")
    with pytest.warns(UserWarning, match="no CRS") as caught:
        summary = explain_chips(config)
    ours = [w for w in caught if issubclass(w.category, UserWarning)]  # no CRS, no schools.geojson
    assert len(ours) == 2 and {w.filename for w in ours} == {__file__}  # they point at the caller, not the runner
    assert summary.n_chips == 6
    pngs = sorted((out / "gradcam" / "heatmaps").glob("*.png"))
    assert len(pngs) == 6 and Image.open(pngs[0]).size == (48, 48)
    assert len(list((out / "gradcam" / "overlays").glob("*.png"))) == 6
    assert "gradcam" in ExplainFolder(out).read_faithfulness()["table"]
    assert not list(out.rglob("gallery_*.png"))  # figures are the caller's
    paths = write_galleries(summary)
    assert paths and sorted(p.name for p in (out / "gradcam").glob("gallery_*.png")) == sorted(p.name for p in paths)
    assert sum(len(items) for items in summary.galleries["gradcam"].values()) == 6 - summary.outcomes["TN"]
    with pytest.raises(UserError, match="not empty"):
        explain_chips(config)


def test_runtimes_give_the_same_probabilities_and_road_drops(png_chips):
    """Forward passes on ONNX Runtime: P(school) and ROAD drops equal torch's within 1e-4, the maps are torch's."""
    pytest.importorskip("onnxruntime")
    tables, saved = {}, {}
    for name in ("torch", "onnx"):
        out = png_chips / f"out_{name}"
        config = ExplainConfig(run=png_chips / "run", chips_dir=png_chips / "chips", out_dir=out, split=None,
                               device="cpu", runtime=name, methods=["gradcam", "guided-backprop"])
        torch.manual_seed(0)  # ROAD's imputer adds noise from torch's global generator
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # no CRS, no schools.geojson
            explain_chips(config)
        tables[name] = pd.read_csv(out / "explanations.csv")
        saved[name] = ExplainFolder(out).read_faithfulness()
    a, b = tables["torch"], tables["onnx"]
    assert a[["chip_id", "method", "pred"]].equals(b[["chip_id", "method", "pred"]])
    assert a["prob"].std() > 0 and a["road_drop"].notna().sum() == 3 * 4  # 3 school chips, 2 methods + 2 baselines
    np.testing.assert_allclose(b["prob"], a["prob"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(b["road_drop"], a["road_drop"], atol=1e-4, rtol=0)
    assert saved["torch"]["runtime"].startswith("torch on cpu") and saved["onnx"]["runtime"].startswith("onnx on cpu")
    for method in ("gradcam", "guided-backprop"):  # gradients stay in torch: the same heatmaps
        for png in sorted((png_chips / "out_torch" / method / "heatmaps").glob("*.png")):
            other = png_chips / "out_onnx" / method / "heatmaps" / png.name
            np.testing.assert_array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(other)))


def test_faithfulness_figure_marks_the_baselines():
    row = {"pointing_game": 0.5, "energy_share": 0.4, "road_drop": None}
    fig = plot_faithfulness({"gradcam": row, "random": row, "centre-gaussian": row})
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["pointing game", "energy share", "road drop"]
    hatched = [[bar.get_hatch() for bar in container] for container in axes[0].containers]
    assert hatched == [[None], ["//"], ["//"]]
    assert not any(bar.get_height() > 0 for bar in axes[2].patches)  # no value, no bar
    plt.close(fig)


def test_cli_bad_input(png_chips, capsys):
    base = ["explain", "--run", str(png_chips / "run"), "--chips", str(png_chips / "chips"),
            "--out", str(png_chips / "o")]
    assert main(base + ["--method", "lime"]) == 2
    assert "available: gradcam" in capsys.readouterr().err
    assert main(base + ["--method", "gradcam", "--limit", "0"]) == 2
    assert "--limit" in capsys.readouterr().err
    assert main(base + ["--method", "gradcam", "--layer", "nope"]) == 2
    assert "trunk.conv_stem" in capsys.readouterr().err
    assert not (png_chips / "o").exists()


# --- the real chips and run of the shared fixtures ---------------------------------------------


@pytest.mark.slow
def test_explain_real_run_writes_aligned_geotiffs(chips_dir, trained_run, tmp_path):
    out = tmp_path / "explain"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # georeferenced chips: no CRS warning
        summary = explain_chips(ExplainConfig(run=trained_run, chips_dir=chips_dir, out_dir=out, limit=12, device="cpu",
                                              methods=["gradcam", "guided-gradcam"], batch_size=8))
    assert summary.n_chips == 12
    tifs = sorted((out / "gradcam" / "heatmaps").glob("*.tif"))
    assert len(tifs) == 12
    from schoolvision.data.dataset import ChipDataset

    ds = ChipDataset(chips_dir, split="test", require_classes=False)
    paths = dict(zip(ds.frame["chip_id"].astype(str), ds.frame["path"]))
    for tif in tifs[:4]:
        with rasterio.open(tif) as h, rasterio.open(chips_dir / paths[tif.stem]) as c:
            assert h.crs == c.crs and h.transform == c.transform
            assert (h.width, h.height) == (c.width, c.height)
            assert h.count == 1 and h.dtypes[0] == "float32" and h.nodata is not None
    data = ExplainFolder(out).read_faithfulness()
    assert set(data["table"]) == {"gradcam", "guided-gradcam", "random", "centre-gaussian"}
    assert data["layer"] == "trunk.blocks.4" and data["n_chips"] == 12  # the fixture run trains at 64 px
    args = ["explain", "--run", str(trained_run), "--chips", str(chips_dir), "--method", "gradcam",
            "--out", str(tmp_path / "o")]
    assert main(args + ["--split", "nosuch"]) == 2  # empty split: one clear line, exit 2
    assert not (tmp_path / "o").exists()
