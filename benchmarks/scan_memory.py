"""Peak memory of scanning does not grow with the scene: peak RSS for two scene sizes.

Each size is scanned in its own subprocess, which reports its own ``ru_maxrss`` (the peak resident
set of that process only). Scenes are generated block by block with cheap texture; the model is a
tiny CNN by default (the pipeline's memory, not the backbone's, is what is measured; pass
``--backbone efficientnet_lite0`` for the real one, slower). Target: < 2 GB at every size.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


class TinyNet(torch.nn.Module):
    """A 2-layer CNN with the SchoolClassifier interface (feature map, embedding, logits), for fast memory runs."""

    def __init__(self):
        super().__init__()
        self.trunk = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.ReLU())
        self.pool = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(1))
        self.head = torch.nn.Linear(8, 2)

    def feature_map(self, x):
        return self.trunk(x)

    def embed(self, x):
        return self.pool(self.feature_map(x))

    def forward(self, x):
        return self.head(self.embed(x))


def child(scene: Path, out: Path, backbone: str, stride: int) -> dict:
    from schoolvision.io.imagery import list_sources
    from schoolvision.model.backbones import build_model
    from schoolvision.model.checkpoint import CheckpointMeta
    from schoolvision.scan.candidates import extract_all
    from schoolvision.scan.scene import scan_scene

    torch.manual_seed(0)
    model = TinyNet().eval() if backbone == "tiny" else build_model(backbone, pretrained=False).eval()
    meta = CheckpointMeta(backbone=backbone, image_size=128, chip_size=128, gsd=1.0)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    # the tiny net has no ONNX export (no backbone metadata): it runs in torch; a real backbone gets ``auto``
    runtime = "torch" if backbone == "tiny" else "auto"
    res = scan_scene(model, meta, list_sources([scene])[0], out, stride=stride, batch_size=32, progress=False,
                     runtime=runtime)
    cands, _ = extract_all([res], 0.5)
    return {
        "windows": res.windows,
        "seconds": round(time.perf_counter() - t0, 2),
        "rss_before_scan_mb": round(base / 1024, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "candidates": len(cands),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--stride", type=int, default=64)
    ap.add_argument("--backbone", default="tiny")
    ap.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.backbone, args.stride)))
        return 0
    sys.path.insert(0, str(Path(__file__).parent))
    from scan_throughput import make_scene

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            scene = make_scene(Path(tmp) / f"scene_{size}.tif", size)
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    str(scene),
                    str(Path(tmp) / f"prob_{size}.tif"),
                    "--backbone",
                    args.backbone,
                    "--stride",
                    str(args.stride),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            results[str(size)] = {
                "scene_mb": round(scene.stat().st_size / 2**20, 1),
                **json.loads(proc.stdout.splitlines()[-1]),
            }
            scene.unlink()
    peaks = [r["peak_rss_mb"] for r in results.values()]
    print(
        json.dumps(
            {
                "backbone": args.backbone,
                "stride": args.stride,
                "sizes": results,
                "max_peak_rss_mb": max(peaks),
                "under_2gb": max(peaks) < 2048,
            }
        )
    )
    return 0 if max(peaks) < 2048 else 1


if __name__ == "__main__":
    sys.exit(main())
