"""Inference runtimes and training precision, side by side: chips/s and how far each moves P(school).

Bare inference (chips already in memory, no data loading) of efficientnet_lite0 at 128 and 224 px,
batch 32, per runtime: torch float32 (today's path), torch channels_last, channels_last + bfloat16
autocast, ONNX Runtime. ``max_abs_dprob`` is the largest |P(school) - float32 P(school)| over the
demo chips; the model is the ImageNet backbone with a head fitted (logistic regression) to the demo
labels, so P(school) spans [0, 1] as a trained model's does. bfloat16 inference is measured even where
the CPU lacks it natively (``bf16_native`` false: emulated, on one batch only, as it is ~15x slower
than float32; the runtimes never choose it there). Training: forward + backward + AdamW steps at
224 px per layout and precision (bfloat16 only where native).

Runs are interleaved and the best of ``--repeats`` counts, so load from other processes biases no
runtime; ``load_average`` records that load. Prints one JSON object.

    .venv/bin/python benchmarks/inference_runtimes.py [--threads 2] [--batch-size 32] [--repeats 3]
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

from schoolvision.model import runtime as rt
from schoolvision.model.backbones import build_model
from schoolvision.model.checkpoint import CheckpointMeta, save_checkpoint

SIZES = (128, 224)
RUNTIMES = ("torch_fp32", "torch_channels_last", "torch_channels_last_bf16", "onnx")


def demo_chips(root: Path, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` labelled 128 px chips (float32 in [0, 1]) from a generated demo, half schools when possible."""
    from schoolvision.data.chips import ChipConfig, make_chips
    from schoolvision.data.dataset import ChipDataset
    from schoolvision.data.synthetic import make_demo

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
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t_start = time.perf_counter()
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
        result["training"] = {f"{args.train_size}px": training(model, images, labels, args.train_size, args.batch_size,
                                                               args.train_steps)}
    result["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
