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
# **Prerequisites**: chapter 1 (`chips_dir`) and chapter 2 (`run_dir`). Chapter 3 is not needed.

# %% tags=["parameters"]
chips_dir = "data/chips"
run_dir = "runs/quick"
out_dir = "outputs/shap"
n_chips = 3
n_faithfulness = 8
background_size = 16
nsamples = 64
seed = 0
device = "auto"

# %%
import pandas as pd

from schoolvision.commands.explain import write_galleries
from schoolvision.explain.runner import ExplainConfig, explain_chips
from schoolvision.explain.samples import compare_methods, pick_chips
from schoolvision.explain.shap_values import background_from_split, deep_explainer_supported, explain_sample
from schoolvision.model.checkpoint import load_classifier
from schoolvision.model.device import resolve_device
from schoolvision.notebook import require, resolve
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

# %%
background = background_from_split(chips_path, meta.image_size, n=background_size, seed=seed)
# NBVAL_CHECK_OUTPUT
print("background:", tuple(background.shape))

# %% [markdown]
# ### SHAP maps of correctly found schools
#
# `shap.GradientExplainer` computes *expected gradients*: gradients of the log-odds at random points
# between the chip and a background chip, times their difference, averaged over `nsamples` draws. The
# values are summed over the three colour channels for the maps.

# %%
sample = pick_chips(run_path / "predictions.csv", chips_path, meta.image_size, outcome="TP", n=n_chips)
shap_result = explain_sample(model, sample, background, nsamples=nsamples, seed=seed)
plots.plot_shap(sample.chips, shap_result.maps, sample.masks, title="SHAP values (red: for school, blue: against)");

# %%
# NBVAL_CHECK_OUTPUT
print("values:", shap_result.values.shape, "maps:", shap_result.maps.shape)

# %% [markdown]
# ### Does it add up?
#
# For each chip: the sum of all SHAP values, the model output minus the background mean (log-odds), and
# the relative gap. GradientExplainer computes *expected gradients*, a Monte Carlo estimate over random
# background chips and random points on the path to them, so the sum matches only on average. The gap
# is largest for chips whose output is close to the background mean (a small denominator) and shrinks as
# `nsamples` grows (the noise falls like 1/sqrt(nsamples)), at a linear cost in time: with the CPU
# default, gaps well above 10 % are expected, and they mean the maps are noisy in detail, not that the
# broad pattern is wrong. The second table repeats the check with four times as many samples.
# DeepExplainer adds up exactly (shap checks it), but only for architectures whose every layer has a
# DeepLIFT rule: the ResNets here, not the default EfficientNet-Lite (ReLU6).

# %%
pd.DataFrame(shap_result.additivity | {"chip_id": sample.chip_ids}).drop(columns="background_mean_output").round(3)

# %%
more = explain_sample(model, sample, background, nsamples=4 * nsamples, seed=seed)
gaps = {f"gap at {nsamples}": shap_result.additivity["relative_gap"], f"gap at {4 * nsamples}": more.additivity["relative_gap"]}
pd.DataFrame(gaps, index=sample.chip_ids).round(3)

# %%
# NBVAL_CHECK_OUTPUT
print(f"DeepExplainer valid for {meta.backbone}: {deep_explainer_supported(model)}")

# %% [markdown]
# ### SHAP next to Grad-CAM, on the same chips

# %%
maps = {"shap": shap_result.maps} | compare_methods(model, sample, ["gradcam", "guided-gradcam"])
plots.plot_methods(sample.chips, maps, sample.masks, sample.probs, title="SHAP and Grad-CAM on the same schools");

# %% [markdown]
# ### Localisation and cost
#
# The same faithfulness table as chapter 3, for SHAP and Grad-CAM on the same correctly found schools,
# with the seconds per chip each method took here.

# %%
ids = pick_chips(run_path / "predictions.csv", chips_path, meta.image_size, outcome="TP", n=n_faithfulness).chip_ids
config = ExplainConfig(run=run_path, chips_dir=chips_path, out_dir=out_path, methods=["shap", "gradcam"], chip_ids=ids,
                       background_size=background_size, shap_nsamples=nsamples, device=device, seed=seed, overwrite=True)
summary = explain_chips(config)
galleries = write_galleries(summary)
pd.DataFrame(summary.table).T.round(3)

# %%
print(f"SHAP GradientExplainer: {shap_result.seconds_per_chip:.2f} s per chip at {nsamples} samples")

# %% [markdown]
# ## Summary and next
#
# - SHAP gives signed evidence: where the model sees school-like structure and what argues against it.
# - Its values add up to the prediction only approximately with the gradient explainer; the gap is
#   measured, not assumed. DeepExplainer is exact but limited to ReLU networks it has rules for.
# - SHAP costs seconds per chip where Grad-CAM costs a fraction of a forward pass: use Grad-CAM to
#   screen many chips, SHAP to study a few. Next, chapter 5 clusters what the model has learned.
