"""Benchmark clustering: feature extraction vs bare inference (chips/s), and clustering seconds.

Prints one JSON object. Feature extraction runs ``schoolvision.cluster.embeddings.extract_features`` (DataLoader,
embedding, head, thumbnails) over in-memory chips; bare inference is ``model(x)`` on the same tensors.
Clustering times each stage on ``--n`` synthetic ``--dim``-d vectors (Gaussian blobs).

    .venv/bin/python benchmarks/clustering.py [--n 10000 --dim 1280 --chips 128 --device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch


def extraction(args) -> dict:
    from schoolvision.cluster.embeddings import extract_features
    from schoolvision.model.backbones import build_model
    from schoolvision.model.device import resolve_device

    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    model = build_model(args.backbone, pretrained=False).to(device).eval()
    x = torch.rand(args.chips, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(args.seed))

    class Chips(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return {"image": x[i], "label": 0, "index": i}

    with torch.no_grad():  # warm-up
        model(x[: args.batch_size].to(device))
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(x), args.batch_size):
            model(x[i : i + args.batch_size].to(device)).cpu()
    bare = time.perf_counter() - t0
    t0 = time.perf_counter()
    vectors, *_ = extract_features(model, Chips(), batch_size=args.batch_size, device=device, progress=False)
    feat = time.perf_counter() - t0
    return {
        "device": str(device),
        "backbone": args.backbone,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "chips": args.chips,
        "feature_dim": int(vectors.shape[1]),
        "bare_inference_chips_per_s": round(args.chips / bare, 1),
        "feature_extraction_chips_per_s": round(args.chips / feat, 1),
    }


def clustering(args) -> dict:
    import sklearn.cluster  # noqa: F401 - imports are not what we time
    import sklearn.decomposition  # noqa: F401
    import sklearn.mixture  # noqa: F401
    from threadpoolctl import threadpool_limits

    from schoolvision.cluster.algorithms import (
        ClusterConfig,
        embed_2d,
        fit_labels,
        reduce_features,
        select_k,
        stability,
    )

    rng = np.random.default_rng(args.seed)
    centres = rng.normal(0, 1, size=(args.blobs, args.dim))
    x = (centres[rng.integers(0, args.blobs, args.n)] + rng.normal(0, 0.7, size=(args.n, args.dim))).astype(np.float32)
    config = ClusterConfig(
        k_min=2, k_max=args.k_max, stability_seeds=args.stability_seeds, seed=args.seed, threads=args.threads
    )
    times = {}
    with threadpool_limits(limits=args.threads):
        t0 = time.perf_counter()
        reduced, explained, dims = reduce_features(x, config.variance, config.max_dims, config.seed, config.clip)
        times["standardise_pca_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        table = select_k(reduced, list(range(2, args.k_max + 1)), config)
        times["k_selection_s"] = time.perf_counter() - t0
        k = int(table.loc[table["silhouette"].idxmax(), "k"])
        for method in ("kmeans", "gmm", "hdbscan"):
            t0 = time.perf_counter()
            labels = fit_labels(reduced, method, k, config.seed, config)
            times[f"{method}_fit_s"] = time.perf_counter() - t0
            if method == "kmeans":
                kmeans_labels = labels
        t0 = time.perf_counter()
        ari = stability(reduced, kmeans_labels, k, config)
        times["stability_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    embed_2d(reduced[: args.tsne_n], config.seed)
    times[f"tsne_{args.tsne_n}_s"] = time.perf_counter() - t0
    total = times["standardise_pca_s"] + times["k_selection_s"] + times["kmeans_fit_s"] + times["stability_s"]
    return {
        "n": args.n,
        "dim": args.dim,
        "threads": args.threads,
        "pca_dims": dims,
        "k_range": [2, args.k_max],
        "chosen_k": k,
        "true_blobs": args.blobs,
        "stability_ari_mean": round(float(np.mean(ari)), 4),
        "kmeans_pipeline_s": round(total, 2),
        **{key: round(v, 2) for key, v in times.items()},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--blobs", type=int, default=5)
    p.add_argument("--k-max", type=int, default=8)
    p.add_argument("--stability-seeds", type=int, default=3)
    p.add_argument("--tsne-n", type=int, default=1000, help="t-SNE is timed on the first N vectors")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chips", type=int, default=64)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = {
        "benchmark": "clustering",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "load_average_1min": round(os.getloadavg()[0], 2),  # shared CPUs: read the numbers against this
        "extraction": extraction(args),
        "clustering": clustering(args),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
