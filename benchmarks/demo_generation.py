"""How long the default demo takes to generate (target: 6 towns x 1536 px in < 60 s on 2 cores).

Reports wall and CPU seconds (CPU time is what counts on a busy shared machine), per-town seconds of
the painting alone, and pixels per second. Prints one JSON object.

    .venv/bin/python benchmarks/demo_generation.py [--towns 6] [--size 1536] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--towns", type=int, default=6)
    parser.add_argument("--size", type=int, default=1536)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from schoolvision.demo import generate_town, make_demo

    per_town = []
    for i in range(args.towns):
        t = time.perf_counter()
        generate_town(args.seed, args.size, 1.0, index=i)
        per_town.append(round(time.perf_counter() - t, 2))
    with tempfile.TemporaryDirectory() as tmp:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        info = make_demo(Path(tmp) / "demo", towns=args.towns, seed=args.seed, size=args.size)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        nbytes = sum(p.stat().st_size for p in (Path(tmp) / "demo").rglob("*") if p.is_file())
    pixels = args.towns * args.size**2
    print(json.dumps({
        "towns": args.towns, "size": args.size,
        "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
        "per_town_seconds": per_town,
        "pixels_per_second": round(pixels / wall),
        "schools": sum(info.n_schools.values()), "hard_negatives": sum(info.n_landmarks.values()),
        "megabytes": round(nbytes / 1e6, 1),
        "cores": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
