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
# # 4. Evidence for and against: SHAP
#
# **What you will learn**
#
# - how SHAP attributes the model's school log-odds to pixels, with a sign: red pixels push towards
#   "school", blue ones away from it;
# - whether the attributions add up to the prediction (the additivity check), and why they only do so
#   approximately for the gradient explainer;
# - how SHAP compares with Grad-CAM on the same chips, in localisation and in run time.
#
# | Prerequisite | Importance | Notes |
# | --- | --- | --- |
# | [1. Data](01_data.ipynb) | Necessary | the chips in `chips_dir` |
# | [2. Training](02_training.ipynb) | Necessary | the trained model in `run_dir` |
# | [3. Grad-CAM](03_gradcam.ipynb) | Helpful | the comparison at the end; not needed to run |
# | Shapley values | Helpful | the chapter gives the idea; the `shap` documentation the theory |
#
# - **Time to run**: {glue:text}`07_results.ipynb::res_time_04_shap:s`.
# - **Writes**: `out_dir`: SHAP maps as GeoTIFFs on their chips' grids, galleries and a faithfulness table.

# %% tags=["parameters"]
chips_dir = "data/chips"
run_dir = "runs/quick"
out_dir = "outputs/shap"
n_chips = 6
n_faithfulness = 8
background_size = 16
nsamples = 64
seed = 0
device = "auto"

# %%
import pandas as pd
from schoolvision.book.notebook import check_claims, glue_all, require, resolve
from schoolvision.book.samples import compare_methods, pick_chips
from schoolvision.commands.explain import write_galleries
from schoolvision.explain.runner import ExplainConfig, explain_chips
from schoolvision.explain.shap_values import (
    background_from_split,
    deep_explainer_supported,
    explain_sample,
)
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
# ### A background from the training town
#
# SHAP explains a prediction *relative to a background*: the values sum to the model's output on the chip
# minus its average output on the background. The background is a seeded sample of training chips, half
# schools and half not, so it stands for "a typical chip".

# %% tags=["nbval-check-output"]
background = background_from_split(
    chips_path, meta.image_size, n=background_size, seed=seed
)
print("background:", tuple(background.shape))

# %% [markdown]
# ### SHAP maps of correctly found schools
#
# `shap.GradientExplainer` computes *expected gradients*: gradients of the log-odds at random points
# between the chip and a background chip, times their difference, averaged over `nsamples` draws. The
# values are summed over the three colour channels for the maps.

# %%
sample = pick_chips(
    run_path / "predictions.csv", chips_path, meta.image_size, outcome="TP", n=n_chips
)
shap_result = explain_sample(model, sample, background, nsamples=nsamples, seed=seed)
fig = plots.plot_shap(
    sample.chips,
    shap_result.maps,
    sample.masks,
    title="SHAP values (red: for school, blue: against)",
)

# %% tags=["nbval-check-output"]
print("values:", shap_result.values.shape, "maps:", shap_result.maps.shape)

# %% [markdown]
# ### Does it add up?
#
# For each chip: the sum of all SHAP values, the model output minus the background mean (log-odds), and
# the relative gap. GradientExplainer computes *expected gradients*, a Monte Carlo estimate over random
# background chips and random points on the path to them, so the sum matches only on average. The gap
# is largest for chips whose output is close to the background mean (a small denominator) and shrinks as
# `nsamples` grows, at a linear cost in time. Were the gap Monte Carlo noise alone, it would fall like
# `1/√n` for *n* samples: to half with four times the samples. The second table repeats the check
# with four times as many: the median gap goes from {glue:text}`ch4_gap:.3f` to {glue:text}`ch4_gap_more:.3f`,
# {glue:text}`ch4_gap_ratio:.0%` of its value, so in this build it {glue:text}`ch4_gap_verdict`.
# Gaps well above `10%` with the CPU default mean the maps are noisy in detail, not that the broad
# pattern is wrong.
# DeepExplainer adds up exactly (shap checks it), but only for architectures whose every layer has a
# DeepLIFT rule: the ResNets here, not the default EfficientNet-Lite (ReLU6).

# %%
pd.DataFrame(shap_result.additivity | {"chip_id": sample.chip_ids}).drop(
    columns="background_mean_output"
).round(3)

# %%
more = explain_sample(model, sample, background, nsamples=4 * nsamples, seed=seed)
gaps = {
    f"gap at {nsamples}": shap_result.additivity["relative_gap"],
    f"gap at {4 * nsamples}": more.additivity["relative_gap"],
}
medians = pd.DataFrame(gaps).abs().median()
ratio = medians.iloc[1] / medians.iloc[0]
verdict = (
    "falls at least as fast as sampling noise would: it was sampling noise"
    if ratio <= 0.4
    else "about halves, as sampling noise would"
    if ratio <= 0.6
    else "falls less than sampling noise would: the rest is the small denominator"
    " and the path integral's "
    "approximation, which more samples do not remove"
)
add = pd.DataFrame(shap_result.additivity)
gap_glue = glue_all(
    "ch4",
    {
        "gap": medians.iloc[0],
        "gap_more": medians.iloc[1],
        "gap_ratio": ratio,
        "gap_verdict": verdict,
        "n_explained": len(sample.chip_ids),
        "n_sign_flip": int(
            ((add["shap_sum"] > 0) != (add["output_minus_background"] > 0)).sum()
        ),
    },
)
pd.DataFrame(gaps, index=sample.chip_ids).round(3)

# %% [markdown]
# Over the {glue:text}`ch4_n_explained` chips (one per school), the SHAP sum has the opposite sign of
# the model's output minus the background mean for {glue:text}`ch4_n_sign_flip` of them. For such a chip
# the map's colours (for school, against school) do not even agree in total with what the model did, so
# read SHAP maps here as a rough pattern at this `nsamples`, and never one chip's colours alone.

# %% tags=["nbval-check-output"]
print(f"DeepExplainer valid for {meta.backbone}: {deep_explainer_supported(model)}")

# %% [markdown]
# ### SHAP next to Grad-CAM, on the same chips

# %%
maps = {"shap": shap_result.maps} | compare_methods(
    model, sample, ["gradcam", "guided-gradcam"]
)
fig = plots.plot_methods(
    sample.chips,
    maps,
    sample.masks,
    sample.probs,
    title="SHAP and Grad-CAM on the same schools",
)

# %% [markdown]
# ### Localisation and cost
#
# The same faithfulness table as chapter 3, for SHAP and Grad-CAM on the same correctly found schools,
# with the seconds per chip each method took here.

# %%
ids = pick_chips(
    run_path / "predictions.csv",
    chips_path,
    meta.image_size,
    outcome="TP",
    n=n_faithfulness,
).chip_ids
config = ExplainConfig(
    run=run_path,
    chips_dir=chips_path,
    out_dir=out_path,
    methods=["shap", "gradcam"],
    chip_ids=ids,
    background_size=background_size,
    shap_nsamples=nsamples,
    device=device,
    seed=seed,
    overwrite=True,
)
summary = explain_chips(config)
galleries = write_galleries(summary)
pd.DataFrame(summary.table).T.round(3)

# %%
cost_glue = glue_all(
    "ch4",
    {
        "shap_seconds": summary.table["shap"]["seconds_per_chip"],
        "gradcam_seconds": summary.table["gradcam"]["seconds_per_chip"],
        "road_shap": summary.table["shap"]["road_drop"],
        "road_gradcam": summary.table["gradcam"]["road_drop"],
        "road_centre": summary.table["centre-gaussian"]["road_drop"],
        "shap_verdict": "only just beat"
        if summary.table["shap"]["road_drop"]
        > summary.table["centre-gaussian"]["road_drop"]
        else "do not beat",
    },
)
print(
    "SHAP GradientExplainer:"
    f" {summary.table['shap']['seconds_per_chip']:.2f} s per chip"
    f" at {nsamples} samples"
)

# %% [markdown]
# **What the ROAD column says.** Removing the pixels SHAP ranks highest drops P(school) by
# {glue:text}`ch4_road_shap:.3f`, about what removing the centre of the chip does
# ({glue:text}`ch4_road_centre:.3f`); removing Grad-CAM's drops it by {glue:text}`ch4_road_gradcam:.3f`.
# By chapter 3's rule SHAP's pixel maps {glue:text}`ch4_shap_verdict` the centre baseline: they are spread
# over many small pixels of both signs, and imputing away the top-ranked ones leaves the model most of
# what it uses. Together with the additivity gaps above, this is the measured reason to trust Grad-CAM,
# not SHAP, for *where* the model looks on these chips; SHAP's value is its sign, on average, not its
# pixels.
#
# The claims of this page, checked against its numbers:

# %% tags=["checks", "nbval-check-output"]
weak_model = (
    "on a weak model (chapter 2's test AUPRC) no map finds much: improve the"
    " model first; with a good one, trust the method that passes ROAD here"
)
ok = check_claims(
    gap_glue | cost_glue,
    {
        "four times the samples shrink the median additivity gap": (
            "ch4_gap_more < ch4_gap",
            "the gap is not Monte Carlo noise alone: raise nsamples, or read"
            " SHAP's values for their sign only",
        ),
        "Grad-CAM's ROAD drop is more than twice SHAP's": (
            "ch4_road_gradcam > 2 * ch4_road_shap",
            weak_model,
        ),
        "SHAP's ROAD drop is nearer the centre baseline's than Grad-CAM's": (
            "abs(ch4_road_shap - ch4_road_centre)"
            " < abs(ch4_road_gradcam - ch4_road_shap)",
            weak_model,
        ),
        "Grad-CAM's ROAD drop is above the centre baseline's": (
            "ch4_road_gradcam > ch4_road_centre",
            weak_model,
        ),
        "SHAP costs more per chip than Grad-CAM": (
            "ch4_shap_seconds > ch4_gradcam_seconds"
        ),
    },
)

# %% [markdown]
# ## Summary and next
#
# - SHAP gives signed evidence: where the model sees school-like structure and what argues against it.
# - On these chips removing its top pixels matters about as much as removing the chip's centre, far less
#   than removing Grad-CAM's, and its values add up to the output only roughly: use it for the sign of the
#   evidence, Grad-CAM for the place.
# - Its values add up to the prediction only approximately with the gradient explainer; the gap is
#   measured, not assumed. DeepExplainer is exact but limited to ReLU networks it has rules for.
# - SHAP cost {glue:text}`ch4_shap_seconds:.2f` s per chip in the table above, Grad-CAM
#   {glue:text}`ch4_gradcam_seconds:.3f` s: use Grad-CAM to screen many chips, SHAP to study a few.
#   Next, chapter 5 clusters what the model has learned.
#
# ## With real data
#
# Use SHAP on a handful of chips a mapper disputes, not on a whole region: it costs seconds per chip. Pick
# a background that looks like the region (the seeded sample of training chips does this), since the
# values are relative to it: a background of empty fields makes every roof look like evidence. Raise
# `nsamples` until the additivity gap stops moving before you read fine detail.
#
# ## Exercises
#
# **Exercise 1.** Quadruple `nsamples`. Do the maps change, and does the additivity gap fall as fast as
# the `1/√n` rule says?
#
# ````{admonition} Solution
# :class: dropdown
#
# ```bash
# papermill book/04_shap.ipynb /tmp/04.ipynb -p nsamples 256 -p out_dir /tmp/shap
# ```
#
# The maps keep their broad pattern and lose some speckle; the time per chip grows about fourfold. Compare
# the gap's fall with the halving the rule predicts: the additivity section says how far it fell in this
# build between the chapter's `nsamples` and four times as many, and why it may fall less.
# ````
#
# **Exercise 2.** Use a larger background (`background_size`). What happens to the background mean and to
# the sign of the attributions on a school chip?
#
# ````{admonition} Solution
# :class: dropdown
#
# ```bash
# papermill book/04_shap.ipynb /tmp/04.ipynb -p background_size 64 -p out_dir /tmp/shap
# ```
#
# A larger background estimates "a typical chip" better, so the background mean moves little and the maps
# become steadier; their sign still says "more school than a typical chip" and "less".
# ````
