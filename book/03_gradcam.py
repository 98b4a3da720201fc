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
# # 3. Where does the model look? Grad-CAM and friends
#
# **What you will learn**
#
# - how Grad-CAM, Grad-CAM++, guided backprop and guided Grad-CAM explain a "school" call, side by side;
# - how to *measure* whether an explanation points at the school, using the true footprints of the demo
#   (pointing game, energy share, ROAD), against a random map and a centre-Gaussian map;
# - what the model looks at when it is wrong or nearly wrong.
#
# | Prerequisite | Importance | Notes |
# | --- | --- | --- |
# | [1. Data](01_data.ipynb) | Necessary | the chips in `chips_dir` |
# | [2. Training](02_training.ipynb) | Necessary | the trained model in `run_dir` |
# | Gradients and convolutional feature maps | Helpful | what a channel of the last block is |
#
# - **Time to run**: {glue:text}`07_results.ipynb::res_time_03_gradcam:s`.
# - **Writes**: `out_dir`: GeoTIFF heatmaps per method (`<method>/heatmaps/`), galleries, `explanations.csv`
#   and `faithfulness.json`. Every heatmap is on its chip's grid, so it opens in QGIS exactly over the chip.

# %% tags=["parameters"]
chips_dir = "data/chips"
run_dir = "runs/quick"
out_dir = "outputs/gradcam"
n_chips = 4
negatives = 16
seed = 0
device = "auto"

# %%
import pandas as pd
from schoolvision.book.notebook import check_claims, glue_all, require, resolve
from schoolvision.book.samples import (
    check_alignment,
    compare_methods,
    focus_chip_ids,
    pick_chips,
)
from schoolvision.commands.explain import write_galleries
from schoolvision.explain.faithfulness import beats_baseline
from schoolvision.explain.runner import ExplainConfig, explain_chips
from schoolvision.model.checkpoint import load_classifier
from schoolvision.model.device import resolve_device
from schoolvision.plotting import explain as plots
from schoolvision.plotting.theme import apply_theme

apply_theme()
chips_path, run_path = require(chips_dir, "01_data"), require(run_dir, "02_training")
out_path = resolve(out_dir)
model, meta = load_classifier(run_path, resolve_device(device))

# %% [markdown]
# ## The work
#
# ### Explain the test town
#
# Grad-CAM weights the channels of the model's last convolutional block (`model.target_layer`, the same
# layer whatever the label) by the gradient of the school score, and keeps the positive part. Should an
# input be so small that this block has fewer than `4 × 4` cells (inputs below `128` px for
# EfficientNet), the deepest block that still has `4 × 4` cells is used instead: a choice made from the model and the input
# size alone, never from labels.
# Grad-CAM++ uses second-order weights; EigenCAM needs no gradient at all. Guided backprop lets only
# positive gradients flow back to the pixels; multiplied by Grad-CAM it becomes guided Grad-CAM.
# One call explains the chips and scores each map against the school footprints. To stay within a few
# CPU minutes it takes every school chip of the test town plus the `negatives` not-school chips the model
# finds most school-like (the false positives come first); `schoolvision explain` does the whole split.

# %%
methods = ["gradcam", "gradcam++", "eigencam", "guided-backprop", "guided-gradcam"]
chip_ids = focus_chip_ids(run_path / "predictions.csv", "test", negatives=negatives)
config = ExplainConfig(
    run=run_path,
    chips_dir=chips_path,
    out_dir=out_path,
    methods=methods,
    split="test",
    chip_ids=chip_ids,
    device=device,
    seed=seed,
    overwrite=True,
)
summary = explain_chips(config)
galleries = write_galleries(summary)

# %% tags=["nbval-check-output"]
print("methods:", summary.methods)
print("table rows:", list(summary.table))
print(
    "backbone:",
    meta.backbone,
    "at",
    meta.image_size,
    "px; explained layer:",
    summary.layer,
)

# %% [markdown]
# Each heatmap is a float32 single-band GeoTIFF with the chip's CRS, transform and size (and a nodata
# value), next to a PNG overlay for a quick look:

# %% tags=["nbval-check-output"]
check_alignment(out_path, chips_path, "gradcam")

# %% [markdown]
# ### Four explanations of the same schools
#
# Correctly found schools of the test town; the white outline is the true school compound.

# %%
found = pick_chips(
    out_path / "explanations.csv", chips_path, meta.image_size, outcome="TP", n=n_chips
)
maps = compare_methods(
    model, found, ["gradcam", "gradcam++", "guided-backprop", "guided-gradcam"]
)
fig = plots.plot_methods(
    found.chips,
    maps,
    found.masks,
    found.probs,
    title="Correctly found schools (outline: true footprint)",
)

# %% [markdown]
# ### Do the maps point at the school?
#
# On correctly classified school chips: the **pointing game** (is the map's peak inside the footprint?),
# the **energy share** (how much of the positive map lies inside it) and the **ROAD drop** (how much
# P(school) falls when the most relevant pixels are imputed away; higher means the map found what the
# model uses). The random and centre-Gaussian rows are the baselines: a method is only useful where it
# clearly beats them (chips cut around schools often have the school near the middle).

# %%
glue_all(
    "ch3",
    {
        "n_found": next(iter(summary.table.values()))["n_chips"],
        "n_all": next(iter(summary.table_all_school_chips.values()))["n_chips"],
    },
)
fig = plots.plot_faithfulness(summary.table)

# %% [markdown]
# The figure scores the {glue:text}`ch3_n_found` correctly classified school chips. The table below gives
# the same scores on every school chip of the test town ({glue:text}`ch3_n_all`, the missed ones included,
# where a map may well point elsewhere), and the time each method takes per chip:

# %%
pd.DataFrame(summary.table_all_school_chips).T.round(3)

# %%
t, verdict = summary.table, beats_baseline(summary.table)
glued = glue_all(
    "ch3",
    {
        "road_gradcam": t["gradcam"]["road_drop"],
        "pointing_gradcam": t["gradcam"]["pointing_game"],
        "road_guided": t["guided-gradcam"]["road_drop"],
        "pointing_guided": t["guided-gradcam"]["pointing_game"],
        "road_centre": t["centre-gaussian"]["road_drop"],
        "pointing_centre": t["centre-gaussian"]["pointing_game"],
        "road_random": t["random"]["road_drop"],
        "useful": ", ".join(m for m, v in verdict.items() if all(v.values())) or "none",
        "pointing_only": ", ".join(
            m for m, v in verdict.items() if v["pointing_game"] and not v["road_drop"]
        )
        or "none",
        "n_fp": summary.outcomes.get("FP", 0),
        "n_negatives": negatives,
    },
)

# %% [markdown]
# **Reading the table.** The rule is the one stated above: a method counts only where it beats the
# centre-Gaussian map, which points at the school {glue:text}`ch3_pointing_centre:.2f` of the time and
# whose removal drops P(school) by {glue:text}`ch3_road_centre:.3f` (random pixels:
# {glue:text}`ch3_road_random:.3f`). On both pointing and ROAD drop the maps that pass are:
# {glue:text}`ch3_useful`. Grad-CAM points at the school {glue:text}`ch3_pointing_gradcam:.2f` of the
# time and removing what it highlights drops P(school) by {glue:text}`ch3_road_gradcam:.3f`: it marks
# what the prediction rests on. The maps that point well but fail the ROAD test are:
# {glue:text}`ch3_pointing_only`. Guided Grad-CAM points at the school {glue:text}`ch3_pointing_guided:.2f`
# of the time, yet removing its pixels drops P(school) by only {glue:text}`ch3_road_guided:.3f`, less
# than removing the centre of the chip: guided backpropagation draws sharp edges of the whole scene, and
# those edges are not what the prediction depends on. Show it for its crisp outlines, never as evidence.
#
# ### The not-school chips the model likes most
#
# The {glue:text}`ch3_n_negatives` not-school chips of the test town with the highest P(school), one chip
# per place: {glue:text}`ch3_n_fp` of them are false positives at the run's threshold, the others are
# true negatives, the model's closest calls. If the maps sit on large bright roofs or on open fields,
# those look-alikes (markets, warehouses, parks) are what the model comes closest to confusing with
# classroom blocks around a yard.

# %%
near = pick_chips(
    out_path / "explanations.csv",
    chips_path,
    meta.image_size,
    label=0,
    by="prob",
    n=n_chips,
)
near_maps = compare_methods(model, near, ["gradcam", "guided-gradcam"])
fig = plots.plot_methods(
    near.chips,
    near_maps,
    None,
    near.probs,
    title="Not-school chips with the highest P(school)",
)

# %% [markdown]
# The claims of this page, checked against its numbers (a rerun whose numbers contradict the prose
# changes these lines, and `make test` fails):

# %% tags=["checks", "nbval-check-output"]
weak_maps = (
    "a weak model (chapter 2's test AUPRC) gives weak maps: improve it first; with"
    " a good one, the true-positive gallery shows what else the model looks at"
)
ok = check_claims(
    glued,
    {
        "Grad-CAM points at the school more often than the centre baseline": (
            "ch3_pointing_gradcam > ch3_pointing_centre",
            weak_maps,
        ),
        "removing Grad-CAM's pixels drops P(school) more than removing the centre": (
            "ch3_road_gradcam > ch3_road_centre",
            weak_maps,
        ),
        "guided Grad-CAM points well but fails the ROAD test": (
            "ch3_pointing_guided > ch3_pointing_centre"
            " and ch3_road_guided < ch3_road_centre",
            "trust the method that passes ROAD in the table above; a test split"
            " with more schools makes the comparison surer",
        ),
        "the centre baseline beats random pixels on ROAD": (
            "ch3_road_centre > ch3_road_random",
            "the model looks past the chip's centre: check in chapter 1 that the"
            " school points lie on their buildings, or explain more chips",
        ),
    },
)

# %% [markdown]
# ## Summary and next
#
# - Grad-CAM-family maps are computed on the model's own last convolutional block, for the class asked
#   for, and written as GeoTIFFs aligned with their chips (`outputs/gradcam/<method>/heatmaps/`), with
#   galleries of true positives, false positives and false negatives in each method's folder.
# - The faithfulness table (`faithfulness.json`) says how often each method points at the true school and
#   how much the prediction depends on what it highlights, against two baselines.
# - Next, chapter 4 explains the same model with SHAP, which attributes the log-odds to pixels with
#   signs: evidence for and against a school.
#
# ## With real data
#
# Real labels are rarely footprints: a school given as a point is buffered into a disc, so the pointing
# game and the energy share measure "near the point", and a map on the playground next to the buildings
# may count as a miss. Read the faithfulness table against the two baselines (a method that does not beat
# the centre-Gaussian map says little on your data), and open the false-positive galleries with a mapper:
# what the model looks at on a false alarm is the fastest way to find look-alikes and label noise.
#
# ## Exercises
#
# **Exercise 1.** Explain more not-school chips: raise `negatives`. Do the false positives and the
# "highest P(school)" not-school chips change, and how does the run time grow?
#
# ````{admonition} Solution
# :class: dropdown
#
# ```bash
# papermill book/03_gradcam.ipynb /tmp/03.ipynb -p negatives 64 -p out_dir /tmp/gradcam
# ```
#
# More negatives ranked by P(school) means more candidates for the near-miss gallery: the hardest ones
# are the same (they were already the top of the ranking), new ones below them. The time grows with the
# number of chips explained; the school chips' faithfulness scores do not change.
# ````
#
# **Exercise 2.** Show more chips per gallery (`n_chips`). Which methods stay on the school footprint
# across chips, and which only on some?
#
# ````{admonition} Solution
# :class: dropdown
#
# ```bash
# papermill book/03_gradcam.ipynb /tmp/03.ipynb -p n_chips 8 -p out_dir /tmp/gradcam
# ```
#
# Only the figures change (the same chips are explained, more are drawn). The methods with the higher
# pointing-game score in the faithfulness table stay on the footprint more often; the random and
# centre-Gaussian baselines show what "by chance" looks like.
# ````
