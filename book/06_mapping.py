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
# | Prerequisite | Importance | Notes |
# | --- | --- | --- |
# | [1. Data](01_data.ipynb) | Necessary | the chips in `chips_dir`, whose `dataset.json` names the scenes and how to read them |
# | [2. Training](02_training.ipynb) | Necessary | the model and its tuned threshold in `run_dir` |
# | [3. Grad-CAM](03_gradcam.ipynb) | Helpful | reading the misses and false alarms |
# | Rasters, vector layers, a GIS | Helpful | the outputs open in QGIS |
#
# - **Time to run**: {glue:text}`07_results.ipynb::res_time_06_mapping:s`.
# - **Writes**: `out_dir`: the probability GeoTIFF, `candidates.gpkg` (and a GeoJSON copy),
#   `evaluation.json`, `scan.json` and the offline `map.html`.
#
# The scan here uses the *held-out test town*: the model never saw it, not even for threshold tuning. On
# imagery split by blocks rather than by scene (a single orthomosaic), it scans the test blocks: the scan
# is masked to them and measured against the schools inside them only (set `scene` to scan a whole
# scene instead).

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
# building footprints for the prefilter section (any vector file or CSV);
# "": the section is skipped
mask_file = ""
mask_min_area = 150.0

# %%
import pandas as pd
import torch
from schoolvision.book.heldout import held_out_area
from schoolvision.book.notebook import check_claims, glue_all, require, resolve
from schoolvision.data.sources import chips_scenes
from schoolvision.io.folders import ScanFolder, open_probability
from schoolvision.io.imagery import open_scene
from schoolvision.io.preview import read_band_preview, read_source_preview
from schoolvision.model.checkpoint import load_classifier
from schoolvision.model.device import resolve_device
from schoolvision.plotting import scan as plots
from schoolvision.scan.evaluation import rejected_lookalikes, weakest_finds
from schoolvision.scan.peaks import explain_lookalikes, explain_points
from schoolvision.scan.runner import ScanConfig, run_scan
from schoolvision.scan.webmap import scan_map_from_dir
from schoolvision.train.novelty import FLAG_PERCENTILE

chips_path, run_path, out_path = (resolve(p) for p in (chips_dir, run_dir, out_dir))
require(run_path / "best.pt", "02_training")
scan_folder = ScanFolder(out_path)
held_out = held_out_area(chips_path, out_path.with_name(out_path.name + "_area"), scene)
scene, sources = held_out.scene, {held_out.scene: held_out.source}
print(held_out.describe())
dev = resolve_device(device)
_ = torch.manual_seed(seed)

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
config = ScanConfig(
    run=run_path,
    out_dir=out_path,
    stride=stride,
    batch_size=batch_size,
    threshold=threshold,
    device=device,
    match_distance=match_distance,
    overwrite=True,
    **held_out.scan_options(),
)
summary = run_scan(config, model=model, meta=meta)
scanned = summary.scenes[0]
print(
    f"{scanned.windows} windows over {scanned.area_km2:.2f} km2"
    f" in {scanned.seconds:.0f} s; threshold {summary.threshold:.3f}"
)

# %% [markdown]
# The probability raster sits exactly on the scene's pixel grid: same CRS, transform and size, so it
# overlays the image in QGIS without any resampling.

# %% tags=["nbval-check-output"]
with open_probability(scanned.probability) as p, open_scene(sources[scene]) as s:
    print(
        p.crs == s.crs,
        p.transform == s.transform,
        p.shape == s.shape,
        p.dtypes[0],
        p.nodata,
    )
print(scanned.crs, (scanned.height, scanned.width))

# %% [markdown]
# ### Probability over the image, and the candidates
#
# Connected regions above the threshold become candidates, ranked by their highest probability. A region
# with several peaks is split between them: where a deep valley parts them, and where they lie at least
# `min_separation` metres apart ({glue:text}`ch6_min_separation:g` m here, `scan --min-separation`; by
# default three quarters of a chip's ground width), however shallow the valley. Two schools on adjacent
# compounds are both seen by the windows between them, so the raster stays high from one to the other;
# peaks closer than that are one school. Each part is one candidate, with its own point and footprint. A
# region smaller than `min_area_m2` ({glue:text}`ch6_min_area_m2:g` m² here, `scan --min-area`) is dropped: a speck
# of the raster that just crosses the threshold, far smaller than any school building, is no school the
# model saw (the default's reason is in `schoolvision/scan/candidates.py`, `MIN_AREA_M2`). Each is
# placed at the grad-CAM peak of the window centred on it (where, inside the window, the model saw the
# school), which is sharper than the blended raster. Known schools are outlined: green when a candidate
# lies within `match_distance` metres, red when missed.

# %%
cands = scan_folder.read_layer("candidates")
known = scan_folder.read_layer("known_schools")
fig = plots.plot_probability(
    read_source_preview(sources[scene]),
    read_band_preview(scanned.probability),
    cands,
    known,
    threshold=summary.threshold,
    title=scene,
)

# %%
glue_all(
    "ch6",
    {
        "min_area_m2": config.min_area_m2,
        "min_separation": scan_folder.read_summary()["min_separation"],
        "candidates": len(cands),
    },
)
cands.drop(columns="geometry").head(10).round(3)

# %% [markdown]
# ### How many known schools did the scan find?
#
# A known school is found when a candidate lies within `match_distance` metres of its footprint, one
# candidate per school. Recall is the share of known schools found; precision the share of candidates that
# are schools. The curve re-extracts candidates at every threshold, including ones below the tuned value;
# its highest recall is the *recall ceiling*: a school missed even there is missed at every threshold.

# %%
evaluation = scan_folder.read_evaluation()
table = {
    k: evaluation[k]
    for k in (
        "schools",
        "candidates",
        "true_positives",
        "recall",
        "precision",
        "f1",
        "recall_ceiling",
    )
}
pd.DataFrame([table])

# %%
eval_glue = glue_all(
    "ch6",
    {
        "threshold": summary.threshold,
        "f1": evaluation["f1"],
        "schools": evaluation["schools"],
        "best_f1": evaluation["best_f1"],
        "recall": evaluation["recall"],
        "recall_ceiling": evaluation["recall_ceiling"],
        "best_f1_threshold": evaluation["best_f1_threshold"],
        "sweep_steps": len(evaluation["pr_curve"]),
        "best_f1_from": min(
            p["threshold"]
            for p in evaluation["pr_curve"]
            if p["f1"] == evaluation["best_f1"]
        ),
    },
)
fig = plots.plot_pr_curve(evaluation)

# %% [markdown]
# ### Which threshold?
#
# The scan used {glue:text}`ch6_threshold:.3f`, the threshold tuned on the *validation* town's chips in
# chapter 2 (F1 {glue:text}`ch6_f1:.2f` here). On this test scan the curve's best F1,
# {glue:text}`ch6_best_f1:.2f`, is reached at thresholds from {glue:text}`ch6_best_f1_from:.2f` to
# {glue:text}`ch6_best_f1_threshold:.2f`, the one the evaluation reports as best. Do not take that one.
# It is the best of {glue:text}`ch6_sweep_steps` tries scored on the same {glue:text}`ch6_schools`
# schools it would then be reported on: tuning on the test town makes its score optimistic by
# construction and leaves nothing unseen to measure the next town with. The test scan
# measures; it does not choose. Two honest ways to move the threshold:
#
# - tune it on a *validation scan*: scan the validation town (its known schools, not the test town's) and
#   pick the threshold there, on the same blended rasters and candidates the scan reports, since a
#   threshold tuned on chips is not exactly the best one for regions of a blended raster;
# - pick it for the work it creates: mappers check every candidate, so a region with few mappers and many
#   schools wants a higher threshold (fewer, surer candidates), an audit of a registry a lower one.
#
# When the two thresholds differ much across several held-out towns, the chip threshold does not carry
# over to scans, and a validation scan is worth its time.

# %% [markdown]
# ### Missed schools and false alarms, explained
#
# For each missed school, the chip centred on it, the model's P(school) and its grad-CAM. A low P, or a
# heatmap away from the buildings and yard, is the model's miss. A high P with the heatmap on the school
# is a miss of the candidates: the school sits on the slope of a stronger neighbour's high region, with
# no peak of its own in the blended raster, so no threshold and no separation gives it a candidate (the
# recall ceiling, {glue:text}`ch6_recall_ceiling:.2f` here against {glue:text}`ch6_recall:.2f` at the
# threshold, counts such misses with the model's). Then the same for candidates that match no known
# school. In real imagery some of these are schools missing from the map: the reason to scan at all.

# %%
missed = scan_folder.read_layer("missed_schools").assign(scene=scene)
chips, probs, cams = explain_points(model, meta, missed, sources, dev)
fig = plots.plot_cases(
    chips,
    cams,
    [f"{name}\nP={p:.2f}" for name, p in zip(missed["name"], probs)],
    empty="No missed school: every known school of this town has a candidate.",
)

# %%
false_alarms = scan_folder.read_layer("false_alarms")
chips, probs, cams = explain_points(model, meta, false_alarms, sources, dev)
titles = [
    f"candidate #{r}\nP={p:.2f}" for r, p in zip(false_alarms.get("rank", []), probs)
]
fig = plots.plot_cases(
    chips, cams, titles, empty="No false alarm: every candidate is a known school."
)

# %% [markdown]
# ### The closest calls
#
# Beyond the misses and false alarms, the margins matter too. First the found schools
# the model was least sure of (lowest candidate probability), then the strongest places the threshold
# turned down that are not known schools: the next false alarms should the threshold be lowered. Each
# look-alike is a different place (at least a chip apart: the weak shoulders of one blob are several
# small regions, which would otherwise show the same chip again and again), and only places whose own
# chip shows some evidence for "school" in its grad-CAM are drawn: a blank heatmap says nothing.

# %%
weakest = weakest_finds(cands, known)
chips, probs, cams = explain_points(model, meta, weakest, sources, dev)
fig = plots.plot_cases(
    chips,
    cams,
    [f"{name}\nP={p:.2f}" for name, p in zip(weakest["school"], probs)],
    empty="No known school was found, so none is a close call.",
)

# %%
rejected = rejected_lookalikes(
    summary.scenes,
    known,
    summary.threshold,
    match_distance,
    n=18,
    separation=meta.chip_size * meta.gsd,
    min_area_m2=config.min_area_m2,
)
rejected, chips, probs, cams = explain_lookalikes(
    model, meta, rejected, sources, dev, n=6
)
titles = [f"peak {m:.2f}\nP={p:.2f}" for m, p in zip(rejected["max_prob"], probs)]
fig = plots.plot_cases(
    chips,
    cams,
    titles,
    empty="Nothing below the threshold, away from the known schools,"
    " looks like a school.",
)

# %% [markdown]
# ### The interactive map
#
# `map.html` holds the scene, the probability layer, the candidates (click one: probability and the chip)
# and the known schools, with a layer switcher and a scale bar. Leaflet is inlined, so it opens offline.

# %%
scan_map_from_dir(out_path)

# %% [markdown]
# ### Where the model is out of its depth: the trust map
#
# At the end of training the run summarised the embeddings of its training chips (`novelty.npz`, the
# features the classifier's head reads), with the same novelty score on the held-out towns (validation
# and test), home imagery it never trained on, as the reference. The scan scores each window's
# embedding, from the same forward pass as P(school), as the percentile of those home chips it exceeds,
# into `<scene>_novelty.tif` on the probability raster's grid (and a `novelty` field on every
# candidate). A window above the home {glue:text}`ch6_flag_percentile:g`th percentile is flagged.
# This town is one of the held-out towns, so about {glue:text}`ch6_flag_expected:g`% is expected; a
# scene where many more are flagged gets a warning line in `scan.json`: imagery unlike the training
# data, such as another region's, where the scores are not to be trusted until reviewed.

# %%
fig = plots.plot_novelty(
    read_source_preview(sources[scene]), read_band_preview(scanned.novelty), title=scene
)
print(
    f"{scanned.novelty_share:.1%} of the windows of {scene}"
    " look unlike the training data"
)
glue_all(
    "ch6", {"flag_percentile": FLAG_PERCENTILE, "flag_expected": 100 - FLAG_PERCENTILE}
)

# %% [markdown]
# ### Skipping empty land: a footprint prefilter
#
# Most of a country is fields, bush and desert, and a school is buildings. `scan --mask FILE` takes
# building footprints (any vector file, or a CSV with a WKT or longitude/latitude column: the form of
# Google's and Microsoft's open building datasets) and skips every window farther than `--mask-distance`
# metres (default: half a chip) from all of them: such a window is neither read nor scored, and its
# pixels stay nodata in the probability raster. The demo writes the footprint of every roof it draws to
# `buildings.geojson`, which the book's profiles give as `mask_file`; with your own data, give your
# area's footprints (without a `mask_file` this section is skipped and says so). First, how many of this
# town's windows would a mask of every roof skip? The mask can say before anything is scanned
# (`ScanMask.read(path).count(source, meta)`). Then the same town is scanned again with the mask.

# %%
from schoolvision.book.prefilter import prefilter_study

mask_path = (
    require(mask_file, "a building footprints file (mask_file)") if mask_file else None
)
prefilter_path = out_path.with_name(out_path.name + "_prefilter")
study = prefilter_study(
    config,
    summary,
    sources[scene],
    mask_path,
    mask_min_area,
    prefilter_path,
    model=model,
    meta=meta,
)
print(study.note)
_ = glue_all("ch6", study.figures)

# %% [markdown]
# A mask of every roof skips only {glue:text}`ch6_every_roof_share:.0%` of the
# {glue:text}`ch6_scan_windows` windows: the demo towns are built up from edge to edge, and a house
# stands near nearly every window. What sets a school apart
# from houses is size: classroom blocks are long, houses small. `--mask-min-area` leaves out footprints
# smaller than that many square metres; with `mask_min_area` ({glue:text}`ch6_mask_min_area:g` m²) only
# buildings the size of a classroom block, a clinic or a warehouse remain. The same town, scanned again
# with that mask:

# %% tags=["nbval-check-output"]
print("the same known schools found:", study.same_schools_found)

# %% [markdown]
# The mask skipped {glue:text}`ch6_mask_share:.0%` of the windows, and the windows took
# {glue:text}`ch6_mask_speedup:.1f` times less time; it found {glue:text}`ch6_mask_found` known schools,
# the scan of every window {glue:text}`ch6_all_found`. On a country, where most windows are far from any
# building, the saving is larger. The price: a school missing from the footprints (new buildings, roofs
# under trees), or whose buildings are all below the area limit, is never scanned. Measure a masked scan
# against known schools before trusting it, and keep the distance at least half a chip, so that every
# window that sees part of a building is scored.

# %% [markdown]
# ### Scaling out: one scene, one unit of work
#
# A country is thousands of scenes. `scan` treats each scene as one unit of work: its probability
# GeoTIFF, its candidates (`scenes/<scene>.candidates.gpkg`) and, written last, a small done-record
# (`scenes/<scene>.done.json`: the source file's size and date, the run's checksum, the options). Every
# file appears whole or not at all, so a scan killed at any point loses only the scenes in flight, and
# `scan --resume` continues it in the same folder, skipping every scene whose done-record matches (a
# changed run or option is refused, with one line saying what changed). Candidates are merged across
# scene borders at the end, with a spatial index.
#
# Where the units run is the *engine*: `--engine local` (this process, the default) or `--engine ray`
# ([Ray](https://docs.ray.io): one actor per GPU, or per `--cpus-per-worker` CPUs, holds the model;
# an idle actor takes the next scene, and a scene whose actor dies is retried). Without
# `--ray-address` a Ray instance is started on this machine for the scan and stopped after it. Here
# two demo towns are scanned both ways, then once more with `--resume`. To keep it quick, a window
# every two chips (gaps between them) and no grad-CAM placement: the point here is the files, not the
# schools.

# %%
from dataclasses import replace

from schoolvision.scan.merge import same_outputs

towns = [s.path for s in chips_scenes(chips_path).values()][:2]  # two towns: quick
quick = replace(
    config,
    imagery=towns,
    stride=2 * meta.chip_size,
    cam_peaks=False,
    make_map=False,
    progress=False,
    schools=None,
    mask=None,
    mask_distance=None,
)
engine_dirs = {e: out_path.with_name(f"{out_path.name}_{e}") for e in ("local", "ray")}
by_engine = {
    e: run_scan(replace(quick, out_dir=path, engine=e))
    for e, path in engine_dirs.items()
}
resumed = run_scan(
    replace(
        quick, out_dir=engine_dirs["ray"], engine="ray", resume=True, overwrite=False
    )
)
glue_all(
    "ch6",
    {
        "ray_scenes": len(towns),
        "ray_done": by_engine["ray"].scene_counts["done"],
        "resume_skipped": resumed.scene_counts["skipped"],
        "resume_done": resumed.scene_counts["done"],
    },
)

# %% tags=["nbval-check-output"]
print(same_outputs(*engine_dirs.values()))
print(resumed.scene_counts)

# %% [markdown]
# Ray scanned the {glue:text}`ch6_ray_scenes` towns into the same files as the local engine, byte for
# byte ({glue:text}`ch6_ray_done` scenes done); the rerun with `--resume` skipped
# {glue:text}`ch6_resume_skipped` of them and scanned {glue:text}`ch6_resume_done`, without starting Ray.
#
# **On a cluster.** Nothing of schoolvision's: start Ray the way Ray documents it, then point the scan at
# it. On machines you reach by SSH, run `ray start --head` on one and `ray start --address HEAD:6379` on
# the others; on a cloud, `ray up cluster.yaml` starts them for you; on Kubernetes, KubeRay's `RayCluster`.
# Then, from a node of the cluster: `schoolvision scan --engine ray --ray-address auto --run RUN --imagery
# DIR --out DIR` (or `--ray-address HEAD:6379`). Every node must see the run, the imagery and `--out` at
# the same paths (a shared or network file system), and if the driver dies, `--resume` picks the scan up.
# How many machines for how long: `benchmarks/README.md`, *Sizing a country*.

# %% [markdown]
# ## Limitations
#
# - **One small test town.** The scores above count {glue:text}`ch6_schools` known schools: one school
#   more or less found moves recall by a large step, so read them as a check that the pipeline works,
#   not as the accuracy to expect elsewhere. Synthetic towns are also easier than real imagery.
# - **The threshold.** It comes from chips of another town (see *Which threshold?* above); on a new region,
#   measure a scan on known schools before trusting it, and re-tune on a validation scan, never on the
#   scan you report.
# - **Known schools are incomplete.** In real data a "false alarm" may be a school missing from the list,
#   so precision against the list is a lower bound, and the candidates that match nothing are exactly the
#   ones worth a look.
# - **What to do with candidates.** A candidate is a place for a person to check, not a school: hand them
#   to mappers ranked by probability, with the map and the chip, and feed their decisions back (the review
#   workflow: `schoolvision review build`, then `review import`, which turns rejected candidates into hard
#   negatives for the next training run).
# - **How long a larger area takes.** The time grows with the area at the run's resolution, over the
#   stride squared. This build scanned at the rate below; the scan's sizing notes (`benchmarks/README.md`,
#   and `benchmarks/scan_throughput.py` to measure a machine) say how to plan a district or a country and
#   how to spread it over machines (`--engine ray`).

# %%
district_km2 = 1000  # an illustration: the area of a district
km2_per_hour = scanned.area_km2 / scanned.seconds * 3600
glue_all(
    "ch6",
    {
        "km2_per_hour": km2_per_hour,
        "district_km2": district_km2,
        "district_hours": district_km2 / km2_per_hour,
    },
)
print(f"{km2_per_hour:.0f} km2 per hour of windows on this machine")

# %% [markdown]
# At this build's rate, {glue:text}`ch6_km2_per_hour:.0f` km² per hour on this machine (windows only),
# a district of {glue:text}`ch6_district_km2` km² takes about {glue:text}`ch6_district_hours:.1f` hours of
# scanning; a country is the sum of its districts, divided by the number of machines that share it.

# %% [markdown]
# The claims of this page, checked against its numbers:

# %% tags=["checks", "nbval-check-output"]
ok = check_claims(
    eval_glue,
    {
        "the recall ceiling is at least the recall at the threshold": (
            "ch6_recall_ceiling >= ch6_recall"
        ),
        "the sweep's best F1 is at least the F1 at the tuned threshold": (
            "ch6_best_f1 >= ch6_f1"
        ),
        "the scan finds most known schools": (
            "ch6_recall >= 0.5",
            "on the map, look at the missed schools (red): with candidates a little"
            " way off, the list's points are misplaced (raise match_distance);"
            " with none near, the model has not learnt your schools: label more"
            " (chapter 1), or review the candidates and fine-tune (chapter 8)",
        ),
    },
)

# %% [markdown]
# ## Summary and next
#
# - A scan turns the chip classifier into a map: a probability GeoTIFF on the scene's grid, ranked
#   candidates as GeoPackage/GeoJSON, an evaluation against known schools and an offline web map.
# - The same command scales out: `schoolvision scan --run RUN --imagery FOLDER... --out DIR` streams many
#   scenes or XYZ folders, one resumable unit each (`--resume`), and `--engine ray` spreads them over
#   the GPUs and machines of a Ray cluster (sizing: `benchmarks/README.md`).
# - Next: [chapter 8](08_review.ipynb) takes the scan to a new region, where a person reviews its
#   candidates and the model learns from the decisions; the [results page](07_results.ipynb) then
#   gathers the figures of every chapter.
#
# ## With real data
#
# Scan a region whose schools you partly know first, and measure the scan on them before you trust it
# elsewhere: the threshold tuned on validation chips is a starting point, not a law, and a region with
# other roofs or another resolution moves it. Hand the candidates to mappers ranked by probability, with
# the map: every candidate is a place to look at, not a school. Estimate the work before a large region:
# the scan's time grows with the area (pixels at the run's resolution) divided by the stride squared.
#
# For a large region, pass building footprints as the prefilter: set `mask_file` to Google's Open
# Buildings CSV for the area (its `geometry` column holds WKT polygons; its `area_in_meters` column lets
# you pre-select large buildings), Microsoft's footprints or an OSM buildings extract, in any CRS.
# `ScanMask.read(path).count(source, meta)` says how many windows it saves before you scan.
#
# ## Exercises
#
# **Exercise 1.** Scan with a coarser `stride` (a whole chip instead of half). What happens to the time,
# the probability raster and the recall?
#
# ````{admonition} Solution
# :class: dropdown
#
# ```bash
# papermill book/06_mapping.ipynb /tmp/06.ipynb -p stride 128 -p out_dir /tmp/mapping_128
# ```
#
# A quarter of the windows: the scan is about four times faster, the raster blockier, and a small school
# that falls between window centres can be missed, so recall may drop. Half a chip is the usual compromise.
# ````
#
# **Exercise 2.** Loosen the matching: a larger `match_distance`. Which numbers change, and why is that
# not a better model?
#
# ````{admonition} Solution
# :class: dropdown
#
# ```bash
# papermill book/06_mapping.ipynb /tmp/06.ipynb -p match_distance 150 \
#     -p out_dir /tmp/mapping_150
# ```
#
# The probability raster and the candidates are the same; only the evaluation changes: more candidates
# count as found schools, so precision and recall can rise. The model did not improve, the rule did: state
# the matching distance with every scan score.
# ````
