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
# # Results of this build
#
# **What you will learn**: the key numbers of the book you are reading, in one place: the classifier's
# test metrics, how faithful its explanations are, what the clustering found and how well the scene scan
# recovers the schools of the held-out town. Nothing on this page is typed by hand: it is read from the
# JSON files the chapters wrote, so it always describes the current build.
#
# | Prerequisite | Importance | Notes |
# | --- | --- | --- |
# | [2. Training](02_training.ipynb) | Necessary | `metrics.json` of the run in `run_dir` |
# | [3. Grad-CAM](03_gradcam.ipynb) | Helpful | `faithfulness.json` in `gradcam_dir` |
# | [5. Clustering](05_clustering.ipynb) | Helpful | `summary.json` in `clustering_dir` |
# | [6. Mapping](06_mapping.ipynb) | Helpful | `evaluation.json` in `mapping_dir` |
# | [8. Review and retrain](08_review.ipynb) | Helpful | `review_round.json` in `review_dir` |
#
# - **Time to run**: seconds; it only reads files (a missing one is listed, not hidden).
# - **Writes**: nothing. It reads `_build/execution.json`, the seconds per chapter that `make book`
#   records, and gives every chapter header its time to run.

# %% tags=["parameters"]
run_dir = "runs/quick"
gradcam_dir = "outputs/gradcam"
clustering_dir = "outputs/clustering"
mapping_dir = "outputs/mapping"
review_dir = "outputs/review"

# %%
from IPython.display import Markdown
from schoolvision.book.notebook import (
    check_claims,
    glue_runtimes,
    read_execution_record,
    repo_root,
    resolve,
    toc_chapters,
)
from schoolvision.book.results import REFERENCE, default_sources, gather_results

sources = default_sources(
    resolve(run_dir),
    resolve(gradcam_dir),
    resolve(clustering_dir),
    resolve(mapping_dir),
    resolve(review_dir),
)
results = gather_results(sources, root=repo_root())
record = read_execution_record()
runtimes = glue_runtimes("res", toc_chapters(), record)

# %% [markdown]
# ## The work
#
# ### Headline figures
#
# Test metrics are on the held-out town (chips), at the decision threshold chosen on the validation town.
# Scan numbers count schools found as candidate points within the matching distance of a footprint.
# The book took {glue:text}`res_total_minutes:.1f` minutes to execute with the {glue:text}`res_profile`
# profile, {glue:text}`res_training_minutes:.1f` of them training (`_build/execution.json`).

# %%
Markdown(results.headline_markdown())

# %%
print("\n".join(results.missing) or "Every results file of this build was found.")

# %% [markdown]
# Every number of the results files listed above, with the file it comes from, and the seconds per chapter of this
# build, are one click away:

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Every number of this build", "code_prompt_hide": "Hide them"}
Markdown(results.to_markdown())

# %% tags=["hide-cell"] mystnb={"code_prompt_show": "Seconds per chapter", "code_prompt_hide": "Hide them"}
record

# %% [markdown]
# ### Explanation faithfulness
#
# One row per explanation method (chapter 3): higher `pointing_game` and `energy_share` (heat inside the
# footprint) mean the heat falls on the school; `road_drop` is how much the model's confidence falls when
# the most highlighted pixels are removed (ROAD: remove and debias), higher meaning the map points at
# what the model uses; `seconds_per_chip` is what the method costs.

# %%
results.table("explanation faithfulness").round(3)

# %% [markdown]
# ### Next to the reference project
#
# The project this book follows published these figures for its chip classifier on real imagery of
# Colombian schools. **They come from a different data set** (real tiles, other resolution, other
# labels) and are shown only to say what a useful classifier looks like, not as a like-for-like
# comparison: the synthetic towns here are smaller and easier, and the quick CPU profile trains briefly
# (a saturated test on synthetic towns is not a solved problem).

# %%
REFERENCE

# %% [markdown]
# The claims of this page, checked against its numbers:

# %% tags=["checks", "nbval-check-output"]
ok = check_claims(
    {
        "missing": len(results.missing),
        "schools": results.value("scan", "schools"),
        "found": results.value("scan", "true_positives"),
        "precision_used": results.value("test metrics", "training_precision"),
    },
    {
        "every results file of this build was found": (
            "missing == 0",
            "run the chapters named in the list of files not found, with the"
            " same parameters as this page's",
        ),
        "the scan found at most the schools the town holds": "found <= schools",
        "the run records the arithmetic it was trained in": (
            "precision_used in ('fp32', 'bf16', 'fp16')"
        ),
    },
)

# %% [markdown]
# ## Summary
#
# - The numbers above come from the results files of this build (`metrics.json`, `faithfulness.json`,
#   `summary.json`, `evaluation.json`, `review_round.json`); rerun a chapter (or `make book`) and this
#   page follows.
# - For larger chips, more epochs and more towns, build with the GPU profile: `make book PROFILE=gpu`.
# - To map schools in your own imagery, start again at [chapter 1](01_data.ipynb) with your GeoTIFFs or
#   tiles and your school GeoJSON, then scan with [chapter 6](06_mapping.ipynb).
#
# ## With real data
#
# On your own imagery this page is the build's report card: keep it next to the run folder. Read the
# test AUPRC with its bootstrap interval in `metrics.json` (an interval that touches the top means the test
# town is too easy to tell models apart), the scan's recall against the schools you know, and the number
# of candidates a mapper has to review per school found. Numbers from a different region or resolution do
# not carry over: rebuild the book on a labelled sample of the region you will scan.
#
# ## Exercises
#
# **Exercise 1.** This page reads whatever folders its parameters name. Point it at the outputs of an
# exercise of another chapter (for example a scan with another `stride` written to a scratch folder) and
# compare the headline table with the one above.
#
# ````{admonition} Solution
# :class: dropdown
#
# Scan with another stride into a scratch folder, then read that folder here:
#
# ```bash
# papermill book/06_mapping.ipynb /tmp/06.ipynb -p stride 128 -p out_dir /tmp/mapping_128
# papermill book/07_results.ipynb /tmp/07.ipynb -p mapping_dir /tmp/mapping_128
# ```
#
# Only the scan rows change (the other files are the book's own). A coarser stride scores fewer windows:
# the scan is faster, and a school may fall between window centres, so recall can drop.
# ````
