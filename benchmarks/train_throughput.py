"""Training throughput: ``fit`` on chips from disk vs a bare forward+backward loop on in-memory tensors.

Same model, batch size and image size in both. ``fit`` chips/s is measured over its training
phases (data loading, augmentation, optimiser, scheduler, progress bar and logging included; the
per-epoch validation is reported separately in ``fit_end_to_end_chips_per_second``).
``fit_data_wait_share`` is the share of fit's training time spent waiting for batches: unlike the
ratio of two timings it does not depend on what else the machine runs. Prints one JSON object.
Default chips: ``data/chips`` if present, else a small demo is generated.

    .venv/bin/python benchmarks/train_throughput.py [--chips DIR] [--epochs 2] [--image-size 64]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from schoolvision.data.dataset import ChipDataset
from schoolvision.model.backbones import build_model
from schoolvision.model.inference import predict
from schoolvision.train.fit import TrainConfig, fit


def bare_train(backbone: str, batch_size: int, image_size: int, steps: int, seed: int = 0,
               channels_last: bool = True) -> float:
    """chips/s of forward + backward + AdamW step on random tensors already in memory.

    channels_last by default, as ``fit`` trains on CPU and CUDA (``benchmarks/train_precision.py``).
    """
    torch.manual_seed(seed)
    model = build_model(backbone, pretrained=True).train()
    x = torch.rand(batch_size, 3, image_size, image_size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    y = torch.randint(0, 2, (batch_size,))
    loss_fn = torch.nn.CrossEntropyLoss()
    for i in range(steps + 2):
        if i == 2:
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return steps * batch_size / (time.perf_counter() - t0)


@torch.no_grad()
def bare_inference(backbone: str, batch_size: int, image_size: int, steps: int) -> float:
    model = build_model(backbone, pretrained=True).eval()
    x = torch.rand(batch_size, 3, image_size, image_size)
    model(x)
    t0 = time.perf_counter()
    for _ in range(steps):
        model(x)
    return steps * batch_size / (time.perf_counter() - t0)


def demo_chips(root: Path) -> Path:
    from schoolvision.data.chips import ChipConfig, make_chips
    from schoolvision.demo import make_demo

    make_demo(root / "demo", towns=3, seed=0, size=768, gsd=1.0)
    make_chips([root / "demo" / "scenes"], root / "demo" / "schools.geojson", root / "chips", ChipConfig())
    return root / "chips"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chips", type=Path, default=Path("data/chips"))
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=64)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        chips = args.chips if (args.chips / "chips.csv").is_file() else demo_chips(Path(tmp))
        n_train = len(ChipDataset(chips, split="train"))
        steps = max(3, min(20, -(-n_train // args.batch_size)))
        bare_before = bare_train(args.backbone, args.batch_size, args.image_size, steps)
        cfg = TrainConfig(chips_dir=chips, out_dir=Path(tmp) / "run", backbone=args.backbone, epochs=args.epochs,
                          batch_size=args.batch_size, image_size=args.image_size, device="cpu", seed=0, n_boot=100)
        t0 = time.perf_counter()
        metrics = fit(cfg)
        fit_wall = time.perf_counter() - t0
        history = json.loads((cfg.out_dir / "history.json").read_text())
        bare_after = bare_train(args.backbone, args.batch_size, args.image_size, steps)
        train_seconds = sum(r["train_seconds"] for r in history)
        fit_train = n_train * len(history) / train_seconds
        bare = (bare_before + bare_after) / 2
        test = ChipDataset(chips, split="test", image_size=args.image_size)
        model = build_model(args.backbone, pretrained=True).eval()
        t0 = time.perf_counter()
        predict(model, test, batch_size=64)
        infer_disk = len(test) / (time.perf_counter() - t0)
        infer_bare = bare_inference(args.backbone, 64, args.image_size, max(2, len(test) // 64))
    print(json.dumps({
        "backbone": args.backbone, "batch_size": args.batch_size, "image_size": args.image_size, "epochs": len(history),
        "train_chips": n_train, "torch_threads": torch.get_num_threads(),
        "fit_train_chips_per_second": round(fit_train, 2),
        "fit_end_to_end_chips_per_second": round(n_train * len(history) / fit_wall, 2),
        "bare_train_chips_per_second": round(bare, 2),
        "bare_train_runs": [round(bare_before, 2), round(bare_after, 2)],
        "fit_over_bare": round(fit_train / bare, 3),
        "fit_data_wait_share": round(sum(r["train_data_seconds"] for r in history) / train_seconds, 4),
        "inference_chips_per_second_from_disk": round(infer_disk, 2),
        "inference_chips_per_second_bare": round(infer_bare, 2),
        "test_auprc": round(metrics["auprc"], 4),
    }, indent=2))


if __name__ == "__main__":
    main()
