"""`schoolvision cluster`: cluster penultimate-layer features of chips and write tables, maps and figures."""

from __future__ import annotations

import argparse
from pathlib import Path

from schoolvision.cluster.algorithms import METHODS, ClusterConfig, ClusterRunConfig, cluster_chips
from schoolvision.cluster.embeddings import SPLITS, SUBSETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="run folder (its best.pt) or a checkpoint file")
    parser.add_argument("--chips", type=Path, required=True, help="chips folder (chips.csv, dataset.json)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--k", default="auto", help="number of clusters, or 'auto' (best silhouette in --k-min..--k-max)")
    parser.add_argument("--k-min", type=int, default=2)
    parser.add_argument("--k-max", type=int, default=8)
    parser.add_argument("--method", choices=METHODS, default="kmeans")
    parser.add_argument("--subset", choices=SUBSETS, default="predicted-school")
    parser.add_argument("--split", choices=SPLITS, default="all")
    parser.add_argument("--variance", type=float, default=0.9, help="PCA keeps the dims explaining this share of variance")
    parser.add_argument("--max-dims", type=int, default=64)
    parser.add_argument("--min-cluster-share", type=float, default=0.05, help="auto k ignores k with a cluster below this share of chips")
    parser.add_argument("--min-cluster-size", type=int, default=None, help="HDBSCAN (default max(3, n/20))")
    parser.add_argument("--stability-seeds", type=int, default=5)
    parser.add_argument("--cams", type=Path, default=None, help="folder of heatmap GeoTIFFs named after chip ids (gallery overlays)")
    parser.add_argument("--no-gradcam", action="store_true", help="no Grad-CAM overlays in the gallery (when --cams is not given)")
    parser.add_argument("--cache", type=Path, default=None, help="feature cache folder (default RUN/features)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-tsne", action="store_true", help="skip the t-SNE embedding (slow above ~10,000 chips)")
    parser.add_argument("--overwrite", action="store_true")


def _k(value: str) -> int | str:
    from schoolvision.errors import UserError

    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise UserError(f"--k must be 'auto' or an integer, got {value!r}") from None


def run(args: argparse.Namespace) -> int:
    clustering = ClusterConfig(
        method=args.method, k=_k(args.k), k_min=args.k_min, k_max=args.k_max, variance=args.variance,
        max_dims=args.max_dims, min_cluster_share=args.min_cluster_share, min_cluster_size=args.min_cluster_size, stability_seeds=args.stability_seeds,
        tsne=not args.no_tsne, seed=args.seed,
    )
    config = ClusterRunConfig(
        run=args.run, chips_dir=args.chips, out_dir=args.out, subset=args.subset, split=args.split,
        clustering=clustering, device=args.device, batch_size=args.batch_size, cache_dir=args.cache,
        cams_dir=args.cams, gradcam=not args.no_gradcam, overwrite=args.overwrite,
    )
    report = cluster_chips(config)
    s = report.summary
    print(report.result.k_selection.drop(columns="method").round(3).to_string(index=False))
    for m in s["messages"]:
        print(f"note: {m}")
    print(
        f"{s['n_chips']} chips ({args.subset}, split {args.split}) -> {s['method']} k={s['k']} "
        f"({'auto' if clustering.k == 'auto' else 'given'}), silhouette {s['silhouette']}, "
        f"stability ARI {s['stability_ari_mean']}, PCA {s['pca_dims']} dims ({s['pca_variance']:.0%} variance)"
    )
    print(f"cluster sizes {s['cluster_sizes']}; wrote {report.out_dir}/clusters.csv, clusters.gpkg, clusters.geojson, projector/")
    return 0
