"""Training: run folder, exact resume, selection, calibration, bad input, kill -9, DDP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from schoolvision.data.dataset import ChipDataset
from schoolvision.errors import UserError
from schoolvision.io.folders import RunFolder, read_predictions
from schoolvision.model.checkpoint import load_classifier, read_checkpoint
from schoolvision.model.inference import predict
from schoolvision.plotting import training as plots
from schoolvision.plotting.training import tensorboard_figures
from schoolvision.train import loop, tblog
from schoolvision.train.evaluation import EvalConfig, evaluate_run
from schoolvision.train.fit import fit
from schoolvision.train.metrics import METRIC_KEYS
from schoolvision.train.state import autocast_setting, class_weights, rng_state, set_rng_state, warmup_cosine

from fixtures import make_fake_chips, tiny_train_config

REPO = Path(__file__).resolve().parents[1]




@pytest.fixture(scope="module")
def fake_run(fake_chips, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    metrics = fit(tiny_train_config(fake_chips, out), figures=tensorboard_figures)
    return out, metrics


# --- units -------------------------------------------------------------------------------------


def test_warmup_then_cosine():
    f = warmup_cosine(4, 20)
    values = [f(s) for s in range(21)]
    assert values[0] == 0.25 and values[3] == 1.0
    assert all(a >= b for a, b in zip(values[3:], values[4:]))
    assert values[20] == pytest.approx(0.0)


def test_class_weights_balance_the_classes():
    w = class_weights(np.array([0] * 30 + [1] * 10))
    assert w[0] * 30 == pytest.approx(w[1] * 10)


def test_rng_state_roundtrip_is_weights_only_safe(tmp_path):
    import io
    import random

    state = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    set_rng_state(torch.load(buf, weights_only=True))
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


# --- a full (tiny) run -------------------------------------------------------------------------


def test_run_folder_contents(fake_run, fake_chips):
    out, metrics = fake_run
    for name in ("best.pt", "last.pt", "config.json", "metrics.json", "predictions.csv", "history.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert set(METRIC_KEYS) | {"temperature", "val", "bootstrap"} <= set(saved)
    assert saved["n_chips"] == {"not_school": 10, "school": 6}
    assert set(METRIC_KEYS) <= set(saved["val"])
    config = json.loads((out / "config.json").read_text())
    assert config["chips_dir"] == str(fake_chips.resolve())
    assert len(config["chips_index_sha256"]) == 64 and "torch" in config["versions"]
    assert config["resolved"]["image_size"] == 32
    assert config["resolved"]["channels_last"] is True  # on for CPU too: 2-3x faster steps (train_precision.py)
    # the same recipe on every CPU: float32, whatever bfloat16 support the CPU has (bf16 is --precision bf16)
    assert config["resolved"]["amp"] is False and config["resolved"]["precision"] == "fp32"
    assert metrics["training_precision"] == "fp32" and saved["training_precision"] == "fp32"
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    last = read_checkpoint(out / "last.pt")  # weights_only=True inside
    assert last["epoch"] == 2 and {"optimizer", "scheduler", "scaler", "rng"} <= set(last)
    pred = read_predictions(out / "predictions.csv")
    assert list(pred.columns) == ["chip_id", "path", "split", "scene", "label", "prob", "pred"]
    assert sorted(set(pred["split"])) == ["test", "val"]
    assert ((pred["prob"] >= saved["threshold"]).astype(int) == pred["pred"]).all()


def test_best_checkpoint_reproduces_the_test_predictions(fake_run, fake_chips):
    out, _ = fake_run
    model, meta = load_classifier(out / "best.pt")
    assert meta.image_size == 32 and meta.chip_size == 32 and meta.gsd == 1.0
    probs = predict(model, ChipDataset(fake_chips, split="test"), batch_size=8, temperature=meta.temperature)
    saved = read_predictions(out / "predictions.csv")
    assert np.array_equal(probs, saved[saved["split"] == "test"]["prob"].to_numpy())


def test_evaluate_recomputes_metrics_json(fake_run, fake_chips):
    out, _ = fake_run
    before = json.loads((out / "metrics.json").read_text())
    result = evaluate_run(EvalConfig(out, fake_chips, n_boot=50, runtime="torch"))
    assert result["predictions_match"] is True
    after = json.loads((out / "metrics.json").read_text())
    for key in ("predictions_match", "runtime", "runtime_precision"):  # what the evaluation adds: how it scored
        after.pop(key)
    assert after == before


def test_evaluate_metrics_equal_across_runtimes(fake_run, fake_chips, tmp_path, monkeypatch):
    """Two code paths, one function: at float32 (bfloat16 paths off) ONNX Runtime and channels_last give the
    metrics within float noise; with the bfloat16 path forced (what a CPU with AMX runs) the evaluation says so
    and its P(school) stay within the autocast tolerance."""
    pytest.importorskip("onnxruntime")
    from schoolvision.model.runtime import BF16_ENV

    out, _ = fake_run
    run = tmp_path / "run"
    shutil.copytree(out, run)  # evaluate rewrites metrics.json; the fixture's run stays as the other tests expect
    before = json.loads((run / "metrics.json").read_text())
    monkeypatch.setenv(BF16_ENV, "off")
    for name in ("onnx", "torch-fast"):
        result = evaluate_run(EvalConfig(run, fake_chips, n_boot=50, runtime=name))
        assert result["predictions_match"] is True and result["runtime_precision"] == "float32", name
        for key in ("auprc", "f1", "precision", "recall", "threshold"):
            assert result[key] == pytest.approx(before[key], abs=1e-6), (name, key)
        assert result["bootstrap"]["auprc"] == pytest.approx(before["bootstrap"]["auprc"], abs=1e-6)
    assert (run / "onnx").is_dir()  # exported once, beside the checkpoint
    monkeypatch.setenv(BF16_ENV, "force")
    result = evaluate_run(EvalConfig(run, fake_chips, n_boot=50, runtime="torch-fast"))
    assert result["runtime"] == "torch-fast" and result["runtime_precision"] in ("bfloat16", "float32")
    assert result["predictions_match"] is True  # within AUTOCAST_TOLERANCE (or float noise after a fall-back)


def test_tensorboard_holds_curves_figures_and_hparams(fake_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = fake_run
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "tensors": 0}).Reload()
    tags = acc.Tags()
    for tag in ("loss/train", "loss/val", "accuracy/val", "f1/val", "auprc/val", "lr"):
        assert tag in tags["scalars"], tag
    for tag in ("confusion_matrix/val", "confusion_matrix/test", "test_chips"):
        assert tag in tags["images"], tag
    assert {"pr_curve/val", "pr_curve/test"} <= set(tags["tensors"])


def test_run_figures_draw_the_run_folder_tables(fake_run):
    out, metrics = fake_run
    run = RunFolder(out)
    predictions = run.read_predictions()
    fig = plots.plot_confusion_matrix(predictions, metrics["threshold"], split="test")
    cells = [int(t.get_text()) for t in fig.axes[0].texts]
    assert cells == [v for row in metrics["confusion_matrix"] for v in row]
    fig = plots.plot_reliability(predictions, split="test")
    assert fig.axes[0].get_title() == f"test: ECE {metrics['ece']:.3f}"
    fig = plots.plot_learning_curves(run.read_history())
    assert [len(ax.lines) for ax in fig.axes] == [2, 2, 2, 1] and list(fig.axes[3].lines[0].get_xdata()) == [1, 2]
    scores = {s: (rows.label.to_numpy(), rows.prob.to_numpy()) for s, rows in predictions.groupby("split")}
    test = ChipDataset(run.read_config()["chips_dir"], split="test")
    figures = plots.tensorboard_figures(tblog.run_scores(metrics["threshold"], scores, test))
    assert sorted(figures) == ["confusion_matrix/test", "confusion_matrix/val", "test_chips"]
    plt.close("all")


class _Writer:
    """Records what TensorBoard would be sent."""

    def __init__(self):
        self.calls = []

    def add_pr_curve(self, tag, labels, probs, step):
        self.calls.append(("pr", tag, step))

    def add_figure(self, tag, figure, step):
        self.calls.append(("figure", tag, step))


def test_figures_come_from_the_callback_only(fake_chips):
    test = ChipDataset(fake_chips, split="test")
    labels = test.class_ids
    probs = np.linspace(0.0, 1.0, len(labels))[::-1].copy()  # P(school) falls along the split
    scores = tblog.run_scores(0.5, {"val": (labels, probs), "test": (labels, probs)}, test, n=4)
    assert len(scores.chips) == 4 and scores.chips[0].shape == (32, 32, 3)
    assert scores.chip_probs[0] == probs.min() and scores.chip_probs[-1] == probs.max()
    assert np.array_equal(scores.chips[-1], test.read_chip(int(np.argmax(probs))).transpose(1, 2, 0))
    plain = _Writer()
    tblog.log_scores(plain, scores, 3)
    assert plain.calls == [("pr", "pr_curve/val", 3), ("pr", "pr_curve/test", 3)]
    seen = []
    drawn = _Writer()
    tblog.log_scores(drawn, scores, 3, figures=lambda s: seen.append(s) or {"a": object(), "b": object()})
    assert seen == [scores] and drawn.calls[2:] == [("figure", "a", 3), ("figure", "b", 3)]


def test_refuses_an_existing_run_folder(fake_run, fake_chips):
    out, _ = fake_run
    with pytest.raises(UserError, match="overwrite"):
        fit(tiny_train_config(fake_chips, out))


@pytest.mark.slow
def test_resume_reaches_the_same_metrics(fake_chips, tmp_path, monkeypatch):
    whole = fit(tiny_train_config(fake_chips, tmp_path / "whole"))
    calls = {"n": 0}
    real = loop._train_epoch

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed during the second epoch
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "_train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_train_config(fake_chips, tmp_path / "split"))
    assert read_checkpoint(tmp_path / "split" / "last.pt")["epoch"] == 1
    assert not (tmp_path / "split" / "metrics.json").exists()
    monkeypatch.setattr(loop, "_train_epoch", real)
    resumed = fit(tiny_train_config(fake_chips, tmp_path / "split", resume=True))
    saved = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("split", "whole")]
    assert saved[0] == saved[1]
    assert resumed == whole


def test_resume_refuses_corrupt_or_foreign_checkpoints(fake_run, fake_chips, tmp_path):
    out, _ = fake_run
    with pytest.raises(UserError, match="backbone"):
        fit(tiny_train_config(fake_chips, out, backbone="resnet18", resume=True))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="last.pt"):
        fit(tiny_train_config(fake_chips, bad, resume=True))
    assert (bad / "last.pt").read_bytes() == b"not a checkpoint"
    assert sorted(p.name for p in bad.iterdir()) == ["last.pt"]
    with pytest.raises(UserError, match="best.pt"):
        evaluate_run(EvalConfig(bad, fake_chips))


def test_missing_class_or_split_is_a_one_line_error(tmp_path):
    chips = make_fake_chips(tmp_path / "noschool", counts=(6, 0))
    with pytest.raises(UserError, match="school") as err:
        fit(tiny_train_config(chips, tmp_path / "r1"))
    assert "\n" not in str(err.value)
    chips = make_fake_chips(tmp_path / "noval", counts=(4, 3), splits=("train", "test"))
    with pytest.raises(UserError, match="val"):
        fit(tiny_train_config(chips, tmp_path / "r2"))


def test_cli_train_reports_a_bad_chips_folder(tmp_path):
    from schoolvision.cli import main

    assert main(["train", "--chips", str(tmp_path / "nothing"), "--out", str(tmp_path / "run"), "--device", "cpu"]) == 2


def test_fit_on_the_demo_chips_fixture(trained_run):
    """Integration with the real chips and dataset of the shared fixtures."""
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(metrics)
    model, meta = load_classifier(trained_run)
    assert meta.image_size == 64 and 0.0 <= meta.threshold <= 1.0 and meta.temperature > 0


# --- processes: kill -9 and DDP ------------------------------------------------------------------


def _train_cmd(chips, out, *extra):
    return [sys.executable, "-m", "schoolvision", "train", "--chips", str(chips), "--out", str(out), "--device", "cpu",
            "--batch-size", "4", "--no-pretrained", "--num-workers", "0", *extra]


@pytest.mark.slow
def test_kill_9_then_resume(fake_chips, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(fake_chips, out, "--epochs", "6"), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "last.pt").exists():
        time.sleep(0.2)
    time.sleep(1.0)  # somewhere inside the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "last.pt").exists(), "training never wrote last.pt"
    read_checkpoint(out / "last.pt")
    load_classifier(out / "best.pt")
    done = subprocess.run(_train_cmd(fake_chips, out, "--epochs", "6", "--resume"), cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert set(METRIC_KEYS) <= set(json.loads((out / "metrics.json").read_text()))
    assert read_checkpoint(out / "last.pt")["epoch"] >= 1


@pytest.mark.slow
def test_ddp_two_processes_gloo(fake_chips, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", "29517",
           "-m", "schoolvision",
           *_train_cmd(fake_chips, out, "--epochs", "1")[3:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(metrics)
    assert metrics["n_chips"] == {"not_school": 10, "school": 6}
    assert json.loads((out / "config.json").read_text())["resolved"]["world_size"] == 2


# --- speed settings: frozen stem, kept heap ------------------------------------------------------


def test_frozen_stem_keeps_its_starting_weights(fake_chips, tmp_path):
    """Pretrained: the stem (to output stride 4) and its BatchNorm statistics stay ImageNet's, the rest learns."""
    from schoolvision.model.backbones import build_model, stem_modules

    fit(tiny_train_config(fake_chips, tmp_path / "frozen", pretrained=True, epochs=1, image_size=64, n_boot=10))
    trained, _ = load_classifier(tmp_path / "frozen")
    start = build_model("efficientnet_lite0", pretrained=True)
    for before, after in zip(stem_modules(start), stem_modules(trained), strict=True):
        for (name, a), b in zip(before.state_dict().items(), after.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
    assert not torch.equal(start.trunk.conv_head.weight, trained.trunk.conv_head.weight)
    config = json.loads((tmp_path / "frozen" / "config.json").read_text())
    assert config["resolved"]["freeze_stem"] is True


def test_bf16_training_is_opt_in_and_recorded(fake_chips, tmp_path, monkeypatch):
    """--precision bf16 autocasts the steps (forced here, as on an AMX CPU) and the run says so; auto stays fp32."""
    from schoolvision.model.runtime import BF16_ENV

    monkeypatch.setenv(BF16_ENV, "force")
    metrics = fit(tiny_train_config(fake_chips, tmp_path / "bf16", epochs=1, precision="bf16"))
    resolved = json.loads((tmp_path / "bf16" / "config.json").read_text())["resolved"]
    assert resolved["amp"] is True and resolved["amp_dtype"] == "bfloat16" and resolved["precision"] == "bf16"
    assert metrics["training_precision"] == "bf16"
    assert autocast_setting("auto", torch.device("cpu")) == (False, torch.float32)  # even with bf16 forced
    with pytest.raises(UserError, match="--precision"):
        tiny_train_config(fake_chips, tmp_path / "x", precision="int4")


def test_random_weights_train_the_stem(fake_run):
    out, _ = fake_run
    config = json.loads((out / "config.json").read_text())
    assert config["pretrained"] is False and config["resolved"]["freeze_stem"] is False


def test_kept_heap_reuses_freed_blocks():
    """glibc returns a freed 64 MB block to the system and page-faults it back; inside the block it stays."""
    import resource

    from schoolvision.model.device import kept_heap

    def faults_of_two_allocations() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(2):
            block = torch.ones(16 * 2**20)  # 64 MB, touched
            del block
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    outside = faults_of_two_allocations()
    with kept_heap() as applied:
        if not applied:
            pytest.skip("not glibc: the allocator setting does not apply")
        faults_of_two_allocations()  # the heap grows once
        inside = min(faults_of_two_allocations() for _ in range(3))  # other threads may touch the heap too
    assert outside > 0  # 2 x 16,384 pages of 4 KiB (fewer with transparent huge pages always on)
    assert inside < outside / 4, (outside, inside)
