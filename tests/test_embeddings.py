"""Chip embeddings: shapes, agreement with the model, no autograd graph, subsets and the on-disk cache."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from schoolvision.cluster.embeddings import FeatureConfig, extract_features, load_features, subset_mask
from schoolvision.errors import UserError
from schoolvision.io.folders import RunFolder
from schoolvision.model.backbones import build_model
from schoolvision.model.checkpoint import CheckpointMeta

from fixtures import save_untrained_run


class _Images(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int = 32, seed: int = 0):
        self.x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": 0, "index": i}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("efficientnet_lite0", pretrained=False).eval()


def test_extract_matches_embed_and_head(model):
    ds = _Images(7)
    vectors, prob, index, thumbs = extract_features(model, ds, batch_size=3, temperature=2.0, progress=False)
    assert vectors.shape == (7, model.feature_dim) and vectors.dtype == np.float32
    assert index.tolist() == list(range(7))
    assert thumbs.shape == (7, 48, 48, 3) and thumbs.dtype == np.uint8
    with torch.no_grad():
        emb = model.embed(ds.x)
        want = torch.softmax(model(ds.x) / 2.0, dim=1)[:, 1].numpy()
    np.testing.assert_allclose(vectors, emb.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(prob, want, rtol=1e-5, atol=1e-6)


def test_extract_builds_no_autograd_graph(model):
    """Extraction runs without autograd: a graph per batch would hold every activation in memory."""
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.weight.requires_grad  # so the forward pass would record a graph if it could
    recorded = []
    handle = first_conv.register_forward_hook(lambda module, inputs, output: recorded.append(output.requires_grad))
    try:
        extract_features(model, _Images(5), batch_size=2, progress=False)
    finally:
        handle.remove()
    assert recorded == [False, False, False]  # one call per batch of 2, 2, 1 chips, none recording a graph


def test_empty_dataset_is_a_user_error(model):
    with pytest.raises(UserError, match="no chips"):
        extract_features(model, _Images(0), progress=False)


def test_subset_masks():
    frame = pd.DataFrame(
        {"label": ["school", "school", "not_school", "not_school"],
         "prediction": ["school", "not_school", "school", "not_school"]}
    )
    assert subset_mask(frame, "all").tolist() == [True] * 4
    assert subset_mask(frame, "true-school").tolist() == [True, True, False, False]
    assert subset_mask(frame, "predicted-school").tolist() == [True, False, True, False]
    assert subset_mask(frame, "false-positive").tolist() == [False, False, True, False]
    with pytest.raises(UserError, match="unknown subset"):
        subset_mask(frame, "schools")


def test_load_features_caches_and_filters(small_chips, small_run, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cfg = FeatureConfig(small_run, small_chips, split="test", subset="all", batch_size=16, device="cpu",
                        cache_dir=cache)
    feats = load_features(cfg, progress=False)
    rows = pd.read_csv(small_chips / "chips.csv")
    assert len(feats.frame) == (rows["split"] == "test").sum() == len(feats.vectors)
    assert set(feats.frame["prediction"]) <= {"school", "not_school"}
    assert ((feats.frame["prob"] >= 0) & (feats.frame["prob"] <= 1)).all()
    assert len(list(cache.glob("features-*.npy"))) == 2  # vectors + thumbnails

    def boom(*a, **k):
        raise AssertionError("the model ran although the features were cached")

    monkeypatch.setattr("schoolvision.cluster.embeddings.extract_features", boom)
    schools_cfg = FeatureConfig(small_run, small_chips, split="test", subset="true-school", cache_dir=cache)
    schools = load_features(schools_cfg, progress=False)
    assert (schools.frame["label"] == "school").all()
    assert len(schools.frame) == (feats.frame["label"] == "school").sum()
    np.testing.assert_array_equal(schools.vectors, feats.vectors[(feats.frame["label"] == "school").to_numpy()])


def test_true_schools_alone_skip_the_other_chips(small_chips, small_run, tmp_path):
    cfg = FeatureConfig(small_run, small_chips, split="val", subset="true-school", device="cpu", cache_dir=tmp_path)
    feats = load_features(cfg, progress=False)
    rows = pd.read_csv(small_chips / "chips.csv")
    assert len(feats.frame) == ((rows["split"] == "val") & (rows["label"] == "school")).sum() > 0
    assert feats.key.endswith("-val-school")
    everything = load_features(dataclasses.replace(cfg, subset="all"), progress=False)
    assert len(everything.frame) == (rows["split"] == "val").sum()
    schools = (everything.frame["label"] == "school").to_numpy()
    np.testing.assert_allclose(everything.vectors[schools], feats.vectors, rtol=1e-4, atol=1e-5)


def test_cache_key_follows_checkpoint(small_chips, small_run, tmp_path):
    other = tmp_path / "other"
    save_untrained_run(other, seed=1, chip_size=64)
    cfg = FeatureConfig(small_run, small_chips, split="val", device="cpu", cache_dir=tmp_path / "c")
    a = load_features(cfg, progress=False)
    b = load_features(dataclasses.replace(cfg, run=other), progress=False)
    assert a.key != b.key and a.key.endswith("-val")
    assert not np.allclose(a.vectors, b.vectors)


def test_missing_inputs_are_user_errors(small_chips, small_run, tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        load_features(FeatureConfig(tmp_path / "nope", small_chips))
    with pytest.raises(UserError, match="chips.csv not found"):
        load_features(FeatureConfig(small_run, tmp_path))
    with pytest.raises(UserError, match="unknown split"):
        load_features(FeatureConfig(small_run, small_chips, split="holdout"))


def test_runtimes_give_the_same_features(model):
    """Runtimes agree with eager float32 torch within their precision's tolerance (float noise for float32 ones).

    ``torch-fast`` autocasts to bfloat16 where the CPU computes it natively (or SCHOOLVISION_BF16=force): the
    tolerance is the one of the precision the runtime reports it used, so the test holds on every CPU.
    """
    import copy

    from schoolvision.model.runtime import PRECISION_TOLERANCE, make_runtime

    pytest.importorskip("onnxruntime")
    ds, meta = _Images(7), CheckpointMeta("efficientnet_lite0", 32, 32, 1.0, temperature=2.0)
    ref = extract_features(model, ds, batch_size=3, temperature=2.0, progress=False)
    for name in ("torch", "torch-fast", "onnx"):
        m = copy.deepcopy(model)  # torch-fast converts the weights to channels_last in place
        runtime = make_runtime(name, m, meta, "cpu")
        got = extract_features(m, ds, batch_size=3, temperature=2.0, progress=False, runtime=runtime)
        tol = PRECISION_TOLERANCE[runtime.precision]
        scale = float(np.abs(ref[0]).max())
        np.testing.assert_allclose(got[0], ref[0], rtol=max(tol, 1e-4), atol=tol * scale, err_msg=name)
        np.testing.assert_allclose(got[1], ref[1], rtol=0, atol=tol, err_msg=name)
        np.testing.assert_array_equal(got[2], ref[2])
        np.testing.assert_array_equal(got[3], ref[3])  # thumbnails come from the input, not the runtime


def test_cache_key_names_reduced_precision_only(small_chips, small_run, tmp_path, monkeypatch):
    """torch and onnx share the float32 cache; bfloat16 autocast writes its own and prefers a float32 one."""
    from schoolvision.model import runtime as rt

    pytest.importorskip("onnxruntime")
    cfg = FeatureConfig(small_run, small_chips, split="val", device="cpu", cache_dir=tmp_path / "a", runtime="torch")
    fp32 = load_features(cfg, progress=False)
    assert fp32.key.endswith("-val")
    real = extract_features
    calls = []
    monkeypatch.setattr("schoolvision.cluster.embeddings.extract_features",
                        lambda *a, **k: calls.append(k["runtime"].name) or real(*a, **k))
    assert load_features(dataclasses.replace(cfg, runtime="onnx"), progress=False).key == fp32.key and calls == []

    monkeypatch.setattr(rt, "bf16_native", lambda: True)  # as on a CPU with AMX: torch-fast autocasts to bfloat16
    monkeypatch.setattr(rt, "AUTOCAST_TOLERANCE", 1.0)
    fast = dataclasses.replace(cfg, runtime="torch-fast", batch_size=8)  # batches after the first: bfloat16
    assert load_features(fast, progress=False).key == fp32.key and calls == []  # the float32 cache serves it
    bf16 = load_features(dataclasses.replace(fast, cache_dir=tmp_path / "b"), progress=False)
    assert calls == ["torch-fast"] and bf16.key == fp32.key + "-bfloat16"
    assert np.abs(bf16.vectors - fp32.vectors).max() > 1e-4  # beyond float noise: hence its own key
    assert np.linalg.norm(bf16.vectors - fp32.vectors) < 0.2 * np.linalg.norm(fp32.vectors)  # same features, coarser
    again = load_features(dataclasses.replace(cfg, cache_dir=tmp_path / "b"), progress=False)  # float32 asked
    assert calls == ["torch-fast", "torch"] and again.key == fp32.key  # a bfloat16 cache never serves float32


def test_int8_features_are_cached_apart(small_chips, small_run, tmp_path):
    """``onnx-int8`` features key their own cache; a float32 cache serves an int8 request, never the reverse."""
    pytest.importorskip("onnxruntime")
    run = tmp_path / "run"  # the int8 graph calibrates on the run's chips: a run folder that names them
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("onnx", "features"))
    RunFolder(run).write_config({"chips_dir": str(small_chips)})
    cfg = FeatureConfig(run, small_chips, split="val", device="cpu", cache_dir=tmp_path / "a", runtime="onnx-int8")
    int8 = load_features(cfg, progress=False)
    assert int8.key.endswith("-val-qint8")
    fp32 = load_features(dataclasses.replace(cfg, runtime="onnx"), progress=False)  # not served by the int8 cache
    assert fp32.key.endswith("-val") and np.abs(int8.vectors - fp32.vectors).max() > 1e-4
    # the same features, coarser: 0.21 relative error measured (an ImageNet trunk at 32 px, far from its data)
    assert np.linalg.norm(int8.vectors - fp32.vectors) < 0.3 * np.linalg.norm(fp32.vectors)
    other = dataclasses.replace(cfg, cache_dir=tmp_path / "b")
    load_features(dataclasses.replace(other, runtime="onnx"), progress=False)
    assert load_features(other, progress=False).key == fp32.key  # float32 serves every runtime
