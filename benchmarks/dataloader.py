"""DataLoader throughput of ChipDataset (chips per second) with 0 and 2 workers, with augmentation.

Usage: .venv/bin/python benchmarks/dataloader.py [--towns 3] [--size 768] [--epochs 2]
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from schoolvision.data.chips import ChipConfig, make_chips
from schoolvision.data.dataset import ChipDataset
from schoolvision.demo import make_demo


def throughput(ds: ChipDataset, workers: int, batch_size: int, epochs: int) -> float:
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    n, start = 0, time.perf_counter()
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for batch in loader:
            n += len(batch["label"])
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--towns", type=int, default=3)
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        demo = Path(tmp) / "demo"
        make_demo(demo, towns=args.towns, seed=0, size=args.size, gsd=1.0)
        make_chips([demo / "scenes"], demo / "schools.geojson", Path(tmp) / "chips", ChipConfig(negative_ratio=None))
        result = {"benchmark": "dataloader", "batch_size": args.batch_size, "epochs": args.epochs}
        for augment in (False, True):
            ds = ChipDataset(Path(tmp) / "chips", augment=augment)
            result["chips"] = len(ds)
            for workers in (0, 2):
                key = f"{'augment' if augment else 'plain'}_workers{workers}_chips_per_s"
                result[key] = round(throughput(ds, workers, args.batch_size, args.epochs), 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
