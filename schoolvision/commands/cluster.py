"""`schoolvision cluster`: cluster penultimate-layer features of chips and write tables, maps and figures."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from schoolvision.cluster.algorithms import METHODS, ClusterConfig
from schoolvision.cluster.embeddings import SPLIT_CHOICES, SUBSETS, VIEWS
from schoolvision.cluster.runner import ClusterReport, ClusterRunConfig, cluster_chips, read_scene_previews
from schoolvision.commands import OVERWRITE_HELP, config_from_args, default_of
from schoolvision.errors import UserError
from schoolvision.io.atomic import atomic_path
from schoolvision.model.runtime import RUNTIME_CHOICES
from schoolvision.plotting import cluster as plots
from schoolvision.plotting.theme import apply_theme


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="run folder (its best.pt) or a checkpoint file")
    parser.add_argument("--chips", type=Path, required=True, help="chips folder (chips.csv, dataset.json)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--k",
        default=default_of(ClusterConfig, "k"),
        help="number of clusters, or 'auto' (best silhouette in --k-min..--k-max)",
    )
    parser.add_argument("--k-min", type=int, default=default_of(ClusterConfig, "k_min"))
    parser.add_argument(
        "--k-max",
        type=int,
        default=default_of(ClusterConfig, "k_max"),
        help="largest k tried by --k auto (default %(default)s; the book uses 6 on its ~400 chips: "
        "fewer chips support fewer clusters)",
    )
    parser.add_argument("--method", choices=METHODS, default=default_of(ClusterConfig, "method"))
    parser.add_argument(
        "--subset",
        choices=SUBSETS,
        default=default_of(ClusterRunConfig, "subset"),
        help="chips to cluster (default %(default)s: what the model calls a school, labels or not; "
        "the book clusters true-school to show what schools look like)",
    )
    parser.add_argument("--split", choices=SPLIT_CHOICES, default=default_of(ClusterRunConfig, "split"))
    parser.add_argument(
        "--view",
        choices=VIEWS,
        default=default_of(ClusterRunConfig, "view"),
        help="chips.csv view to cluster: centred keeps the windows cut around a school (every school in the middle "
        "of its chip), so chip framing cannot separate the clusters (default %(default)s)",
    )
    parser.add_argument(
        "--variance",
        type=float,
        default=default_of(ClusterConfig, "variance"),
        help="PCA keeps the dims explaining this share of variance",
    )
    parser.add_argument("--max-dims", type=int, default=default_of(ClusterConfig, "max_dims"))
    parser.add_argument(
        "--min-cluster-share",
        type=float,
        default=default_of(ClusterConfig, "min_cluster_share"),
        help="auto k ignores k with a cluster below this share of chips",
    )
    parser.add_argument(
        "--min-cluster-size",
        type=int,
        default=default_of(ClusterConfig, "min_cluster_size"),
        help="HDBSCAN (default max(3, n/20))",
    )
    parser.add_argument("--stability-seeds", type=int, default=default_of(ClusterConfig, "stability_seeds"))
    parser.add_argument(
        "--cams", type=Path, default=None, help="folder of heatmap GeoTIFFs named after chip ids (gallery overlays)"
    )
    parser.add_argument(
        "--no-gradcam", action="store_true", help="no Grad-CAM overlays in the gallery (when --cams is not given)"
    )
    parser.add_argument("--cache", type=Path, default=None, help="feature cache folder (default RUN/features)")
    parser.add_argument("--device", default=default_of(ClusterRunConfig, "device"))
    parser.add_argument("--batch-size", type=int, default=default_of(ClusterRunConfig, "batch_size"))
    parser.add_argument(
        "--runtime", default=default_of(ClusterRunConfig, "runtime"), choices=RUNTIME_CHOICES,
        help="feature extraction: auto (ONNX Runtime on CPU when the onnx extra is installed; int8 where native "
        "and within tolerance), torch, torch-fast, onnx or onnx-int8; float32 runtimes share one feature cache "
        "(default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=default_of(ClusterConfig, "seed"))
    parser.add_argument("--no-tsne", action="store_true", help="skip the t-SNE embedding (slow above ~10,000 chips)")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def _k(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise UserError(f"--k must be 'auto' or an integer, got {value!r}") from None


RENAMED = {"chips": "chips_dir", "out": "out_dir", "cache": "cache_dir", "cams": "cams_dir"}
"""Option ``dest`` -> field of :class:`ClusterRunConfig`, where the option's name is shorter."""


def run(args: argparse.Namespace) -> int:
    clustering = config_from_args(ClusterConfig, args, negated={"no_tsne": "tsne"}, parsed={"k": _k})
    config = config_from_args(ClusterRunConfig, args, renamed=RENAMED, negated={"no_gradcam": "gradcam"})
    config = dataclasses.replace(config, clustering=clustering)
    report = cluster_chips(config, save_figures=lambda r: write_figures(r, config.chips_dir, config.gallery_size))
    s = report.summary
    print(report.result.k_selection.drop(columns="method").round(3).to_string(index=False))
    for m in s["messages"]:
        print(f"note: {m}")
    print(
        f"{s['n_chips']} chips ({args.subset}, split {args.split}) -> {s['method']} k={s['k']} "
        f"({'auto' if clustering.k == 'auto' else 'given'}), silhouette {s['silhouette']}, "
        f"stability ARI {s['stability_ari_mean']}, PCA {s['pca_dims']} dims ({s['pca_variance']:.0%} variance)"
    )
    print(
        f"cluster sizes {s['cluster_sizes']}; "
        f"wrote {report.out_dir}/clusters.csv, clusters.gpkg, clusters.geojson, projector/"
    )
    return 0


def write_figures(report: ClusterReport, chips_dir: Path, gallery_size: int = 8) -> list[Path]:
    """Every clustering figure as PNG in ``report.out_dir``: k selection, PCA, composition, t-SNE, gallery, maps.

    Each figure is saved (atomically) and closed before the next is drawn, so a run over many towns
    holds one map at a time.
    """
    apply_theme()
    result, table, out = report.result, report.table, report.out_dir
    paths = []

    def save(name: str, fig: Figure) -> None:
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, dpi=110)
        plt.close(fig)  # pyplot figures (so notebooks show them) must be closed by the command line
        paths.append(out / name)

    chosen_k = result.k if result.method != "hdbscan" else None
    save("k_selection.png", plots.plot_k_selection(result.k_selection, chosen_k))
    variance = report.summary["config"]["variance"]
    save("pca_variance.png", plots.plot_pca_variance(result.explained, result.dims, variance))
    save("composition.png", plots.plot_composition(table))
    if result.embedding_2d is not None:
        outcomes = plots.chip_outcomes(table)
        save("embedding.png", plots.plot_embedding(result.embedding_2d, result.labels, outcomes, report.thumbnails))
    if result.k > 0 and report.gallery:
        save("gallery.png", plots.cluster_gallery(table, result, report.gallery, report.cams, gallery_size))
    for scene, preview in read_scene_previews(chips_dir, sorted(table["scene"].unique())):
        save(f"map_{scene}.png", plots.plot_cluster_map(table, preview, scene))
    return paths
