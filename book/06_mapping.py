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
# # 6. Mapping: scanning a whole town for schools
#
# **What you will learn**
#
# - how a chip classifier becomes a school *detector*: sliding windows over a whole scene, blended into a
#   georeferenced probability raster;
# - how connected regions above the tuned threshold become ranked candidate schools (GeoPackage, GeoJSON);
# - how to measure a scan against known schools (recall, precision, a precision-recall curve) and read its
#   misses and false alarms with grad-CAM;
# - how to hand the result to mappers as an interactive map that works offline.
#
# **Prerequisites**: [1. Data](01_data) (the chips in `chips_dir`, whose `dataset.json` names the scenes and
# how to read them, demo towns or your own imagery) and [2. Training](02_training) (the model in `run_dir`).
# The scan here uses the *held-out test town*: the model never saw it, not even for threshold tuning (on
# imagery split by blocks rather than by scene, the first scene, set `scene` to choose another).

# %% tags=["parameters"]
chips_dir = "data/chips"
run_dir = "runs/quick"
out_dir = "outputs/mapping"
scene = ""
stride = 64
batch_size = 32
threshold = None
match_distance = 50.0
seed = 0
device = "auto"

# %%
import pandas as pd
import torch

from schoolvision.data.sources import chips_scenes, held_out_scene
from schoolvision.io.folders import ScanFolder, open_probability
from schoolvision.io.imagery import open_scene
from schoolvision.io.preview import read_band_preview, read_source_preview
from schoolvision.model.checkpoint import load_classifier
from schoolvision.model.device import resolve_device
from schoolvision.notebook import require, resolve
from schoolvision.plotting import scan as plots
from schoolvision.scan.evaluation import rejected_lookalikes, weakest_finds
from schoolvision.scan.peaks import explain_points
from schoolvision.scan.runner import ScanConfig, run_scan
from schoolvision.scan.webmap import scan_map_from_dir

chips_path, run_path, out_path = (resolve(p) for p in (chips_dir, run_dir, out_dir))
require(run_path / "best.pt", "02_training")
scan_folder = ScanFolder(out_path)
scene = scene or held_out_scene(chips_path)
sources = {scene: chips_scenes(chips_path, require=scene)[scene]}
scene_path = sources[scene].path
dev = resolve_device(device)
torch.manual_seed(seed);

# %% [markdown]
# ## The work
#
# ### Scanning the held-out town
#
# The scene is read window by window (never whole) at the ground sampling distance the model was trained
# at, in chip-size windows every `stride` pixels, so each pixel is seen by several windows. A background
# thread reads the next batches while the model scores the current one. Each window's P(school) is spread
# over its pixels with a Gaussian weight and the overlapping windows are averaged; finished rows go
# straight to a tiled GeoTIFF, so memory does not grow with the scene. The threshold is the one tuned on
# the validation town in chapter 2, unless `threshold` is set.

# %%
model, meta = load_classifier(run_path, dev)
config = ScanConfig(run=run_path, imagery=[scene_path], out_dir=out_path, stride=stride, batch_size=batch_size,
                    threshold=threshold, device=device, schools=chips_path / "schools.geojson",
                    match_distance=match_distance, overwrite=True)
summary = run_scan(config, model=model, meta=meta)
scanned = summary.scenes[0]
print(f"{scanned.windows} windows over {scanned.area_km2:.2f} km2 in {scanned.seconds:.0f} s; threshold {summary.threshold:.3f}")

# %% [markdown]
# The probability raster sits exactly on the scene's pixel grid: same CRS, transform and size, so it
# overlays the image in QGIS without any resampling.

# %%
# NBVAL_CHECK_OUTPUT
with open_probability(scanned.probability) as p, open_scene(sources[scene]) as s:
    print(p.crs == s.crs, p.transform == s.transform, p.shape == s.shape, p.dtypes[0], p.nodata)
print(scanned.crs, (scanned.height, scanned.width))

# %% [markdown]
# ### Probability over the image, and the candidates
#
# Connected regions above the threshold become candidates, ranked by their highest probability. Each is
# placed at the grad-CAM peak of the window centred on it (where, inside the window, the model saw the
# school), which is sharper than the blended raster. Known schools are outlined: green when a candidate
# lies within `match_distance` metres, red when missed.

# %%
cands = scan_folder.read_layer("candidates")
known = scan_folder.read_layer("known_schools")
plots.plot_probability(read_source_preview(sources[scene]), read_band_preview(scanned.probability), cands, known,
                       threshold=summary.threshold, title=scene);

# %%
cands.drop(columns="geometry").head(10).round(3)

# %% [markdown]
# ### How many known schools did the scan find?
#
# A known school is found when a candidate lies within `match_distance` metres of its footprint, one
# candidate per school. Recall is the share of known schools found; precision the share of candidates that
# are schools. The curve re-extracts candidates at every threshold, including ones below the tuned value.

# %%
evaluation = scan_folder.read_evaluation()
table = {k: evaluation[k] for k in ("schools", "candidates", "true_positives", "recall", "precision", "f1")}
pd.DataFrame([table])

# %%
plots.plot_pr_curve(evaluation);

# %% [markdown]
# ### Missed schools and false alarms, explained
#
# For each missed school, the chip centred on it, the model's P(school) and its grad-CAM: does the model
# look at the buildings and yard, or at something else? Then the same for candidates that match no known
# school. In real imagery some of these are schools missing from the map: the reason to scan at all.

# %%
missed = scan_folder.read_layer("missed_schools").assign(scene=scene)
chips, probs, cams = explain_points(model, meta, missed, sources, dev)
plots.plot_cases(chips, cams, [f"{name}\nP={p:.2f}" for name, p in zip(missed["name"], probs)]);

# %%
false_alarms = scan_folder.read_layer("false_alarms")
chips, probs, cams = explain_points(model, meta, false_alarms, sources, dev)
plots.plot_cases(chips, cams, [f"candidate #{r}\nP={p:.2f}" for r, p in zip(false_alarms.get("rank", []), probs)]);

# %% [markdown]
# ### The closest calls
#
# When nothing is missed and nothing is a false alarm, the margins still matter. First the found schools
# the model was least sure of (lowest candidate probability), then the strongest places the threshold
# turned down that are not known schools: the next false alarms should the threshold be lowered.

# %%
weakest = weakest_finds(cands, known)
chips, probs, cams = explain_points(model, meta, weakest, sources, dev)
plots.plot_cases(chips, cams, [f"{name}\nP={p:.2f}" for name, p in zip(weakest["school"], probs)]);

# %%
rejected = rejected_lookalikes(summary.scenes, known, summary.threshold, match_distance)
chips, probs, cams = explain_points(model, meta, rejected, sources, dev)
plots.plot_cases(chips, cams, [f"peak {m:.2f}\nP={p:.2f}" for m, p in zip(rejected["max_prob"], probs)]);

# %% [markdown]
# ### The interactive map
#
# `map.html` holds the scene, the probability layer, the candidates (click one: probability and the chip)
# and the known schools, with a layer switcher and a scale bar. Leaflet is inlined, so it opens offline.

# %%
scan_map_from_dir(out_path)

# %% [markdown]
# ## Summary and next
#
# - A scan turns the chip classifier into a map: a probability GeoTIFF on the scene's grid, ranked
#   candidates as GeoPackage/GeoJSON, an evaluation against known schools and an offline web map.
# - The same command scales out: `schoolvision scan --run RUN --imagery FOLDER... --out DIR` streams many
#   scenes or XYZ folders, and `torchrun --nproc-per-node N -m schoolvision -- scan ...` splits scenes across
#   GPUs (see the sizing notes in `schoolvision/scan/runner.py`).
# - Next: [7. Results](07_results) gathers the metrics of every chapter.
