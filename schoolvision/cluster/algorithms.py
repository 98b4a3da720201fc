"""Cluster chip features: which kinds of schools (and look-alikes) does the model see?

Standardise -> PCA (dimensions by an explained-variance threshold) -> k-means, Gaussian mixture
or HDBSCAN. k is chosen from a range by silhouette, with Davies-Bouldin and the mixture's BIC shown
beside it, and the chosen k's stability is the adjusted Rand index between fits with other seeds.
Everything random takes ``seed``; the same features and seed give the same clusters.

Arrays and frames in, arrays and frames out: reading features and writing the outputs is
:mod:`schoolvision.cluster.runner`'s job.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.cluster import HDBSCAN, KMeans
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import adjusted_rand_score, davies_bouldin_score, silhouette_score
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from schoolvision.data.places import distinct_places
from schoolvision.errors import UserError, check_range, check_ranges

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
    # BLAS/OpenMP threads; 1 avoids oversubscription (many times faster on busy CPUs); None = all
    threads: int | None = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k != "auto":
            check_range("--k", self.k, minimum=2)
        check_ranges(self, "--k-min >= 2")
        check_range("--k-max", self.k_max, minimum=self.k_min)
        check_ranges(self, "--variance in (0, 1]", "--max-dims >= 1", "--min-cluster-share in [0, 1)",
                     "--min-cluster-size >= 2", "--stability-seeds >= 0", "clip > 0", "silhouette_sample >= 2",
                     "threads >= 1")


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
        """Share of chips HDBSCAN left unclustered (label -1)."""
        return float(np.mean(self.labels < 0)) if len(self.labels) else 0.0

    def summary(self) -> dict:
        """The numbers of ``summary.json``: k, sizes, quality scores, stability, messages."""
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
    """Standardise (clipped to +-``clip``) and PCA-reduce.

    Returns ``(reduced (N, dims), cumulative explained ratio, dims)``.
    """
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
        return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(reduced)
    if method == "gmm":
        gmm = GaussianMixture(
            n_components=k, covariance_type=config.covariance, n_init=2, reg_covar=1e-4, random_state=seed
        )
        return gmm.fit(reduced).predict(reduced)
    if method == "hdbscan":
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
    method = "kmeans" if config.method == "hdbscan" else config.method
    rows = []
    for k in ks:
        labels = fit_labels(reduced, method, k, config.seed, config)
        sil, db = _scores(reduced, labels, config)
        smallest = int(np.bincount(labels, minlength=k).min())
        gmm = GaussianMixture(
            n_components=k, covariance_type=config.covariance, reg_covar=1e-4, random_state=config.seed
        )
        bic = float(gmm.fit(reduced).bic(reduced))
        rows.append(
            {"k": k, "silhouette": sil, "davies_bouldin": db, "bic": bic, "smallest": smallest, "method": method}
        )
    return pd.DataFrame(rows)


def choose_k(table: pd.DataFrame, min_size: int = 1) -> int:
    """The k with the best silhouette among those whose smallest cluster has ``min_size`` chips.

    Silhouette alone likes to split off a pair of outliers. Ties go to the smaller k.
    """
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
    return Clustering(
        labels, distances, centres, reduced, k, config.method, table, explained, dims, sil, db, stab, xy, messages
    )


def nearest_to_centre(result: Clustering, n: int = 8, places: pd.DataFrame | None = None) -> dict[int, np.ndarray]:
    """For each cluster, the indices of its ``n`` members closest to the centre (the gallery).

    ``places``: the chips' rows in the clustering's order (chips.csv columns); given, a school appears
    once per cluster and other chips a chip apart (:func:`~schoolvision.data.places.distinct_places`).
    """
    out = {}
    frame = None if places is None else places.reset_index(drop=True)
    for c in range(result.k):
        members = np.flatnonzero(result.labels == c)
        order = members[np.argsort(result.distances[members], kind="stable")]
        out[c] = order[:n] if frame is None else np.asarray(distinct_places(frame, order, n), dtype=int)
    return out


def _scores(reduced: np.ndarray, labels: np.ndarray, config: ClusterConfig) -> tuple[float, float]:
    n_labels = len(np.unique(labels))
    if not 2 <= n_labels <= len(reduced) - 1:
        return float("nan"), float("nan")
    sample = config.silhouette_sample if len(reduced) > config.silhouette_sample else None
    sil = float(silhouette_score(reduced, labels, sample_size=sample, random_state=config.seed))
    return sil, float(davies_bouldin_score(reduced, labels))


def _round(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), nd)
