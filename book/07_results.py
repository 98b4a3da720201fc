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
# # 7. Results of this build
#
# **What you will learn**: the key numbers of the book you are reading, in one place: the classifier's
# test metrics, how faithful its explanations are, what the clustering found and how well the scene scan
# recovers the schools of the held-out town. Nothing on this page is typed by hand: it is read from the
# JSON files the chapters wrote, so it always describes the current build.
#
# **Prerequisites**: chapters 1 to 6 (each writes one of the files below; a missing file is listed, not
# hidden).

# %% tags=["parameters"]
run_dir = "runs/quick"
gradcam_dir = "outputs/gradcam"
clustering_dir = "outputs/clustering"
mapping_dir = "outputs/mapping"

# %%
from IPython.display import Markdown

from schoolvision.notebook import repo_root, resolve
from schoolvision.results import REFERENCE, default_sources, gather_results

sources = default_sources(resolve(run_dir), resolve(gradcam_dir), resolve(clustering_dir), resolve(mapping_dir))
results = gather_results(sources, root=repo_root())

# %% [markdown]
# ## The work
#
# ### Key numbers
#
# Test metrics are on the held-out town (chips), at the decision threshold chosen on the validation town.
# Scan numbers count schools found as candidate points within the matching distance of a footprint.

# %%
Markdown(results.to_markdown())

# %%
print("\n".join(results.missing) or "Every results file of this build was found.")

# %% [markdown]
# ### Explanation faithfulness
#
# One row per explanation method (chapter 3): higher pointing-game and energy-inside-footprint scores
# mean the heat falls on the school; deletion / insertion scores say how much the model's confidence
# depends on the highlighted pixels.

# %%
results.table("explanation faithfulness").round(3)

# %% [markdown]
# ### Next to the reference project
#
# The project this book follows published these figures for its chip classifier on real imagery of
# Colombian schools. **They come from a different data set** (real tiles, other resolution, other
# labels) and are shown only to say what a useful classifier looks like, not as a like-for-like
# comparison: the synthetic towns here are smaller, and the quick CPU profile trains for a few minutes.

# %%
REFERENCE

# %% [markdown]
# ## Summary
#
# - The numbers above come from `metrics.json`, `faithfulness.json`, `summary.json` and `evaluation.json`
#   of this build; rerun a chapter (or `make book`) and this page follows.
# - For larger chips, more epochs and more towns, build with the GPU profile: `make book PROFILE=gpu`.
# - To map schools in your own imagery, start again at [chapter 1](01_data.ipynb) with your GeoTIFFs or
#   tiles and your school GeoJSON, then scan with [chapter 6](06_mapping.ipynb).
