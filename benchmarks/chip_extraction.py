"""Chip extraction speed: chips written per second on a generated demo.

Usage: .venv/bin/python benchmarks/chip_extraction.py [--towns 3] [--size 1024]
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from schoolvision.data.chips import ChipConfig, make_chips
from schoolvision.demo import make_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--towns", type=int, default=3)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--chip-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        demo = Path(tmp) / "demo"
        make_demo(demo, towns=args.towns, seed=args.seed, size=args.size, gsd=1.0)
        result = {"benchmark": "chip_extraction", "towns": args.towns, "scene_px": args.size,
                  "chip_size": args.chip_size}
        for name, gsd in (("native", None), ("resampled_0.8m", 0.8)):
            config = ChipConfig(chip_size=args.chip_size, gsd=gsd, negative_ratio=None, seed=args.seed)
            start = time.perf_counter()
            summary = make_chips([demo / "scenes"], demo / "schools.geojson", Path(tmp) / name, config)
            seconds = time.perf_counter() - start
            result[name] = {"chips": summary.n_chips, "seconds": round(seconds, 2),
                            "chips_per_s": round(summary.n_chips / seconds, 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
