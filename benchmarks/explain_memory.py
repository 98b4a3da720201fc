"""Memory over a long explanation run: peak RSS after 100 and after 500 chips (hooks released).

Each batch opens and closes its explainer, as :func:`schoolvision.explain.runner.explain_chips` does, and
the maps are dropped, so memory must level off: the RSS after 500 chips should match the one after
100. The number of hooks left on the model after the run is printed too (must be 0). One JSON object.

    .venv/bin/python benchmarks/explain_memory.py [--method gradcam] [--chips 500] [--image-size 128]
"""

from __future__ import annotations

import argparse
import json
import resource

import torch


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--chips", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=20)
    args = parser.parse_args()

    from schoolvision.explain.methods import explainer
    from schoolvision.model.backbones import build_model

    model = build_model(args.backbone, pretrained=False).eval()
    g = torch.Generator().manual_seed(0)
    marks: dict[str, dict[str, float]] = {}
    done = 0
    while done < args.chips:
        x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, generator=g)
        with explainer(model, args.method) as explain:
            maps = explain(x)
        del maps
        done += args.batch_size
        for mark in (100, args.chips):
            if done >= mark and str(mark) not in marks:
                marks[str(mark)] = {"rss_mib": round(_rss_mib(), 1), "peak_rss_mib": round(_peak_mib(), 1)}
    hooks = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())
    growth = marks[str(args.chips)]["rss_mib"] - marks["100"]["rss_mib"]
    print(json.dumps({"method": args.method, "backbone": args.backbone, "image_size": args.image_size,
                      "chips": args.chips, "after": marks, "rss_growth_100_to_end_mib": round(growth, 1),
                      "hooks_left": hooks}))


if __name__ == "__main__":
    main()
