"""Cluster chip features: which kinds of schools (and look-alikes) does the model see?

Standardise -> PCA (dimensions by an explained-variance threshold) -> k-means, Gaussian mixture
or HDBSCAN. k is chosen from a range by silhouette, with Davies-Bouldin and the mixture's BIC shown
beside it, and the chosen k's stability is the adjusted Rand index between fits with other seeds.
Everything random takes ``seed``; the same features and seed give the same clusters.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from schoolvision.errors import UserError

METHODS = ("kmeans", "gmm", "hdbscan")


@dataclass
class ClusterConfig:
    """How to cluster. ``k="auto"`` picks the best silhouette in ``[k_min, k_max]``."""

    method: str = "kmeans"
    k: int | str = "auto"
    k_min: int = 2
    k_max: int = 8
    clip: float | None = 5.0  # standardised values are clipped to +-clip: a unit that fires for one chip only
    # would otherwise give it a z of sqrt(n) and a cluster of its own
    variance: float = 0.9  # PCA keeps the fewest dimensions explaining this share of variance ...
    max_dims: int = 64  # ... but never more than this
    covariance: str = "diag"  # GMM covariance: "diag" stays well-posed with few chips per cluster
    min_cluster_share: float = 0.05  # auto k skips k whose smallest cluster is below this share (outlier pairs)
    min_cluster_size: int | None = None  # HDBSCAN; None = max(3, n // 20)
    stability_seeds: int = 5
    silhouette_sample: int = 3000  # silhouette is O(n^2): score a seeded sample above this
    tsne: bool = True
    threads: int | None = 1  # BLAS/OpenMP threads; 1 avoids oversubscription (many times faster on busy CPUs); None = all
    seed: int = 0


@dataclass
class Clustering:
    """Labels (-1 = HDBSCAN noise), distances to the own cluster centre in PCA space, and diagnostics."""

    labels: np.ndarray
    distances: np.ndarray
    centres: np.ndarray
    reduced: np.ndarray
    k: int
    method: str
    k_selection: pd.DataFrame
    explained: np.ndarray  # cumulative explained-variance ratio of the PCA components
    dims: int
    silhouette: float
    davies_bouldin: float
    stability: list[float]  # ARI of each extra seed's (or subsample's) fit against the reported fit
    embedding_2d: np.ndarray | None
    messages: list[str] = field(default_factory=list)

    @property
    def noise_fraction(self) -> float:
        return float(np.mean(self.labels < 0)) if len(self.labels) else 0.0

    def summary(self) -> dict:
        return {
            "method": self.method,
            "k": self.k,
            "n_chips": int(len(self.labels)),
            "pca_dims": self.dims,
            "pca_variance": round(float(self.explained[self.dims - 1]), 4),
            "silhouette": _round(self.silhouette),
            "davies_bouldin": _round(self.davies_bouldin),
            "stability_ari_mean": _round(float(np.mean(self.stability))) if self.stability else None,
            "stability_ari": [_round(a) for a in self.stability],
            "noise_fraction": round(self.noise_fraction, 4),
            "cluster_sizes": {int(c): int(n) for c, n in zip(*np.unique(self.labels, return_counts=True))},
            "messages": self.messages,
        }


def reduce_features(
    vectors: np.ndarray, variance: float = 0.9, max_dims: int = 64, seed: int = 0, clip: float | None = 5.0
) -> tuple[np.ndarray, np.ndarray, int]:
    """Standardise (clipped to +-``clip``) and PCA-reduce; returns ``(reduced (N, dims), cumulative explained ratio, dims)``."""
    from sklearn.decomposition import PCA

    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or len(x) < 3:
        raise UserError(f"need at least 3 feature vectors to cluster, got {len(x)}; widen --subset or --split")
    if not np.isfinite(x).all():
        raise UserError("features contain NaN or infinity (a diverged model?); retrain or use another checkpoint")
    std = x.std(axis=0)
    if std.max() <= 1e-7 * max(1.0, float(np.abs(x).max())):
        raise UserError(
            f"all {len(x)} feature vectors are identical (an untrained model or blank chips?); nothing to cluster"
        )
    keep = std > 1e-6 * std.max()  # near-constant units would be blown up to unit variance: drop them
    z = ((x[:, keep] - x[:, keep].mean(axis=0)) / std[keep]).astype(np.float32)  # float32 SVD: 2x faster
    if clip is not None:
        np.clip(z, -clip, clip, out=z)
    n_comp = int(min(max_dims, z.shape[0], z.shape[1]))
    solver = "randomized" if min(z.shape) > 500 else "full"
    pca = PCA(n_components=n_comp, svd_solver=solver, random_state=seed).fit(z)
    explained = np.cumsum(pca.explained_variance_ratio_)
    dims = int(min(np.searchsorted(explained, variance - 1e-12) + 1, n_comp))
    return pca.transform(z)[:, :dims].astype(np.float64), explained, dims


def fit_labels(reduced: np.ndarray, method: str, k: int | None, seed: int, config: ClusterConfig) -> np.ndarray:
    """Cluster labels of one fit (HDBSCAN ignores ``k``)."""
    if method == "kmeans":
        from sklearn.cluster import KMeans

        return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(reduced)
    if method == "gmm":
        from sklearn.mixture import GaussianMixture

        gmm = GaussianMixture(n_components=k, covariance_type=config.covariance, n_init=2, reg_covar=1e-4, random_state=seed)
        return gmm.fit(reduced).predict(reduced)
    if method == "hdbscan":
        from sklearn.cluster import HDBSCAN

        mcs = config.min_cluster_size or max(3, len(reduced) // 20)
        return HDBSCAN(min_cluster_size=min(mcs, len(reduced)), copy=True).fit_predict(reduced)
    raise UserError(f"unknown clustering method {method!r}; use one of {', '.join(METHODS)}")


def k_range(n: int, k_min: int, k_max: int) -> tuple[list[int], list[str]]:
    """The k values to try for ``n`` points (silhouette needs 2 <= k <= n - 1), with warnings if clipped."""
    if n < 3:
        raise UserError(f"need at least 3 chips to cluster, got {n}; widen --subset or --split")
    if k_min < 2 or k_max < k_min:
        raise UserError(f"k range [{k_min}, {k_max}] is invalid; use 2 <= k_min <= k_max")
    messages = []
    hi = min(k_max, n - 1)
    if hi < k_max:
        messages.append(f"only {n} chips: k range clipped from [{k_min}, {k_max}] to [{min(k_min, hi)}, {hi}]")
    return list(range(min(k_min, hi), hi + 1)), messages


def select_k(reduced: np.ndarray, ks: list[int], config: ClusterConfig) -> pd.DataFrame:
    """Silhouette and Davies-Bouldin of the method's fit for each k, and the Gaussian mixture's BIC.

    HDBSCAN does not take k: its table is computed with k-means as a reference.
    """
    from sklearn.mixture import GaussianMixture

    method = "kmeans" if config.method == "hdbscan" else config.method
    rows = []
    for k in ks:
        labels = fit_labels(reduced, method, k, config.seed, config)
        sil, db = _scores(reduced, labels, config)
        smallest = int(np.bincount(labels, minlength=k).min())
        gmm = GaussianMixture(n_components=k, covariance_type=config.covariance, reg_covar=1e-4, random_state=config.seed)
        bic = float(gmm.fit(reduced).bic(reduced))
        rows.append({"k": k, "silhouette": sil, "davies_bouldin": db, "bic": bic, "smallest": smallest, "method": method})
    return pd.DataFrame(rows)


def choose_k(table: pd.DataFrame, min_size: int = 1) -> int:
    """The k with the highest silhouette (the smaller k on ties) among those whose smallest cluster
    has ``min_size`` chips; silhouette alone likes to split off a pair of outliers."""
    valid = table.dropna(subset=["silhouette"])
    if "smallest" in valid and (valid["smallest"] >= min_size).any():
        valid = valid[valid["smallest"] >= min_size]
    if valid.empty:
        return int(table["k"].min())
    best = valid["silhouette"].max()
    return int(valid.loc[valid["silhouette"] >= best - 1e-12, "k"].min())


def stability(reduced: np.ndarray, labels: np.ndarray, k: int, config: ClusterConfig) -> list[float]:
    """Adjusted Rand index of the reported labels against fits with ``stability_seeds`` other seeds.

    HDBSCAN is deterministic, so it is refit on seeded 80 % subsamples instead.
    """
    from sklearn.metrics import adjusted_rand_score

    scores = []
    for i in range(1, config.stability_seeds + 1):
        seed = config.seed + i
        if config.method == "hdbscan":
            idx = np.sort(np.random.default_rng(seed).choice(len(reduced), int(0.8 * len(reduced)), replace=False))
            other = fit_labels(reduced[idx], "hdbscan", None, seed, config)
            scores.append(float(adjusted_rand_score(labels[idx], other)))
        else:
            other = fit_labels(reduced, config.method, k, seed, config)
            scores.append(float(adjusted_rand_score(labels, other)))
    return scores


def embed_2d(reduced: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """Seeded t-SNE to two dimensions (perplexity shrunk for small sets).

    Runs on one OpenMP thread: Barnes-Hut's threaded gradient is many times slower on a busy
    machine, and one thread gives the same map on every machine.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n = len(reduced)
    if reduced.shape[1] < 2 or n < 5:
        return np.pad(reduced[:, :2], ((0, 0), (0, max(0, 2 - reduced.shape[1]))))
    perp = float(min(perplexity, max(2.0, (n - 1) / 3)))
    with threadpool_limits(limits=1, user_api="openmp"):
        return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(reduced)


def cluster_features(vectors: np.ndarray, config: ClusterConfig | None = None, *, warn: bool = True) -> Clustering:
    """Reduce, choose k, cluster, measure stability and embed in 2-D.

    Problems short of an error (k range clipped, HDBSCAN all noise) are in ``result.messages`` and,
    with ``warn``, also raised as warnings.
    """
    from threadpoolctl import threadpool_limits

    config = config or ClusterConfig()
    with threadpool_limits(limits=config.threads):
        result = _cluster_features(vectors, config)
    for message in result.messages if warn else ():
        warnings.warn(message, stacklevel=2)
    return result


def _cluster_features(vectors: np.ndarray, config: ClusterConfig) -> Clustering:
    if config.method not in METHODS:
        raise UserError(f"unknown clustering method {config.method!r}; use one of {', '.join(METHODS)}")
    reduced, explained, dims = reduce_features(vectors, config.variance, config.max_dims, config.seed, config.clip)
    n = len(reduced)
    if config.k == "auto":
        ks, messages = k_range(n, config.k_min, config.k_max)
    else:
        k_fixed = int(config.k)
        if not 2 <= k_fixed <= n - 1:
            raise UserError(f"k={k_fixed} does not fit {n} chips; use 2 <= k <= {n - 1} or --k auto")
        ks, messages = k_range(n, min(config.k_min, k_fixed), max(config.k_max, k_fixed))
    table = select_k(reduced, ks, config)
    if config.method == "hdbscan":
        labels = fit_labels(reduced, "hdbscan", None, config.seed, config)
        k = int(labels.max() + 1)
        if k == 0:
            mcs = config.min_cluster_size or max(3, n // 20)
            messages.append(
                f"HDBSCAN labelled all {n} chips as noise (min_cluster_size={mcs}); "
                "try a smaller --min-cluster-size, more chips (--split all), or --method kmeans"
            )
    else:
        min_size = max(2, int(np.ceil(config.min_cluster_share * n)))
        asked = choose_k(table, min_size) if config.k == "auto" else int(config.k)
        # a mixture can leave a component empty: renumber so that clusters are 0..k-1 and non-empty
        labels = np.unique(fit_labels(reduced, config.method, asked, config.seed, config), return_inverse=True)[1]
        k = int(labels.max() + 1)
        if k < asked:
            messages.append(f"{config.method} left {asked - k} of {asked} clusters empty; reporting k={k}")
    centres = np.stack([reduced[labels == c].mean(axis=0) for c in range(k)]) if k else np.zeros((0, dims))
    distances = np.full(n, np.nan)
    clustered = labels >= 0
    distances[clustered] = np.linalg.norm(reduced[clustered] - centres[labels[clustered]], axis=1)
    sil, db = _scores(reduced[clustered], labels[clustered], config)
    stab = stability(reduced, labels, k, config) if k >= 1 and config.stability_seeds > 0 else []
    xy = embed_2d(reduced, config.seed) if config.tsne else None
    return Clustering(labels, distances, centres, reduced, k, config.method, table, explained, dims, sil, db, stab, xy, messages)


def nearest_to_centre(result: Clustering, n: int = 8) -> dict[int, np.ndarray]:
    """For each cluster, the indices of its ``n`` members closest to the centre (the gallery)."""
    out = {}
    for c in range(result.k):
        members = np.flatnonzero(result.labels == c)
        out[c] = members[np.argsort(result.distances[members], kind="stable")[:n]]
    return out


def _scores(reduced: np.ndarray, labels: np.ndarray, config: ClusterConfig) -> tuple[float, float]:
    from sklearn.metrics import davies_bouldin_score, silhouette_score

    n_labels = len(np.unique(labels))
    if not 2 <= n_labels <= len(reduced) - 1:
        return float("nan"), float("nan")
    sample = config.silhouette_sample if len(reduced) > config.silhouette_sample else None
    sil = float(silhouette_score(reduced, labels, sample_size=sample, random_state=config.seed))
    return sil, float(davies_bouldin_score(reduced, labels))


def _round(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


# --- the chips pipeline: features -> clusters -> files ------------------------------------------


@dataclass
class ClusterRunConfig:
    """``schoolvision cluster``: which run and chips, which subset, how to cluster, where to write."""

    run: Path
    chips_dir: Path
    out_dir: Path
    subset: str = "predicted-school"
    split: str = "all"
    clustering: ClusterConfig = field(default_factory=ClusterConfig)
    device: str = "auto"
    batch_size: int = 64
    cache_dir: Path | None = None
    cams_dir: Path | None = None  # heatmap GeoTIFFs <chip_id>.tif for the gallery (e.g. explain output)
    gradcam: bool = True  # else: Grad-CAM of the gallery chips, computed here (if schoolvision.explain.methods exists)
    gallery_size: int = 8
    overwrite: bool = False
    figures: bool = True
    projector: bool = True


@dataclass
class ClusterReport:
    """What ``cluster_chips`` computed and wrote."""

    table: pd.DataFrame  # clusters.csv
    result: Clustering
    summary: dict
    out_dir: Path
    thumbnails: np.ndarray
    vectors: np.ndarray
    cams: dict[str, np.ndarray] = field(default_factory=dict)  # gallery heatmaps by chip id


CLUSTER_COLUMNS = ["chip_id", "path", "cluster", "distance", "label", "prediction", "prob", "scene", "split"]


def cluster_chips(config: ClusterRunConfig, *, progress: bool = True) -> ClusterReport:
    """Extract (or load cached) features, cluster them and write every output into ``out_dir``."""
    from schoolvision.io.atomic import atomic_path, write_json
    from schoolvision.cluster.embeddings import FeatureConfig, load_features

    out = Path(config.out_dir)
    if out.exists() and any(out.iterdir()) and not config.overwrite:
        raise UserError("output folder is not empty; pass --overwrite (overwrite=True) or choose another --out", out)
    feats = load_features(
        FeatureConfig(config.run, config.chips_dir, config.split, config.subset, config.batch_size, config.device, config.cache_dir),
        progress=progress,
    )
    if len(feats.frame) < 3:
        raise UserError(
            f"only {len(feats.frame)} chips in subset {config.subset!r} of split {config.split!r}; "
            "use --split all or --subset all", Path(config.chips_dir) / "chips.csv",
        )
    result = cluster_features(feats.vectors, config.clustering)
    table = feats.frame.copy()
    table["cluster"] = result.labels
    table["distance"] = np.round(result.distances, 6)
    extra = [c for c in table.columns if c not in CLUSTER_COLUMNS]
    table = table[CLUSTER_COLUMNS + extra]

    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "clusters.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out / "k_selection.csv") as tmp:
        result.k_selection.round(6).to_csv(tmp, index=False)
    write_cluster_vectors(table, out / "clusters.gpkg", out / "clusters.geojson")
    summary = {
        **result.summary(),
        "subset": config.subset,
        "split": config.split,
        "run": str(config.run),
        "chips_dir": str(config.chips_dir),
        "features_key": feats.key,
        "feature_dim": int(feats.vectors.shape[1]),
        "config": asdict(config.clustering),
    }
    if config.projector:
        from schoolvision.cluster.projector import write_projector

        meta = table[["chip_id", "cluster", "label", "prediction", "scene", "split"]].assign(prob=table["prob"].round(3))
        write_projector(out / "projector", feats.vectors, meta, feats.thumbnails)
    cams: dict[str, np.ndarray] = {}
    if config.figures and result.k > 0:
        gallery = np.concatenate(list(nearest_to_centre(result, config.gallery_size).values()))
        if config.cams_dir:
            from schoolvision.plotting.cluster import read_cams

            cams = read_cams(config.cams_dir, table["chip_id"].iloc[gallery])
        elif config.gradcam:
            cams = gallery_cams(config.run, config.chips_dir, table["chip_id"].iloc[gallery], config.device)
        summary["gallery_cams"] = len(cams)
    report = ClusterReport(table, result, summary, out, feats.thumbnails, feats.vectors, cams)
    if config.figures:
        from schoolvision.plotting.cluster import write_cluster_figures

        summary["figures"] = [p.name for p in write_cluster_figures(report, config.chips_dir, cams, config.gallery_size)]
    write_json(out / "summary.json", summary)
    _remove_stale(out, set(summary.get("figures", [])) | ({"projector"} if config.projector else set()))
    return report


# Outputs a clustering run may or may not write: its figures (by scene and by option) and the projector.
_OPTIONAL_OUTPUTS = ("*.png", "projector")


def _remove_stale(out: Path, written: set[str]) -> None:
    """Delete optional outputs of an earlier run into ``out`` that this run did not write again.

    With ``overwrite`` a folder may hold a previous run's per-town maps or projector; left in place,
    they would sit beside this run's clusters and contradict them.
    """
    import shutil

    for pattern in _OPTIONAL_OUTPUTS:
        for path in out.glob(pattern):
            if path.name in written:
                continue
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def cluster_profile(table: pd.DataFrame) -> pd.DataFrame:
    """One row per cluster: size, share of true schools and of false positives, mean P(school), towns."""
    from schoolvision import CLASSES, SCHOOL

    school = CLASSES[SCHOOL]
    t = table.assign(
        true_school=table["label"] == school,
        false_positive=(table["prediction"] == school) & (table["label"] != school),
    )
    return t.groupby("cluster").agg(
        chips=("chip_id", "size"),
        true_school=("true_school", "mean"),
        false_positive=("false_positive", "mean"),
        mean_prob=("prob", "mean"),
        towns=("scene", "nunique"),
        main_town=("scene", lambda s: s.value_counts().idxmax()),
    ).round(3)


def gallery_cams(run: Path, chips_dir: Path, chip_ids, device: str = "auto", method: str = "gradcam") -> dict[str, np.ndarray]:
    """Grad-CAM maps (chip id -> (h, w) in [0, 1]) of a few chips, or ``{}`` without ``schoolvision.explain.methods``."""
    try:
        from schoolvision.explain.methods import explain_batch
    except ImportError:
        return {}
    import torch

    from schoolvision.model.checkpoint import load_classifier
    from schoolvision.data.dataset import ChipDataset
    from schoolvision.model.device import resolve_device

    ids = [str(c) for c in chip_ids]
    if not ids:
        return {}
    model, meta = load_classifier(run, resolve_device(device))
    ds = ChipDataset(chips_dir, image_size=meta.image_size, require_classes=False)
    row_of = {cid: i for i, cid in enumerate(ds.frame["chip_id"].astype(str))}
    maps = []
    for start in range(0, len(ids), 32):
        x = torch.stack([ds[row_of[c]]["image"] for c in ids[start : start + 32]])
        maps.append(explain_batch(model, x.to(next(model.parameters()).device), method))
    return dict(zip(ids, np.concatenate(maps)))


def footprints(table: pd.DataFrame):
    """Chip footprint polygons grouped by CRS: ``{crs: GeoDataFrame}`` (chips.csv bounds are in ``crs``)."""
    import geopandas as gpd
    from shapely.geometry import box

    cols = [c for c in table.columns if c not in ("minx", "miny", "maxx", "maxy", "crs")]
    out = {}
    for crs, part in table.groupby("crs", sort=True):
        geom = [box(*b) for b in part[["minx", "miny", "maxx", "maxy"]].to_numpy(float)]
        out[str(crs)] = gpd.GeoDataFrame(part[cols].reset_index(drop=True), geometry=geom, crs=str(crs))
    return out


def write_cluster_vectors(table: pd.DataFrame, gpkg: Path, geojson: Path) -> None:
    """Chip footprints with their cluster to a GeoPackage and a GeoJSON.

    A GeoPackage layer has one CRS. Layer ``clusters`` is in the chips' CRS when they share one
    (exact squares); when scenes lie in several CRSs it is in EPSG:4326 and each CRS also gets an
    exact layer ``clusters_<authority>_<code>``. The GeoJSON is always EPSG:4326.
    """
    import geopandas as gpd

    from schoolvision.io.gis import write_vectors

    parts = footprints(table)
    if len(parts) == 1:
        main, extra = next(iter(parts.values())), {}
    else:
        main = gpd.GeoDataFrame(pd.concat([p.to_crs("EPSG:4326") for p in parts.values()], ignore_index=True), crs="EPSG:4326")
        extra = {"clusters_" + crs.replace(":", "_").lower(): p for crs, p in parts.items()}
    write_vectors(main, gpkg=gpkg, geojson=geojson, layer="clusters", extra_layers=extra)


def read_scene_paths(chips_dir: Path) -> dict[str, Path]:
    """Scene name -> image path from ``chips_dir/dataset.json`` (relative paths resolved against it)."""
    import json

    info_path = Path(chips_dir) / "dataset.json"
    if not info_path.is_file():
        return {}
    scenes = json.loads(info_path.read_text()).get("scenes", {})
    out = {}
    for name, entry in scenes.items():
        p = Path(entry["path"] if isinstance(entry, dict) else entry)
        out[name] = p if p.is_absolute() else (Path(chips_dir) / p)
    return out
