"""Forward passes of ``explain`` and ``cluster`` per runtime, the gradient methods per layout, and ``torch.compile``.

At one input size (224 px, the quick profile's), on random chips already in memory:

* ``explain_forward``: :meth:`Runtime.logits` at ``explain``'s batch size (16): P(school) and ROAD's
  perturbed chips go through it;
* ``cluster_features``: :meth:`Runtime.features` (embedding and logits from one pass) at the feature
  extraction's batch size (64);
* ``gradients``: Grad-CAM and guided backprop (always torch) with NCHW weights and inputs, as before,
  and channels_last, as :class:`~schoolvision.explain.methods.Explainer` now runs them;
* ``torch_compile``: ``torch.compile`` (inductor) of the eager model at batch 32, its compile time
  and chips/s beside eager float32 NCHW and channels_last.

Every variant is timed in interleaved rounds (median and best reported), so load from other processes
hits all alike; ``load_average`` records it. ``max_abs_diff`` compares outputs with torch float32 NCHW.
Prints one JSON object.

    .venv/bin/python benchmarks/forward_runtimes.py [--image-size 224] [--rounds 3] [--no-compile] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from schoolvision.explain.methods import explainer
from schoolvision.model import runtime as rt
from schoolvision.model.backbones import build_model
from schoolvision.model.checkpoint import CheckpointMeta, save_checkpoint

RUNTIMES = ("torch", "torch-fast", "onnx")


def timed(fn: Callable[[], object], n_chips: int, reps: int = 1) -> float:
    """chips/s of ``reps`` calls of ``fn``."""
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return reps * n_chips / (time.perf_counter() - t0)


def rounds(cases: dict[str, Callable[[], float]], n: int, label: str) -> dict[str, dict]:
    """Run every case once per round, interleaved; median and best chips/s per case."""
    runs: dict[str, list[float]] = {k: [] for k in cases}
    for i in range(n):
        for name, case in cases.items():
            runs[name].append(case())
        print(f"{label} round {i + 1}/{n}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in runs.items()),
              file=sys.stderr, flush=True)
    return {k: {"chips_per_s_median": round(statistics.median(v), 2), "chips_per_s_best": round(max(v), 2),
                "runs": [round(r, 2) for r in v]} for k, v in runs.items()}


def runtime_cases(model, meta, ckpt, x16, x64) -> tuple[dict, dict, dict]:
    runtimes = {name: rt.make_runtime(name, copy.deepcopy(model), meta, "cpu", checkpoint=ckpt) for name in RUNTIMES}
    ref_logits = runtimes["torch"].logits(x16)
    ref_emb, _ = runtimes["torch"].features(x64)
    diffs = {}
    for name, r in runtimes.items():  # warm-up (ONNX export, oneDNN primitives) and agreement
        emb, _ = r.features(x64)
        diffs[name] = {"logits": float(f"{np.abs(r.logits(x16) - ref_logits).max():.2e}"),
                       "embedding": float(f"{np.abs(emb - ref_emb).max():.2e}")}
    explain = {name: (lambda r=r: timed(lambda: r.logits(x16), len(x16), 2)) for name, r in runtimes.items()}
    cluster = {name: (lambda r=r: timed(lambda: r.features(x64), len(x64))) for name, r in runtimes.items()}
    return explain, cluster, {"max_abs_diff": diffs, "describe": {n: r.describe() for n, r in runtimes.items()}}


def gradient_cases(model, x8) -> dict:
    cases = {}
    for method in ("gradcam", "guided-backprop"):
        for layout in ("nchw", "channels_last"):
            m = copy.deepcopy(model)
            ex = explainer(m, method, image_size=x8.shape[-1])  # converts m to channels_last
            if layout == "nchw":  # undo it: the layout explain ran in before
                m.to(memory_format=torch.contiguous_format)

            def case(ex=ex, layout=layout):
                with ex as explain:
                    if layout == "nchw":
                        return timed(lambda: explain.explain(x8.contiguous()), len(x8))
                    return timed(lambda: explain(x8), len(x8))

            cases[f"{method}_{layout}"] = case
    return cases


def compile_cases(model, x32, onnx: rt.Runtime) -> tuple[dict, dict]:
    eager = copy.deepcopy(model).eval()
    cl = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    xcl = x32.contiguous(memory_format=torch.channels_last)
    info: dict = {}
    with torch.inference_mode():
        ref = eager(x32)
        t0 = time.perf_counter()
        try:
            compiled = torch.compile(copy.deepcopy(model).eval())
            out = compiled(x32)
            info = {"compile_seconds": round(time.perf_counter() - t0, 1),
                    "max_abs_diff": float(f"{(out - ref).abs().max():.2e}")}
        except Exception as exc:  # no compiler, unsupported op: report, do not fail the benchmark
            return {}, {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}

    def run(fn, x):
        def case():
            with torch.inference_mode():
                return timed(lambda: fn(x), len(x))
        return case

    return {"eager_fp32_nchw": run(eager, x32), "eager_fp32_channels_last": run(cl, xcl),
            "compiled_fp32": run(compiled, x32), "onnx": run(onnx.logits, x32)}, info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.manual_seed(0)
    model = build_model(args.backbone, pretrained=True).eval()
    with torch.no_grad():
        model.head[1].weight.normal_(0, 0.03)  # P(school) away from 0.5, so differences show
    s = args.image_size
    x64 = torch.rand(64, 3, s, s)
    x16, x8, x32 = x64[:16].clone(), x64[:8].clone(), x64[:32].clone()
    load_before = os.getloadavg()
    result: dict = {"benchmark": "forward_runtimes", "backbone": args.backbone, "image_size": s,
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "bf16_native": rt.bf16_native()}
    with tempfile.TemporaryDirectory() as tmp:
        meta = CheckpointMeta(args.backbone, s, s, 1.0)
        ckpt = Path(tmp) / "run" / "best.pt"
        save_checkpoint(ckpt, model, meta)
        explain, cluster, info = runtime_cases(model, meta, ckpt, x16, x64)
        result["explain_forward_batch16"] = rounds(explain, args.rounds, "explain")
        result["cluster_features_batch64"] = rounds(cluster, args.rounds, "cluster")
        result |= info
        grads = gradient_cases(model, x8)
        for case in grads.values():  # warm-up
            case()
        result["gradients_batch8"] = rounds(grads, args.rounds, "gradients")
        if not args.no_compile:
            onnx = rt.make_runtime("onnx", copy.deepcopy(model), meta, "cpu", checkpoint=ckpt)
            onnx.logits(x32)  # session built before timing
            cases, info = compile_cases(model, x32, onnx)
            result["torch_compile_batch32"] = info | (rounds(cases, args.rounds, "compile") if cases else {})
    result["load_average"] = {"before": [round(v, 2) for v in load_before],
                              "after": [round(v, 2) for v in os.getloadavg()]}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
