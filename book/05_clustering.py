# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5. Clustering: which kinds of schools does the model see?
#
# **What you will learn**
#
# - how to turn every chip into the model's own description of it: the penultimate-layer feature vector;
# - how to group those vectors (standardise, PCA, k-means) and choose the number of groups *k* from the data
#   (silhouette, with Davies-Bouldin and the Gaussian mixture's BIC beside it);
# - how to read the groups: galleries with Grad-CAM overlays, what each cluster holds, where the clusters
#   lie on the map, and how stable they are;
# - how to explore the embedding interactively in the TensorBoard projector.
#
# Schools do not all look alike: a compound behind a wall, a row of classrooms with a sports field, a
# block next to dense housing. Knowing the kinds of schools the model recognises, and the kinds of
# non-schools it confuses with them, tells you where it will fail and where to collect more labels.
#
# **Prerequisites**: chapter 1 (the chips in `chips_dir`) and chapter 2 (the trained model in `run_dir`).
# Chapter 3's heatmaps are not needed: the gallery computes Grad-CAM for its few chips itself.

# %% tags=["parameters"]
chips_dir = "data/chips"
run_dir = "runs/quick"
out_dir = "outputs/clustering"
subset = "true-school"
split = "all"
method = "kmeans"
k = "auto"
k_max = 6
variance = 0.9
gallery_size = 6
device = "auto"
seed = 0

# %%
import geopandas as gpd

from schoolvision.cluster.algorithms import ClusterConfig, cluster_features, cluster_profile
from schoolvision.cluster.runner import ClusterRunConfig, cluster_chips, read_scene_preview
from schoolvision.data.sources import chips_scenes
from schoolvision.notebook import require, resolve
from schoolvision.plotting import cluster as plots
from schoolvision.plotting.theme import apply_theme

apply_theme()
chips_path, run_path, out_path = require(chips_dir, "01_data"), require(run_dir, "02_training"), resolve(out_dir)

# %% [markdown]
# ## The work
#
# ### Features
#
# The classifier ends with a pooled feature vector (1,280 numbers for EfficientNet-Lite0) followed by one
# linear layer that turns it into P(school). That vector is what the model "sees" in a chip, so chips the
# model considers alike have nearby vectors. We take it for the chips of the `subset` (here the true
# schools of every town: a few dozen on the demo) and cache it under `run_dir/features`, so clustering again
# with another *k*, method or subset does not re-run the model.
#
# `cluster_chips` does the work in one call and writes the tables, map layers and projector into `out_dir`;
# the cells below draw its result piece by piece.

# %%
config = ClusterRunConfig(
    run_path, chips_path, out_path, subset=subset, split=split, device=device, gallery_size=gallery_size, overwrite=True,
    clustering=ClusterConfig(method=method, k=k, k_max=k_max, variance=variance, seed=seed),
)
report = cluster_chips(config, progress=False)
result, table = report.result, report.table

# %%
# NBVAL_CHECK_OUTPUT
print(f"{len(table)} chips ({subset}, split {split}), {report.vectors.shape[1]}-d features")
print("chips per town:", table["scene"].value_counts().sort_index().to_dict())

# %% [markdown]
# ### Fewer dimensions: PCA
#
# The features are standardised, then PCA keeps the fewest components that explain `variance` of their
# variance. Clustering in 1,280 dimensions would mostly measure noise; a few components carry most of the
# structure.

# %%
plots.plot_pca_variance(result.explained, result.dims, variance);

# %% [markdown]
# ### Choosing k
#
# For each *k* in the range we cluster and score: the **silhouette** (how much closer a chip is to its
# own cluster than to the next one; higher is better, above 0.5 is a clear structure), the
# **Davies-Bouldin** index (lower is better) and the **BIC** of a Gaussian mixture with *k* components
# (lower is better, it penalises extra components). The chosen *k* has the best silhouette among the *k*
# whose smallest cluster (column `smallest`) holds at least 5 % of the chips: silhouette alone likes to split
# off a pair of odd chips, which is an outlier, not a kind of school.

# %%
result.k_selection.drop(columns="method").round(3)

# %%
plots.plot_k_selection(result.k_selection, result.k);
print(f"chosen k = {result.k}: silhouette {result.silhouette:.3f}, Davies-Bouldin {result.davies_bouldin:.3f}")

# %% [markdown]
# ### The clusters in two dimensions
#
# t-SNE places chips with similar features near each other (distances between far-apart groups mean
# little). Left: coloured by cluster, with some chips drawn as thumbnails; right: by true label and
# prediction (detected and missed schools, false positives).

# %%
plots.plot_embedding(result.embedding_2d, result.labels, plots.chip_outcomes(table), report.thumbnails);

# %% [markdown]
# ### What each cluster looks like
#
# One row per cluster: the chips nearest its centre, with Grad-CAM (where the model looked to call it a
# school) as a heat overlay. The caption says whether the model found the school and its P(school). If the
# rows look different (compound shapes, fields, surroundings), the model has learnt more than one kind of
# school.

# %%
plots.cluster_gallery(table, result, report.gallery, report.cams, gallery_size);

# %% [markdown]
# ### What each cluster holds
#
# Share of detected and missed schools (and false positives, when the subset includes non-schools) per
# cluster, and which towns its chips come from. A cluster that is mostly missed schools is a kind of school
# the model needs more examples of; a cluster from one town only may be a local style (or a leak of
# town-specific colour into the features).

# %%
plots.plot_composition(table);
cluster_profile(table)

# %% [markdown]
# ### On the map
#
# Every clustered chip has a footprint in its scene's CRS. `clusters.gpkg` and `clusters.geojson` in
# `out_dir` hold them with their cluster id: open them in QGIS over the scene. A GeoPackage layer has one
# CRS: layer `clusters` is in the towns' CRS when they share one (as here); towns in several CRSs put it in
# EPSG:4326 and add one exact layer per CRS (`clusters_epsg_32636`, ...). The GeoJSON is always EPSG:4326.
# Here, the town with the most clustered chips, on its own projected coordinates.

# %%
scene = table["scene"].value_counts().idxmax()
plots.plot_cluster_map(table, read_scene_preview(chips_scenes(chips_path, require=scene)[scene]), scene);

# %%
# NBVAL_CHECK_OUTPUT
footprints = gpd.read_file(out_path / "clusters.geojson")
print(f"{len(footprints)} chip footprints in {footprints.crs}, one per clustered chip: {len(footprints) == len(table)}")

# %% [markdown]
# ### How stable are the clusters?
#
# The same *k* is fitted again with other seeds; the adjusted Rand index (ARI) says how much the
# assignments agree (1 = identical, 0 = chance). Clusters that change with the seed should not be read
# as kinds of schools.

# %%
print("ARI against the reported clusters, one per extra seed:", [round(a, 3) for a in result.stability])

# %% [markdown]
# The cached features make trying another method cheap. HDBSCAN finds the number of clusters itself and
# may call outliers noise (cluster -1); if it calls everything noise it says so and suggests what to change.
# Density needs few dimensions to mean something, so we give it 10 PCA components and small clusters.

# %%
hdbscan = ClusterConfig(method="hdbscan", min_cluster_size=5, max_dims=10, k_max=k_max, seed=seed, tsne=False)
other = cluster_features(report.vectors, hdbscan, warn=False)
print(f"HDBSCAN: {other.k} clusters, {other.noise_fraction:.0%} noise", *other.messages)

# %% [markdown]
# ### Explore interactively: the TensorBoard projector
#
# `out_dir/projector` holds the features, a metadata table (chip id, cluster, label, prediction, town,
# split, P(school)) and a sprite of chip thumbnails. Run
#
# ```
# tensorboard --logdir outputs/clustering/projector
# ```
#
# open the **PROJECTOR** tab, choose *Color by: cluster* and switch between PCA, t-SNE and UMAP; hovering
# over a point shows its chip. The same outputs, with this chapter's figures as PNG, come from the command line:
#
# ```
# schoolvision cluster --run runs/quick --chips data/chips --out outputs/clustering --subset true-school --overwrite
# ```

# %%
# NBVAL_CHECK_OUTPUT
print(sorted(p.name for p in (out_path / "projector").iterdir()))

# %% [markdown]
# ## Summary and next
#
# - The penultimate-layer features group the schools into a few kinds, chosen by silhouette; the gallery,
#   composition and map say what the kinds are and where they are.
# - The stability (ARI across seeds) says how much to trust them; with few dozen chips, treat small clusters
#   as anecdotes.
# - Use `--subset predicted-school` to see what the model *calls* a school, and `--subset false-positive`
#   for the look-alikes it confuses with schools.
#
# Next, chapter 6 scans whole towns and turns chip predictions into a map of school candidates.
