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
# | Prerequisite | Importance | Notes |
# | --- | --- | --- |
# | [1. Data](01_data.ipynb) | Necessary | the chips in `chips_dir` |
# | Convolutional networks and fine-tuning | Helpful | what a pretrained backbone is; the chapter says the rest |
# | Precision, recall and F1 | Helpful | the metrics of a rare class |
#
# - **Time to run**: {glue:text}`07_results.ipynb::res_time_02_training:s` (the longest chapter: training).
# - **Writes**: the run folder `run_dir` (`best.pt`, `last.pt`, `metrics.json`, `predictions.csv`,
#   `history.csv`, TensorBoard events) that every later chapter reads.

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
# spatial cross-validation folds when the test split holds fewer than 10 schools; 0: never
folds = 3
# training runs measured by benchmarks/training_spread.py: widen the intervals
training_spread = "book/params/training_spread.json"

# %%
from dataclasses import replace

from schoolvision.book.notebook import check_claims, glue_all, require, resolve
from schoolvision.book.small_data import small_data_folds, small_data_notice
from schoolvision.book.training_spread import (
    measured_spread,
    printed_intervals,
    run_recipe,
)
from schoolvision.commands.train import command_line
from schoolvision.io.folders import ChipsFolder, RunFolder
from schoolvision.plotting import training as plots
from schoolvision.plotting.theme import apply_theme
from schoolvision.train.evaluation import extreme_chips
from schoolvision.train.fit import TrainConfig, fit
from schoolvision.train.folds import count_schools, cross_validate, fold_lines

apply_theme()
chips_path = require(chips_dir, "01_data")
run_path = resolve(run_dir)
run = RunFolder(run_path)
glue_all("ch2", {"epochs": epochs, "image_size": image_size})

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
# This build trains for {glue:text}`ch2_epochs` epochs ({glue:text}`07_results.ipynb::res_training_minutes:.1f`
# minutes of the execution record). The chips are enlarged to `image_size` ({glue:text}`ch2_image_size` px),
# the input size the ImageNet weights were trained at: at the chips' own size the pretrained filters see
# every roof and wall at the wrong scale, and the smallest schools of the test town are missed
# (Exercise 1 at the end of the chapter trains at the chips' own size to show it). The GPU profile
# (`book/params/gpu.yaml`) uses larger chips and more epochs. The same call runs on either.
#
# The backbone's stem and first two stages (edges, colours and textures, at the two highest resolutions)
# keep their ImageNet weights (`freeze_stem`, on by default whenever training starts from learnt weights):
# they transfer to overhead imagery almost unchanged, and not back-propagating through them makes a
# training step on a CPU about twice as fast. The run's `config.json` records what was resolved for this
# machine under `resolved`: device, memory layout, precision and the frozen stem.

# %%
config = TrainConfig(
    chips_dir=chips_path,
    out_dir=run_path,
    backbone=backbone,
    pretrained=pretrained,
    epochs=epochs,
    batch_size=batch_size,
    image_size=image_size,
    lr=lr,
    seed=seed,
    device=device,
    overwrite=True,
)
metrics = fit(config, figures=plots.tensorboard_figures)

# %% [markdown]
# ### What the run used
#
# First, how much the test can say. With fewer than ten schools in the test split (the limit is
# `SMALL_TEST_SCHOOLS` in `schoolvision/book/small_data.py`), one school more or less found moves every metric
# by a large step, and the chapter says so here, before any number; the bootstrap interval then comes
# first. The chip counts per split and class come from the chips folder; `metrics.json` holds the test
# metrics (plus the validation ones under `val`) with bootstrap intervals for F1 and AUPRC (confidence level
# {glue:text}`ch2_boot_level:.0%`). The bootstrap resamples *schools*, not chips: the several overlapping
# chips of one school are one piece of evidence, so they are drawn together (and `not_school` chips by
# ground cells, whose neighbouring windows overlap too); resampling chips one by one would treat them as
# independent and give intervals that are too narrow.

# %% tags=["nbval-check-output"]
n_folds = small_data_folds(chips_path, folds)
notice = small_data_notice(count_schools(chips_path), n_folds)
print(notice or f"{count_schools(chips_path)} schools in the test split")
run_config = run.read_config()
print(run_config["resolved"]["counts"])
print(sorted(metrics))

# %%
print(
    "95% bootstrap:",
    {k: [round(v, 3) for v in metrics["bootstrap"][k]] for k in ("auprc", "f1")},
)
print(
    {
        k: round(metrics[k], 3)
        for k in (
            "auprc",
            "f1",
            "f2",
            "precision",
            "recall",
            "roc_auc",
            "ece",
            "threshold",
            "temperature",
        )
    }
)
glue_all("ch2", {"boot_level": metrics["bootstrap"]["level"]})

# %% [markdown]
# ### Cross-validation on small data
#
# On small data the chapter also trains `folds` models on spatial folds of *every* chip (whole scenes,
# or ground blocks of one mosaic; a school's chips stay in one fold), each tested on its own fold. Every
# chip is then scored once by a model that never saw it, so all the schools count, not only the test
# split's. The folds' models go to a sibling of `run_dir` (`_cv`); the later chapters use the single run
# above. On the command line: `schoolvision train --folds 3`.

# %%
cv_path = run_path.with_name(run_path.name + "_cv")
cv = cross_validate(replace(config, out_dir=cv_path), n_folds) if n_folds else None
skipped = "no cross-validation: the test split holds enough schools (or folds < 2)"
print("\n".join(fold_lines(cv)) if cv else skipped)

# %% [markdown]
# ### Learning curves
#
# Training and validation loss, F1 and AUPRC per epoch, and the learning rate (warm-up then cosine).
# Validation is a different town from training, so a gap here is the spatial generalisation gap.

# %%
fig = plots.plot_learning_curves(run.read_history())

# %% [markdown]
# ### Precision and recall on the held-out town
#
# The red dot is the threshold tuned on validation. Schools are rare, so the precision-recall curve
# (and its area, AUPRC) says more than accuracy: a model that calls nothing a school is already
# accurate on most chips.

# %%
predictions = run.read_predictions()
fig = plots.plot_pr_curve(predictions, metrics["threshold"], split="test")

# %%
fig = plots.plot_confusion_matrix(predictions, metrics["threshold"], split="test")

# %% [markdown]
# ### Calibration
#
# After temperature scaling, a P(school) of `0.8` should mean that about `80%` of such chips are schools.
# Bars on the diagonal are well calibrated; the title gives the expected calibration error (ECE). The number
# on each bar is how many chips it holds: nearly all sit in the two end bins, and a middle bar of a handful
# of chips can stand far from the diagonal by chance alone, so read the bars together with their counts.

# %%
fig = plots.plot_reliability(predictions, split="test")

# %% [markdown]
# ### The most and least convincing test chips
#
# Confident and right, then the largest errors: these show what the model has not learnt yet
# (often look-alikes such as clinics, markets or fields next to houses).

# %%
best = extreme_chips(predictions, chips_path, split="test", n=8)
fig = plots.plot_extreme_chips(*best, metrics["threshold"], title="best test chips")

# %%
worst = extreme_chips(predictions, chips_path, split="test", n=8, worst=True)
fig = plots.plot_extreme_chips(*worst, metrics["threshold"], title="worst test chips")

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
# The same run from the command line, built from this chapter's parameters (options left at their
# default are not written; add `--resume` to continue an interrupted run, or prefix
# `torchrun --nproc_per_node=N` to train on several GPUs):

# %%
print(command_line(config, chips=chips_dir, out=run_dir))
print(f"schoolvision evaluate --run {run_dir} --chips {chips_dir}")

# %% [markdown]
# ## Limitations

# %%
test_chips = ChipsFolder(chips_path).read_index("test")
test_schools = test_chips.loc[test_chips["label"] == "school", "school_name"]
spread, why = measured_spread(
    training_spread and resolve(training_spread), chips_path, run_recipe(run_config)
)
shown = printed_intervals(metrics, spread, why)
limits = glue_all(
    "ch2",
    {
        "test_auprc": metrics["auprc"],
        "test_f1": metrics["f1"],
        "auprc_lo": shown.auprc[0],
        "auprc_hi": shown.auprc[1],
        "f1_lo": shown.f1[0],
        "f1_hi": shown.f1[1],
        "covers": shown.covers,
        "school_share": float((test_chips["label"] == "school").mean()),
        "test_schools": test_schools.nunique(),
        "test_school_chips": len(test_schools),
        "training_precision": metrics.get("training_precision", "fp32"),
    },
)
print(
    f"{test_schools.nunique()} schools in {len(test_schools)} school chips"
    " of the test town"
)
print(f"intervals: {shown.covers}")

# %% [markdown]
# - **A saturated test says little.** On the held-out town the test AUPRC is {glue:text}`ch2_test_auprc:.3f`,
#   with an interval from {glue:text}`ch2_auprc_lo:.3f` to {glue:text}`ch2_auprc_hi:.3f`, measured on
#   {glue:text}`ch2_test_schools` schools ({glue:text}`ch2_test_school_chips` school chips). When the
#   interval reaches the top of the scale, the test can no longer tell a good model from a better one: the
#   synthetic towns are easier than real imagery (clean roofs, no haze, every school drawn to a rule), so a
#   perfect score here is a saturated test, not a solved problem. Compare models on harder data (real
#   imagery, the other demo regions) before choosing between them.
# - **What the intervals cover.** F1 {glue:text}`ch2_test_f1:.3f` lies in [{glue:text}`ch2_f1_lo:.3f`,
#   {glue:text}`ch2_f1_hi:.3f`] and AUPRC in [{glue:text}`ch2_auprc_lo:.3f`, {glue:text}`ch2_auprc_hi:.3f`]:
#   {glue:text}`ch2_covers`. A bootstrap of one run resamples the test town's schools (and `256 m` cells of
#   its non-school chips), so it says only *which chips the test town happened to hold*. Training again
#   moves the metrics further: another seed, or this seed on another machine, whose float rounding differs
#   and is carried far by six epochs. So where `benchmarks/training_spread.py` has trained this recipe on
#   these chips with several seeds (the file `training_spread`), the printed intervals pool the bootstrap
#   resamples of all those runs. On your own data there is no such measurement and they cover the test
#   sample only: train again with another `seed` to see how far a run moves. Neither covers the variation
#   between towns, which chapter 8 shows is larger still. The recipe is the same on every CPU: this run
#   trained in {glue:text}`ch2_training_precision` (`metrics.json` records it; float32 unless
#   `--precision bf16` is asked for).
# - **Unlabelled schools become `not_school` chips.** A chip is `school` only where the schools file has a
#   school. A school missing from the file gives `not_school` chips that show a school: the model is
#   penalised for seeing it, the tuned threshold moves up, and precision is understated by every such
#   "false positive". In the demo every school is drawn and labelled; real school lists are not complete.
#   Look at the worst test chips above with a mapper before trusting precision, and fix the labels
#   (the review workflow, `schoolvision review`, turns a mapper's decisions into labels).

# %% [markdown]
# The claims of this page, checked against its numbers:

# %% tags=["checks", "nbval-check-output"]
ok = check_claims(
    limits,
    {
        "the test AUPRC lies in its printed interval": (
            "ch2_auprc_lo <= ch2_test_auprc <= ch2_auprc_hi"
        ),
        "the test F1 lies in its printed interval": (
            "ch2_f1_lo <= ch2_test_f1 <= ch2_f1_hi"
        ),
        "the model ranks schools above chance (AUPRC above the school share)": (
            "ch2_test_auprc > ch2_school_share",
            "check chapter 1's school chips show schools (points on their buildings,"
            " point_buffer_m about a school's radius), then train longer (epochs) or"
            " label more schools",
        ),
    },
)

# %% [markdown]
# ## Summary and next
#
# One call trained, selected, calibrated and scored a classifier, and the run folder records what it
# did. The next chapter, [grad-CAM](03_gradcam.ipynb), opens `best.pt` to show *where* in a chip the
# model sees a school.
#
# ## With real data
#
# Real imagery is harder than these towns: expect lower and noisier metrics, and read the bootstrap
# intervals before the point values (an interval that reaches the top means the test set is too small or
# too easy to rank models). On a small area the test split holds a handful of schools: the chapter then
# says so and cross-validates (`folds`), and the out-of-fold metrics, which count every school, are the
# ones to quote. Train longer on a GPU (`book/params/gpu.yaml`), keep `image_size` at the
# backbone's pretraining size, and choose the threshold for the job: F1 balances errors, F2 favours recall
# (a mapper reviewing candidates can afford false alarms more than missed schools). The threshold is tuned
# on validation and must stay so: picking it on the test town would report a score no new region gets.
#
# ## Exercises
#
# **Exercise 1.** Train at the chips' own size instead of the pretraining size: `image_size` equal to
# `chip_size`. What happens to the test AUPRC and to the worst test chips?
#
# ````{admonition} Solution
# :class: dropdown
#
# Train into a scratch run folder (the book's run stays as it is; on two CPU cores this takes about as long
# as the chapter, a little less):
#
# ```bash
# papermill book/02_training.ipynb /tmp/02.ipynb \
#     -p image_size 128 -p run_dir /tmp/run_128
# ```
#
# The pretrained filters now see roofs and walls at the wrong scale: the test AUPRC drops and the worst
# chips are the smallest schools. Scanning with that run into a scratch folder too (chapter 6,
# `-p run_dir /tmp/run_128 -p out_dir /tmp/mapping_128`) shows the schools it misses.
# ````
#
# **Exercise 2.** Train for a single epoch (`epochs`). Is the model already useful, and what do the
# learning curves and the reliability diagram show?
#
# ````{admonition} Solution
# :class: dropdown
#
# ```bash
# papermill book/02_training.ipynb /tmp/02.ipynb -p epochs 1 -p run_dir /tmp/run_1
# ```
#
# One epoch is the warm-up only: the curves have one point, validation AUPRC is lower and the temperature
# fitted afterwards has more to correct, so calibration before scaling is worse. Pretrained features make
# even this run far better than chance, which is why the AUPRC (not accuracy) is the number to watch.
# ````
