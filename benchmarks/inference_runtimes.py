"""Inference runtimes and training precision, side by side: chips/s and how far each moves P(school).

Bare inference (chips already in memory, no data loading) of efficientnet_lite0 at 128 and 224 px,
batch 32, per runtime: torch float32 (today's path), torch channels_last, channels_last + bfloat16
autocast, ONNX Runtime. ``max_abs_dprob`` is the largest |P(school) - float32 P(school)| over the
demo chips; the model is the ImageNet backbone with a head fitted (logistic regression) to the demo
labels, so P(school) spans [0, 1] as a trained model's does. bfloat16 inference is measured even where
the CPU lacks it natively (``bf16_native`` false: emulated, on one batch only, as it is ~15x slower
than float32; the runtimes never choose it there). Training: forward + backward + AdamW steps at
224 px per layout and precision (bfloat16 only where native).

int8 (``--run RUN``, a trained run whose chips are still there): ONNX Runtime on the run's float32 graph
against its int8 graph (``--runtime onnx-int8``, :mod:`schoolvision.model.quantize`) at the run's input
size on its own test chips, interleaved, ratio in one run (target >= 1.8x on a CPU with native int8);
the test AUPRC / F1 of both, measured when the int8 graph was made (its metadata); and ONNX Runtime's
profile of the int8 graph: the kernel time per operator, split into int8 kernels, float32 kernels and
the conversions between them (QuantizeLinear / DequantizeLinear), which says what limits the ratio.

Runs are interleaved and the best of ``--repeats`` counts, so load from other processes biases no
runtime; ``load_average`` records that load. Prints one JSON object.

    .venv/bin/python benchmarks/inference_runtimes.py [--threads 2] [--batch-size 32] [--repeats 3]
    .venv/bin/python benchmarks/inference_runtimes.py --run RUN --only int8   # int8 against float32 only
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from schoolvision.io.folders import RunFolder
from schoolvision.model import runtime as rt
from schoolvision.model.backbones import build_model
from schoolvision.model.checkpoint import CheckpointMeta, save_checkpoint

SIZES = (128, 224)
RUNTIMES = ("torch_fp32", "torch_channels_last", "torch_channels_last_bf16", "onnx")


def demo_chips(root: Path, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` labelled 128 px chips (float32 in [0, 1]) from a generated demo, half schools when possible."""
    from schoolvision.data.chips import ChipConfig, make_chips
    from schoolvision.data.dataset import ChipDataset
    from schoolvision.demo import make_demo

    make_demo(root / "demo", towns=3, seed=seed, size=768, gsd=1.0)
    make_chips([root / "demo" / "scenes"], root / "demo" / "schools.geojson", root / "chips", ChipConfig())
    ds = ChipDataset(root / "chips")
    labels = np.asarray(ds.class_ids)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    take = np.concatenate([rng.permutation(pos)[: n // 2], rng.permutation(neg)[: n - min(len(pos), n // 2)]])
    images = np.stack([ds[int(i)]["image"].numpy() for i in take]).astype(np.float32)
    return images, labels[take]


def fitted_model(images: np.ndarray, labels: np.ndarray) -> torch.nn.Module:
    """ImageNet efficientnet_lite0 whose head is a logistic regression on the demo chips' embeddings."""
    from sklearn.linear_model import LogisticRegression

    model = build_model("efficientnet_lite0", pretrained=True).eval()
    with torch.inference_mode():
        emb = torch.cat([model.embed(torch.from_numpy(images[i : i + 32])) for i in range(0, len(images), 32)]).numpy()
    clf = LogisticRegression(C=0.1, max_iter=2000).fit(emb, labels)
    w, b = torch.from_numpy(clf.coef_[0]).float(), float(clf.intercept_[0])
    with torch.no_grad():  # softmax([-z/2, z/2]) = sigmoid(z)
        model.head[1].weight.copy_(torch.stack([-w / 2, w / 2]))
        model.head[1].bias.copy_(torch.tensor([-b / 2, b / 2]))
    return model


def make(name: str, model: torch.nn.Module, meta: CheckpointMeta, checkpoint: Path) -> rt.Runtime:
    model = copy.deepcopy(model)  # torch-fast converts weights to channels_last in place
    if name == "torch_fp32":
        return rt.TorchRuntime(model, meta)
    if name == "torch_channels_last":
        return rt.FastTorchRuntime(model, meta, dtype=None)
    if name == "torch_channels_last_bf16":
        fast = rt.FastTorchRuntime(model, meta, dtype=torch.bfloat16)
        fast._checked = True  # measure bf16 even where the first-batch check would refuse it
        return fast
    return rt.OnnxRuntime(model, meta, checkpoint=checkpoint)


def resize(images: np.ndarray, size: int) -> np.ndarray:
    x = torch.from_numpy(images)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.contiguous().numpy()


def chips_per_second(runtime: rt.Runtime, batch: np.ndarray, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        runtime.logits(batch)
    return steps * len(batch) / (time.perf_counter() - t0)


def inference(model, meta, checkpoint, images, size, batch_size, repeats, steps) -> dict:
    x = resize(images, size)
    runtimes = {name: make(name, model, meta, checkpoint) for name in RUNTIMES}
    emulated = {"torch_channels_last_bf16"} if not rt.bf16_native() else set()
    probs, runs = {}, {name: [] for name in RUNTIMES}
    for name, r in runtimes.items():  # P(school) on every chip; also the warm-up (and the ONNX export)
        n = batch_size if name in emulated else len(x)  # emulated bf16 is ~15x slower than fp32: one batch
        t0 = time.perf_counter()
        probs[name] = np.concatenate([r.probability(x[i : i + batch_size]) for i in range(0, n, batch_size)])
        if name in emulated:
            runs[name].append(len(probs[name]) / (time.perf_counter() - t0))
    batch = x[:batch_size]
    for _ in range(repeats):
        for name, r in runtimes.items():
            if name not in emulated:
                runs[name].append(chips_per_second(r, batch, steps))
    best = {name: max(v) for name, v in runs.items()}
    return {
        name: {
            "chips_per_s": round(best[name], 1),
            "over_fp32": round(best[name] / best["torch_fp32"], 2),
            "max_abs_dprob": float(f"{np.abs(probs[name] - probs['torch_fp32'][: len(probs[name])]).max():.2e}"),
            "chips_compared": len(probs[name]),
            "runs": [round(v, 1) for v in runs[name]],
        }
        | ({"note": "bfloat16 emulated (no native support on this CPU): one batch, never chosen by the runtimes"}
           if name in emulated else {})
        for name in RUNTIMES
    } | {"describe": {name: r.describe() for name, r in runtimes.items()}}


INT8_KERNELS = ("QLinear", "QGemm", "ConvInteger", "MatMulInteger", "DynamicQuantize")
CONVERSIONS = ("QuantizeLinear", "DequantizeLinear")


def operator_profile(path: Path, batch: np.ndarray, steps: int, threads: int) -> dict:
    """Kernel milliseconds per operator type of the graph at ``path`` (ONNX Runtime's profiler), by kind."""
    from schoolvision.model.quantize import session

    with tempfile.TemporaryDirectory() as tmp:
        sess = session(path, threads, profile=str(Path(tmp) / "profile"))
        for _ in range(steps + 1):
            sess.run(None, {sess.get_inputs()[0].name: batch})
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e["args"]["op_name"]
            per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1000.0 / (steps + 1)
    total = sum(per_op.values())

    def kind(op: str) -> str:
        return "conversion" if op in CONVERSIONS else "int8" if op.startswith(INT8_KERNELS) else "float32"

    shares = {k: round(sum(v for op, v in per_op.items() if kind(op) == k) / total, 3)
              for k in ("int8", "float32", "conversion")}
    return {
        "ms_per_batch": round(total, 1),
        "share": shares,
        "operators_ms": {op: round(v, 2) for op, v in sorted(per_op.items(), key=lambda kv: -kv[1])},
        "float32_operators": sorted(op for op in per_op if kind(op) == "float32"),
    }


def int8_against_fp32(run: Path, batch_size: int, repeats: int, steps: int, threads: int) -> dict:
    """float32 and int8 ONNX Runtime on a trained run's test chips: chips/s, accuracy, the int8 operator profile."""
    from schoolvision.data.dataset import ChipDataset
    from schoolvision.model.checkpoint import load_classifier
    from schoolvision.model.quantize import chips_of, int8_native

    model, meta = load_classifier(run)
    size = meta.image_size
    ds = ChipDataset(chips_of(RunFolder.checkpoint(run)), split="test", image_size=size)
    batch = torch.stack([ds[i]["image"] for i in range(min(batch_size, len(ds)))]).numpy()
    fp32, int8 = rt.OnnxRuntime(model, meta, checkpoint=run), rt.OnnxInt8Runtime(model, meta, checkpoint=run)
    t0 = time.perf_counter()
    int8.probability(batch[:1])  # makes the int8 graph on first use (calibration and scoring): timed once
    made_s = time.perf_counter() - t0
    fp32.probability(batch[:1])
    moved = np.abs(int8.probability(batch) - fp32.probability(batch))
    runs: dict[str, list[float]] = {"onnx": [], "onnx-int8": []}
    for _ in range(repeats):
        for name, r in (("onnx", fp32), ("onnx-int8", int8)):
            runs[name].append(chips_per_second(r, batch, steps))
    best = {k: max(v) for k, v in runs.items()}
    accuracy = int8.accuracy[size]
    return {
        "image_size": size,
        "native_int8": int8_native(),
        "describe": {"onnx": fp32.describe(), "onnx-int8": int8.describe()},
        "chips_per_s": {k: round(v, 1) for k, v in best.items()},
        "int8_over_fp32": round(best["onnx-int8"] / best["onnx"], 2),
        "target": 1.8,
        "runs": {k: [round(v, 1) for v in vs] for k, vs in runs.items()},
        "test": {"fp32": {"auprc": round(accuracy.fp32_auprc, 4), "f1": round(accuracy.fp32_f1, 4)},
                 "int8": {"auprc": round(accuracy.int8_auprc, 4), "f1": round(accuracy.int8_f1, 4)},
                 "chips": accuracy.n_chips, "max_abs_dprob": round(accuracy.max_abs_dprob, 4),
                 "mean_abs_dprob": round(accuracy.mean_abs_dprob, 4)},
        "max_abs_dprob_timed_batch": round(float(moved.max()), 4),
        "made_s": round(made_s, 1),  # 0 when RUN/onnx already held the int8 graph
        "int8_profile": operator_profile(int8.paths[size], batch, steps, threads),
        "fp32_profile_ms_per_batch": operator_profile(fp32.paths[size], batch, steps, threads)["ms_per_batch"],
    }


def training(model, images, labels, size, batch_size, steps) -> dict:
    x = torch.from_numpy(resize(images[:batch_size], size))
    y = torch.from_numpy(labels[:batch_size]).long()
    out = {}
    variants = [("fp32", False, None), ("channels_last", True, None), ("channels_last_bf16", True, torch.bfloat16)]
    if not rt.bf16_native():  # emulated bf16 training runs at ~0.1x fp32: minutes per step at 224 px
        variants = variants[:2]
    for name, channels_last, dtype in variants:
        m = copy.deepcopy(model).train()
        xb = x
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
            xb = x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        for i in range(steps + 1):
            if i == 1:
                t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False):
                loss = F.cross_entropy(m(xb), y)
            loss.backward()
            opt.step()
        out[name] = round(steps * batch_size / (time.perf_counter() - t0), 2)
    result = {"chips_per_s": out, "over_fp32": {k: round(v / out["fp32"], 2) for k, v in out.items()}}
    if "channels_last_bf16" not in out:
        result["channels_last_bf16"] = "not measured: no native bfloat16 on this CPU (emulated it is ~0.1x fp32)"
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--chips", type=int, default=128, help="demo chips for the probability comparison")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds; the best counts")
    p.add_argument("--steps", type=int, default=3, help="batches per timing round")
    p.add_argument("--train-steps", type=int, default=3, help="timed training steps per precision (after one warm-up)")
    p.add_argument("--train-size", type=int, default=224)
    p.add_argument("--run", type=Path, default=None, help="trained run for int8 against float32 (its chips)")
    p.add_argument("--only", choices=["int8"], default=None, help="measure int8 against float32 only")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t_start = time.perf_counter()
    if args.only == "int8":
        if args.run is None:
            p.error("--only int8 needs --run RUN")
        result = {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
                  "batch_size": args.batch_size, "load_average_before": [round(v, 2) for v in os.getloadavg()],
                  "int8": int8_against_fp32(args.run, args.batch_size, args.repeats, args.steps, args.threads),
                  "load_average_after": [round(v, 2) for v in os.getloadavg()],
                  "seconds": round(time.perf_counter() - t_start, 1)}
        print(json.dumps(result, indent=2))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images, labels = demo_chips(tmp, args.chips)
        model = fitted_model(images, labels)
        result = {
            "backbone": "efficientnet_lite0",
            "cpu": platform.processor() or platform.machine(),
            "bf16_native": rt.bf16_native(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "batch_size": args.batch_size,
            "demo_chips": len(images),
            "demo_schools": int(labels.sum()),
            "autocast_tolerance": rt.AUTOCAST_TOLERANCE,
            "load_average_before": [round(v, 2) for v in os.getloadavg()],
            "inference": {},
        }
        for size in SIZES:
            meta = CheckpointMeta("efficientnet_lite0", size, 128, 1.0)
            checkpoint = save_checkpoint(tmp / f"run{size}" / "best.pt", model, meta)
            result["inference"][f"{size}px"] = inference(model, meta, checkpoint, images, size, args.batch_size,
                                                        args.repeats, args.steps)
        if args.run is not None:
            result["int8"] = int8_against_fp32(args.run, args.batch_size, args.repeats, args.steps, args.threads)
        result["training"] = {f"{args.train_size}px": training(model, images, labels, args.train_size, args.batch_size,
                                                               args.train_steps)}
    result["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
