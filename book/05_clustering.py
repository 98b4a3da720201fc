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
# | Prerequisite | Importance | Notes |
# | --- | --- | --- |
# | [1. Data](01_data.ipynb) | Necessary | the chips in `chips_dir` |
# | [2. Training](02_training.ipynb) | Necessary | the trained model in `run_dir` |
# | [3. Grad-CAM](03_gradcam.ipynb) | Helpful | how to read the gallery's overlays (computed here) |
# | PCA and k-means | Helpful | the chapter says what each step does |
#
# - **Time to run**: {glue:text}`07_results.ipynb::res_time_05_clustering:s`.
# - **Writes**: `out_dir`: the clusters as tables and map layers (`clusters.gpkg`, `clusters.geojson`),
#   `summary.json`, galleries and a TensorBoard projector; the features are cached under `run_dir/features`.

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
from dataclasses import replace

import geopandas as gpd
from schoolvision.book.notebook import check_claims, glue_all, require, resolve
from schoolvision.book.verdicts import (
    cluster_profile,
    framing_profile,
    framing_verdict,
    structure_verdict,
)
from schoolvision.cluster.algorithms import ClusterConfig, cluster_features
from schoolvision.cluster.runner import (
    ClusterRunConfig,
    cluster_chips,
    read_scene_preview,
    recluster_view,
)
from schoolvision.data.sources import chips_scenes
from schoolvision.plotting import cluster as plots
from schoolvision.plotting.theme import apply_theme

apply_theme()
chips_path, run_path, out_path = (
    require(chips_dir, "01_data"),
    require(run_dir, "02_training"),
    resolve(out_dir),
)

# %% [markdown]
# ## The work
#
# ### Features
#
# The classifier ends with a pooled feature vector ({glue:text}`ch5_feature_dim` numbers for this backbone) followed by one
# linear layer that turns it into P(school). That vector is what the model "sees" in a chip, so chips the
# model considers alike have nearby vectors. We take it for the chips of the `subset` (here the true
# schools of every town: {glue:text}`ch5_n_chips` chips in this build) and cache it under `run_dir/features`, so clustering again
# with another *k*, method or subset does not re-run the model.
#
# `cluster_chips` does the work in one call and writes the tables, map layers and projector into `out_dir`;
# the cells below draw its result piece by piece.

# %%
config = ClusterRunConfig(
    run_path,
    chips_path,
    out_path,
    subset=subset,
    split=split,
    device=device,
    gallery_size=gallery_size,
    overwrite=True,
    clustering=ClusterConfig(
        method=method, k=k, k_max=k_max, variance=variance, seed=seed
    ),
)
report = cluster_chips(config, progress=False)
result, table = report.result, report.table
glue_all("ch5", {"feature_dim": report.vectors.shape[1], "n_chips": len(table)})

# %% tags=["nbval-check-output"]
print(
    f"{len(table)} chips ({subset}, split {split}),"
    f" {report.vectors.shape[1]}-d features"
)
print("chips per town:", table["scene"].value_counts().sort_index().to_dict())

# %% [markdown]
# ### Fewer dimensions: PCA
#
# The features are standardised, then PCA keeps the fewest components that explain `variance` of their
# variance, but never more than `max_dims` ({glue:text}`ch5_max_dims` by default). Clustering in
# {glue:text}`ch5_feature_dim` dimensions would mostly measure noise; a few components carry most of the
# structure. Here PCA kept {glue:text}`ch5_pca_dims` components, which explain
# {glue:text}`ch5_pca_reached:.1%` of the variance: {glue:text}`ch5_pca_reason`.

# %%
pca_glue = glue_all(
    "ch5",
    {
        "pca_dims": result.dims,
        "pca_reached": float(result.explained[result.dims - 1]),
        "variance": variance,
        "max_dims": config.clustering.max_dims,
        "pca_reason": "the cap was reached before the variance target"
        if float(result.explained[result.dims - 1]) < variance
        else "the variance target was reached",
    },
)
fig = plots.plot_pca_variance(result.explained, result.dims, variance)

# %% [markdown]
# ### Choosing k
#
# For each *k* in the range we cluster and score: the **silhouette** (how much closer a chip is to its
# own cluster than to the next one; higher is better, above `0.5` is a clear structure), the
# **Davies-Bouldin** index (lower is better) and the **BIC** of a Gaussian mixture with *k* components
# (lower is better, it penalises extra components). The chosen *k* has the best silhouette among the *k*
# whose smallest cluster (column `smallest`) holds at least `5%` of the chips: silhouette alone likes to split
# off a pair of odd chips, which is an outlier, not a kind of school.

# %%
result.k_selection.drop(columns="method").round(3)

# %%
fig = plots.plot_k_selection(result.k_selection, result.k)
print(
    f"chosen k = {result.k}: silhouette {result.silhouette:.3f},"
    f" Davies-Bouldin {result.davies_bouldin:.3f}"
)

# %% [markdown]
# ### The clusters in two dimensions
#
# t-SNE places chips with similar features near each other (distances between far-apart groups mean
# little). Left: coloured by cluster, with some chips drawn as thumbnails; right: by true label and
# prediction (detected and missed schools, false positives).

# %%
fig = plots.plot_embedding(
    result.embedding_2d, result.labels, plots.chip_outcomes(table), report.thumbnails
)

# %% [markdown]
# ### What each cluster looks like
#
# One row per cluster: the chips nearest its centre, with Grad-CAM (where the model looked to call it a
# school) as a heat overlay. The caption says whether the model found the school and its P(school). Before
# reading the rows as kinds of school, look at how each chip frames its school: a grid window may cut the
# school at its edge or hold it in a corner, a centred view holds it near the middle, and the features
# see that difference as clearly as a difference in the school itself.

# %%
fig = plots.cluster_gallery(table, result, report.gallery, report.cams, gallery_size)

# %% [markdown]
# ### What the clusters separate: chip framing
#
# For each cluster: the share of centred views (`centred`), of chips that hold the whole school
# (`whole_school`: nearly all of its footprint inside the chip, `WHOLE_SCHOOL` in
# `schoolvision/cluster/algorithms.py`) and the mean share of the school's footprint inside the chip.

# %%
framing = framing_profile(table)
glue_all(
    "ch5",
    {
        "k": result.k,
        "silhouette": result.silhouette,
        "structure": structure_verdict(result.silhouette),
        "framing_verdict": framing_verdict(framing),
    },
)
framing

# %% [markdown]
# The {glue:text}`ch5_k` clusters {glue:text}`ch5_framing_verdict`. Their silhouette,
# {glue:text}`ch5_silhouette:.3f`, says {glue:text}`ch5_structure`. To take framing out, cluster only the
# centred views, where every school sits near the middle of its chip (within the views' small jitter; a
# school larger than the chip still fills it). The training towns have them (`chips --centred-splits`).
# The features are in memory, so this costs no model pass; `schoolvision cluster --view centred` does the
# same from the command line. The gallery shows the chips nearest each new centre, as thumbnails.

# %%
centred_table, centred, thumbs = recluster_view(
    report, "centred", replace(config.clustering, tsne=False)
)
glue_all(
    "ch5",
    {
        "centred_chips": len(centred_table),
        "centred_k": centred.k,
        "centred_silhouette": centred.silhouette,
        "centred_structure": structure_verdict(centred.silhouette),
    },
)
fig = plots.cluster_gallery(centred_table, centred, thumbs, None, gallery_size)

# %% [markdown]
# On the {glue:text}`ch5_centred_chips` centred views the chosen *k* is {glue:text}`ch5_centred_k`, at
# silhouette {glue:text}`ch5_centred_silhouette:.3f`: {glue:text}`ch5_centred_structure`. Whatever groups
# remain here are not the school's place in the chip (its size still shows); whether they are kinds of
# school a mapper would name is for the gallery to show, not the score.

# %% [markdown]
# ### What each cluster holds
#
# Share of detected and missed schools (and false positives, when the subset includes non-schools) per
# cluster, and which towns its chips come from. A cluster that is mostly missed schools is a kind of school
# the model needs more examples of; a cluster from one town only may be a local style (or a leak of
# town-specific colour into the features).

# %%
held_out = table[table["split"] != "train"]
split_glue = glue_all(
    "ch5",
    {
        "train_share": float((table["split"] == "train").mean()),
        "held_out_chips": len(held_out),
        "held_out_detected": float((held_out["prediction"] == "school").mean())
        if len(held_out)
        else float("nan"),
    },
)
fig = plots.plot_composition(table)
cluster_profile(table)

# %% [markdown]
# Read the "detected" shares with care: {glue:text}`ch5_train_share:.0%` of these chips come from the
# training towns, which the model was fitted on, so they are detected almost by construction. Of the
# {glue:text}`ch5_held_out_chips` chips from the validation and test towns, the model calls
# {glue:text}`ch5_held_out_detected:.0%` schools: that is the share that says something about new places
# (`clusters.csv` has each chip's `split`).

# %% [markdown]
# ### On the map
#
# Every clustered chip has a footprint in its scene's CRS. `clusters.gpkg` and `clusters.geojson` in
# `out_dir` hold them with their cluster id: open them in QGIS over the scene. A GeoPackage layer has one
# CRS: layer `clusters` is in the towns' CRS when they all share one; towns in several CRSs put it in
# EPSG:4326 and add one exact layer per CRS (`clusters_epsg_32636`, ...). The GeoJSON is always EPSG:4326.
# Here the chips come from {glue:text}`ch5_towns` towns in {glue:text}`ch5_crs_count` CRSs, so layer
# `clusters` is in {glue:text}`ch5_layer_crs` and the GeoPackage has {glue:text}`ch5_gpkg_layers` layers.
# Below, the town with the most clustered chips, on its own projected coordinates.

# %%
layers = gpd.list_layers(out_path / "clusters.gpkg")["name"]
glue_all(
    "ch5",
    {
        "towns": table["scene"].nunique(),
        "crs_count": table["crs"].nunique(),
        "gpkg_layers": len(layers),
        "layer_crs": gpd.read_file(
            out_path / "clusters.gpkg", layer="clusters", rows=1
        ).crs.to_string(),
    },
)
scene = table["scene"].value_counts().idxmax()
fig = plots.plot_cluster_map(
    table, read_scene_preview(chips_scenes(chips_path, require=scene)[scene]), scene
)

# %% tags=["nbval-check-output"]
footprints = gpd.read_file(out_path / "clusters.geojson")
print(
    f"{len(footprints)} chip footprints in {footprints.crs},"
    f" one per clustered chip: {len(footprints) == len(table)}"
)

# %% [markdown]
# The claims of this page, checked against its numbers:

# %% tags=["checks", "nbval-check-output"]
ok = check_claims(
    pca_glue | split_glue | {"n_chips": len(table), "footprints": len(footprints)},
    {
        "PCA keeps at most max_dims components": "ch5_pca_dims <= ch5_max_dims",
        "the variance target is met unless the cap is reached": (
            "ch5_pca_reached >= ch5_variance or ch5_pca_dims == ch5_max_dims"
        ),
        "some clustered chips come from the training towns": "ch5_train_share > 0",
        "one map footprint per clustered chip": "footprints == n_chips",
    },
)

# %% [markdown]
# ### How stable are the clusters?
#
# The same *k* is fitted again with other seeds; the adjusted Rand index (ARI) says how much the
# assignments agree (`1` = identical, `0` = chance). Clusters that change with the seed should not be read
# as kinds of schools.

# %%
print(
    "ARI against the reported clusters, one per extra seed:",
    [round(a, 3) for a in result.stability],
)

# %% [markdown]
# The cached features make trying another method cheap. HDBSCAN finds the number of clusters itself and
# may call outliers noise (cluster `-1`); if it calls everything noise it says so and suggests what to change.
# Density needs few dimensions to mean something, so we give it few PCA components (`max_dims=10`) and
# small clusters (`min_cluster_size=5`).

# %%
hdbscan = ClusterConfig(
    method="hdbscan",
    min_cluster_size=5,
    max_dims=10,
    k_max=k_max,
    seed=seed,
    tsne=False,
)
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
# schoolvision cluster --run runs/quick --chips data/chips --out outputs/clustering \
#     --subset true-school --overwrite
# ```

# %% tags=["nbval-check-output"]
print(sorted(p.name for p in (out_path / "projector").iterdir()))

# %% [markdown]
# ## Summary and next
#
# - The penultimate-layer features of every school chip were cut into {glue:text}`ch5_k` clusters at
#   silhouette {glue:text}`ch5_silhouette:.3f` ({glue:text}`ch5_structure`); the framing table says what
#   they separate, and the centred views alone show what is left once framing is taken out.
# - The stability (ARI across seeds) says how much to trust them; with {glue:text}`ch5_n_chips` chips, treat small clusters
#   as anecdotes.
# - Use `--subset predicted-school` to see what the model *calls* a school, and `--subset false-positive`
#   for the look-alikes it confuses with schools.
#
# Next, chapter 6 scans whole towns and turns chip predictions into a map of school candidates.
#
# ## With real data
#
# Cluster the schools of the region you will scan, then look at the galleries before the scores: a
# cluster is only useful when a person can name it (walled compounds, schools with a field, schools in
# dense housing). Clusters that follow the chip framing or the imagery's acquisition (a cut-off school, a
# darker flight line) say more about the data than about schools. Small clusters of false positives
# (`subset = "false-positive"`) are the look-alikes to label as negatives next.
#
# ## Exercises
#
# **Exercise 1.** Cluster what the model *calls* a school instead of the true schools: `subset` set to
# `predicted-school`. Which new kinds appear?
#
# ````{admonition} Solution
# :class: dropdown
#
# ```bash
# papermill book/05_clustering.ipynb /tmp/05.ipynb -p subset predicted-school \
#     -p out_dir /tmp/clustering
# ```
#
# The predicted schools are the true positives plus the false positives; a look-alike that fools the model
# either joins a school cluster (it looks like that kind of school to the model) or forms its own small
# cluster, which the gallery shows. The features are cached, so the rerun is quick.
# ````
#
# **Exercise 2.** Force the number of clusters: `k` set to a fixed number instead of `auto`. How do the
# silhouette and the stability change?
#
# ````{admonition} Solution
# :class: dropdown
#
# ```bash
# papermill book/05_clustering.ipynb /tmp/05.ipynb -p k 4 -p out_dir /tmp/clustering
# ```
#
# Away from the chosen *k* the silhouette falls and the clusters change more with the seed (lower ARI):
# the extra clusters split groups the data does not separate, so they should not be read as kinds.
# ````
