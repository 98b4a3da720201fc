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
# # 2. Training a school classifier
#
# **What you will learn**
#
# - how to fine-tune an ImageNet-pretrained EfficientNet-Lite0 on the demo chips with one call, `fit`;
# - why the model is chosen by validation **AUPRC** (not accuracy), and how the decision threshold is
#   tuned on validation for F1 (or F2, to favour recall) and the probabilities calibrated by temperature;
# - how to read the run folder: learning curves, the precision-recall curve, the confusion matrix,
#   calibration, the most and least convincing test chips, and TensorBoard.
#
# **Prerequisites**: [chapter 1](01_data.ipynb) made the chips in `chips_dir`. This chapter writes the
# run folder `run_dir` (`best.pt`, `metrics.json`, `predictions.csv`, ...) that every later chapter reads.

# %% tags=["parameters"]
chips_dir = "data/chips"
run_dir = "runs/quick"
backbone = "efficientnet_lite0"
pretrained = True
epochs = 6
batch_size = 32
image_size = 224
lr = 0.001
seed = 0
device = "auto"

# %%
from schoolvision.io.folders import RunFolder
from schoolvision.notebook import require, resolve
from schoolvision.plotting import training as plots
from schoolvision.plotting.theme import apply_theme
from schoolvision.train.evaluation import extreme_chips
from schoolvision.train.fit import TrainConfig, fit

apply_theme()
chips_path = require(chips_dir, "01_data")
run_path = resolve(run_dir)
run = RunFolder(run_path)

# %% [markdown]
# ## The work
#
# ### Train
#
# `fit` trains with AdamW, a one-epoch linear warm-up then a cosine decay of the learning rate, the
# class imbalance handled by a loss weighted by inverse class frequency, and augmentations that respect
# overhead imagery (flips, right-angle rotations, mild zoom and colour). After every epoch it scores the
# validation town and keeps the model with the best AUPRC in `best.pt`; `last.pt` holds everything needed
# to continue an interrupted run (`schoolvision train ... --resume`). At the end it fits a temperature and
# tunes the threshold on validation, then scores the held-out test town once.
#
# The quick profile trains for six epochs on the CPU (about 14 minutes on two cores). Its 128 px chips are
# enlarged to 224 px, the input size the ImageNet weights were trained at: at the chips' own 128 px the
# pretrained filters see every roof and wall at the wrong scale, and the smallest schools of the test town
# are missed (test AUPRC 0.979 and 8 of 9 schools found by the scan in chapter 6, against 1.000 and 9 of 9
# at 224 px). The GPU profile (`book/params/gpu.yaml`) uses larger chips and 30 epochs. The same call runs on either.

# %%
config = TrainConfig(
    chips_dir=chips_path, out_dir=run_path, backbone=backbone, pretrained=pretrained, epochs=epochs,
    batch_size=batch_size, image_size=image_size, lr=lr, seed=seed, device=device, overwrite=True,
)
metrics = fit(config, figures=plots.tensorboard_figures)

# %% [markdown]
# ### What the run used
#
# The chip counts per split and class come from the chips folder; `metrics.json` holds the test metrics
# (plus the validation ones under `val`) with bootstrap 95% intervals for F1 and AUPRC.

# %%
# NBVAL_CHECK_OUTPUT
run_config = run.read_config()
print(run_config["resolved"]["counts"])
print(sorted(metrics))

# %%
print({k: round(metrics[k], 3) for k in ("auprc", "f1", "f2", "precision", "recall", "roc_auc", "ece", "threshold", "temperature")})
print("95% bootstrap:", {k: [round(v, 3) for v in metrics["bootstrap"][k]] for k in ("auprc", "f1")})

# %% [markdown]
# ### Learning curves
#
# Training and validation loss, F1 and AUPRC per epoch, and the learning rate (warm-up then cosine).
# Validation is a different town from training, so a gap here is the spatial generalisation gap.

# %%
plots.plot_learning_curves(run.read_history());

# %% [markdown]
# ### Precision and recall on the held-out town
#
# The red dot is the threshold tuned on validation. Schools are rare, so the precision-recall curve
# (and its area, AUPRC) says more than accuracy: a model that calls nothing a school is already
# accurate on most chips.

# %%
predictions = run.read_predictions()
plots.plot_pr_curve(predictions, metrics["threshold"], split="test");

# %%
plots.plot_confusion_matrix(predictions, metrics["threshold"], split="test");

# %% [markdown]
# ### Calibration
#
# After temperature scaling, a P(school) of 0.8 should mean that about 80% of such chips are schools.
# Bars on the diagonal are well calibrated; the title gives the expected calibration error (ECE).

# %%
plots.plot_reliability(predictions, split="test");

# %% [markdown]
# ### The most and least convincing test chips
#
# Confident and right, then the largest errors: these show what the model has not learnt yet
# (often look-alikes such as clinics, markets or fields next to houses).

# %%
best = extreme_chips(predictions, chips_path, split="test", n=8)
plots.plot_extreme_chips(*best, metrics["threshold"], title="best test chips");

# %%
worst = extreme_chips(predictions, chips_path, split="test", n=8, worst=True)
plots.plot_extreme_chips(*worst, metrics["threshold"], title="worst test chips");

# %% [markdown]
# ### TensorBoard
#
# The run folder has TensorBoard events: per-epoch curves, PR curves and confusion matrices for
# validation and test, a grid of test chips with their probabilities, and the hyper-parameters with
# the final metrics (the figures are those `plots.tensorboard_figures`, passed to `fit` above, draws).
# From the repository root:
#
# ```bash
# tensorboard --logdir runs/quick/tensorboard
# ```
#
# The same run from the command line (add `--resume` to continue an interrupted one, or prefix
# `torchrun --nproc_per_node=N` to train on several GPUs):
#
# ```bash
# schoolvision train --chips data/chips --out runs/quick --epochs 6 --image-size 224
# schoolvision evaluate --run runs/quick --chips data/chips
# ```
#
# ## Summary and next
#
# One call trained, selected, calibrated and scored a classifier, and the run folder records what it
# did. The next chapter, [grad-CAM](03_gradcam.ipynb), opens `best.pt` to show *where* in a chip the
# model sees a school.
