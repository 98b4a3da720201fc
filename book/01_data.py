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
# # 1. Data: synthetic towns and labelled chips
#
# **What you will learn**
#
# - what the embedded demo imagery looks like: georeferenced towns with schools and look-alikes;
# - how school footprints become labelled image *chips* (`school` / `not_school`);
# - why the train / validation / test split is spatial (whole towns), not random.
#
# **Prerequisites**: none. This chapter makes the data every later chapter reads:
# the towns in `data_dir` and the chips in `chips_dir`. On your own imagery, replace the first step by
# your GeoTIFFs or XYZ tiles and your school GeoJSON (see the [introduction](intro.md)).

# %% tags=["parameters"]
data_dir = "data/demo"
chips_dir = "data/chips"
towns = 6
size = 1536
gsd = 1.0
chip_size = 128
stride = 64
seed = 0

# %%
import geopandas as gpd
import pandas as pd
import rasterio

from schoolvision.data.chips import ChipConfig, make_chips
from schoolvision.data.dataset import ChipDataset
from schoolvision.data.synthetic import make_demo
from schoolvision.io.folders import ChipsFolder
from schoolvision.io.preview import read_rgb_preview, read_rgb_zooms
from schoolvision.notebook import resolve
from schoolvision.plotting import data as plots
from schoolvision.plotting.theme import apply_theme

apply_theme()
data_path, chips_path = resolve(data_dir), resolve(chips_dir)

# %% [markdown]
# ## The work
#
# ### Synthetic towns
#
# The machines that build this book cannot download imagery, so the project draws its own: towns at
# 1 m per pixel in a real UTM projection, with fields, trees, water, roads, houses with varied roofs and
# shadows, and schools (classroom blocks around a yard, often a sports field and a wall). Hard negatives,
# buildings and fields that are *not* schools (warehouses, markets, clinics, parks, dense housing), make the
# task need spatial structure rather than colour. The same seed always gives byte-identical files.

# %%
make_demo(data_path, towns=towns, seed=seed, size=size, gsd=gsd, overwrite=True)
scenes = sorted((data_path / "scenes").glob("*.tif"))
schools = gpd.read_file(data_path / "schools.geojson")

# %%
# NBVAL_CHECK_OUTPUT
with rasterio.open(scenes[0]) as src:
    print(f"{len(scenes)} towns, e.g. {scenes[0].name}: {src.count} bands {src.dtypes[0]}, "
          f"{src.width} x {src.height} px, {src.res[0]:g} m/px, {src.crs}")
print(f"{len(schools)} school footprints in {schools.crs}, columns: {sorted(schools.columns)}")

# %% [markdown]
# Every town, with the school footprints of `schools.geojson` drawn over it. The axes are the scene's
# own projected coordinates: what you see here is where QGIS puts it.

# %%
plots.plot_towns({p.stem: read_rgb_preview(p, max_side=512) for p in scenes}, schools);

# %%
town = read_rgb_preview(scenes[0], max_side=1400)
plots.plot_scene(town, schools, scenes[0].stem);

# %% [markdown]
# Close-ups at full resolution: schools first, then look-alikes a model must learn to reject
# (from `landmarks.geojson`, when the demo writes one).

# %%
local = plots.schools_in(schools, town).head(3)
plots.plot_zooms(read_rgb_zooms(scenes[0], local.geometry), local, [f"school: {n}" for n in local["name"]]);

# %%
landmarks_file = data_path / "landmarks.geojson"
landmarks = gpd.read_file(landmarks_file) if landmarks_file.exists() else schools.iloc[:0]
hard = plots.schools_in(landmarks, town).groupby("kind").head(1).head(4) if len(landmarks) else landmarks
print(f"hard negatives in {scenes[0].stem}: {sorted(set(hard.get('kind', [])))}")

# %%
zooms = read_rgb_zooms(scenes[0], hard.geometry)
plots.plot_zooms(zooms, hard, [f"not a school: {k}" for k in hard["kind"]]) if len(hard) else None;

# %% [markdown]
# ### From footprints to labelled chips
#
# `make_chips` slides a `chip_size` window with step `stride` over each town (resampled to `gsd` metres
# per pixel), adds a few jittered windows centred on each school, and labels a chip `school` when it holds
# enough of a footprint, `not_school` when it touches none; slivers are left out. Each chip is a small
# GeoTIFF with its own CRS and transform, indexed in `chips.csv`. The same call (or
# `schoolvision chips --imagery ... --schools ... --out ...`) takes your own GeoTIFFs or XYZ tile folders.

# %%
config = ChipConfig(chip_size=chip_size, stride=stride, gsd=gsd, seed=seed)
summary = make_chips([data_path / "scenes"], data_path / "schools.geojson", chips_path, config, overwrite=True)
chips = ChipsFolder(chips_path).read_index()

# %% [markdown]
# Class balance per split. `not_school` chips are under-sampled in the training split only; validation
# and test keep every chip so that their metrics describe a real scan.

# %%
# NBVAL_CHECK_OUTPUT
pd.crosstab(chips["split"], chips["label"], margins=True).loc[["train", "val", "test", "All"]]

# %%
examples, images = ChipDataset(chips_path, split="train").sample_by_class(per_class=6, seed=seed)
plots.plot_chip_examples(examples, images, title="Chips of the train split, by class");

# %% [markdown]
# ### A spatial split
#
# Neighbouring chips overlap (the stride is half a chip), so a random split would put almost the same
# pixels in train and test. Whole towns go to one split instead: the last town is the test town, the one
# before it validation, the rest training.

# %%
plots.plot_split_map(chips, {p.stem: read_rgb_preview(p, max_side=384) for p in scenes});

# %%
# NBVAL_CHECK_OUTPUT
print(chips.groupby("split")["scene"].unique().map(sorted).to_dict())

# %% [markdown]
# The PyTorch dataset reads the same index and returns each chip as a float tensor in [0, 1] with its
# label and its georeference.

# %%
# NBVAL_CHECK_OUTPUT
train = ChipDataset(chips_path, split="train")
item = train[0]
print(len(train), tuple(item["image"].shape), item["image"].dtype, int(item["label"]) in (0, 1))
print(train.georef(0)[0])

# %% [markdown]
# ## Summary and next chapter
#
# - The demo holds several synthetic towns in a projected CRS with school footprints and hard negatives.
# - Chips are labelled from the footprints, written as georeferenced GeoTIFFs and indexed in `chips.csv`.
# - The split is by town, so the test town is never seen in training.
#
# Next, [chapter 2](02_training.ipynb) trains a classifier on these chips and measures it on the
# held-out town.
