"""Training steps per memory layout, precision, frozen stem and heap setting, side by side.

Bare training steps (forward + weighted cross-entropy + backward + AdamW, chips already in memory, no
data loading) of one backbone at one input size, batch 32, for each variant: float32 contiguous (NCHW),
float32 channels_last (NHWC), channels_last with the stem frozen (``TrainConfig.freeze_stem``: no
gradients through the layers up to output stride 4), the same inside ``kept_heap`` (freed activations
stay in the heap instead of going back to the system: what ``fit`` does on CPU, so
``cpu_default`` is what ``TrainConfig`` picks here), and channels_last + bfloat16 autocast where the
CPU computes bfloat16 natively (``bf16_native``; emulated bfloat16 runs at ~0.1x float32 and is never
chosen, so it is skipped and the reason recorded). Every variant keeps its own model and optimiser; rounds of
``--steps`` steps are interleaved variant by variant, so load from other processes hits every variant
alike, and the median and the best round are reported (``load_average`` records that load).

``max_abs_dloss`` compares the first step's loss of each variant with float32 NCHW from the same
weights and batch: layouts compute the same function, so it is float noise; a frozen stem's BatchNorm
normalises with its ImageNet statistics instead of the batch's, so there it differs by design.

    .venv/bin/python benchmarks/train_precision.py [--image-size 224] [--rounds 6] [--steps 4] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from schoolvision.model.backbones import build_model, stem_modules
from schoolvision.model.device import kept_heap
from schoolvision.model.runtime import bf16_native


def variants(native_bf16: bool) -> list[tuple[str, bool, torch.dtype | None, bool, bool]]:
    """(name, channels_last, autocast dtype, frozen stem, kept heap) of the variants measured on this CPU."""
    out = [("fp32_nchw", False, None, False, False), ("fp32_channels_last", True, None, False, False),
           ("fp32_channels_last_frozen_stem", True, None, True, False),
           ("cpu_default", True, torch.bfloat16 if native_bf16 else None, True, True)]
    if native_bf16:
        out.append(("bf16_channels_last", True, torch.bfloat16, False, False))
    return out


class Trainer:
    """One variant's model, optimiser and batch; :meth:`steps` times ``n`` training steps."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, channels_last: bool,
                 dtype: torch.dtype | None, frozen_stem: bool = False, heap: bool = False):
        self.model = copy.deepcopy(model).train()
        self.stem = stem_modules(self.model) if frozen_stem else []
        for layer in self.stem:
            layer.requires_grad_(False)
        self.heap = heap
        self.x = x
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = x.contiguous(memory_format=torch.channels_last)
        self.y, self.dtype = y, dtype
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)
        self.weight = torch.tensor([0.6, 3.0])

    def step(self) -> float:
        for layer in self.stem:
            layer.eval()
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None):
            logits = self.model(self.x)
        loss = F.cross_entropy(logits.float(), self.y, weight=self.weight)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def steps(self, n: int) -> float:
        """chips/s over ``n`` steps."""
        with kept_heap() if self.heap else contextlib.nullcontext():
            self.step()  # the heap grows (or is given back) outside the timing
            t0 = time.perf_counter()
            for _ in range(n):
                self.step()
            return n * len(self.y) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=4, help="training steps per variant and round")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args()

    torch.manual_seed(0)
    model = build_model(args.backbone, pretrained=True)
    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size)
    y = (torch.arange(args.batch_size) % 5 == 0).long()
    native = bf16_native()
    trainers = {name: Trainer(model, x, y, *rest) for name, *rest in variants(native)}
    first_loss = {}
    for name, t in trainers.items():  # the first step is also the warm-up (oneDNN primitives)
        torch.manual_seed(0)  # the same dropout masks: the losses then differ by the layout only
        first_loss[name] = t.step()
    for t in trainers.values():
        t.step()
    runs: dict[str, list[float]] = {name: [] for name in trainers}
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    for i in range(args.rounds):
        for name, t in trainers.items():
            runs[name].append(t.steps(args.steps))
        print(f"round {i + 1}/{args.rounds}: " + ", ".join(f"{n} {v[-1]:.2f}" for n, v in runs.items()),
              file=sys.stderr, flush=True)
    ref = statistics.median(runs["fp32_nchw"])
    result = {
        "benchmark": "train_precision", "backbone": args.backbone, "image_size": args.image_size,
        "batch_size": args.batch_size, "rounds": args.rounds, "steps_per_round": args.steps,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or
        platform.machine(), "bf16_native": native,
        "variants": {
            name: {
                "chips_per_s_median": round(statistics.median(v), 2),
                "chips_per_s_best": round(max(v), 2),
                "over_fp32_nchw_median": round(statistics.median(v) / ref, 3),
                "max_abs_dloss_first_step": float(f"{abs(first_loss[name] - first_loss['fp32_nchw']):.2e}"),
                "runs": [round(r, 2) for r in v],
            }
            for name, v in runs.items()
        },
        "skipped": {} if native else {
            "bf16_channels_last": "no native bfloat16 on this CPU (oneDNN reports none): emulated bf16 runs at "
                                  "~0.1x float32 and TrainConfig(amp=None) never picks it here"},
        "seconds": round(time.perf_counter() - t_start, 1),
        "load_average": {"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in os.getloadavg()]},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
