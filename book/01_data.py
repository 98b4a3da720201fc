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
# # 1. Data: imagery, school labels and labelled chips
#
# **What you will learn**
#
# - what the embedded demo imagery looks like: georeferenced towns with schools and look-alikes;
# - how school footprints become labelled image *chips* (`school` / `not_school`);
# - why the train / validation / test split is spatial (whole towns), not random.
#
# | Prerequisite | Importance | Notes |
# | --- | --- | --- |
# | Python and Jupyter | Necessary | running a notebook, or `papermill` from a shell |
# | Rasters and vector layers (GeoTIFF, GeoJSON, CRS) | Helpful | what QGIS shows; every file here opens in it |
# | Earlier chapters | None | this chapter makes the data every later chapter reads |
#
# - **Time to run**: {glue:text}`07_results.ipynb::res_time_01_data:s`.
# - **Writes**: the chips in `chips_dir` (GeoTIFFs, `chips.csv`, `dataset.json`) and, for the demo, the
#   towns in `data_dir` (scenes, `schools.geojson`, `landmarks.geojson`).
#
# To run the book on **your own data**, set
# `imagery` (GeoTIFFs, folders of them, XYZ/TMS tile folders) and `schools` (any vector file, or a CSV
# with longitude/latitude columns), plus the reading options your files need (`schools_layer`,
# `lonlat_columns`, `bands`, `scale` ...), in a profile (see the [introduction](intro.md)). The demo
# generator then does not run, your files are only read, and every later chapter follows the chips cut
# from them.

# %% tags=["parameters"]
# the demo towns are drawn here (unused, never written, with your own imagery)
data_dir = "data/demo"
chips_dir = "data/chips"
# your imagery: a GeoTIFF, a folder of them, a tile folder or a list; "": the demo towns
imagery = ""
# your school labels: GeoJSON, GeoPackage, shapefile, KML, GeoParquet, CSV with lon/lat
schools = ""
schools_layer = ""  # the layer of a labels file holding several (GeoPackage, KML)
schools_where = (
    ""  # keep only features with this attribute value, e.g. "amenity=school"
)
# "LON,LAT" column names of a CSV, when not lon/lat, longitude/latitude or x/y
lonlat_columns = ""
bands = ""  # "R,G,B" band numbers of a multispectral raster, e.g. "3,2,1"
crs = ""  # the CRS of rasters that have none, e.g. "EPSG:32636"
# "MIN,MAX" range of 16-bit imagery mapped to 8 bits; "": 2-98 percentile stretch
scale = ""
# any other chip setting (ChipConfig), e.g. {"tile_scheme": "tms"}
data_options = {}
towns = 6
size = 1536
gsd = 1.0  # metres per pixel of the demo towns and the chips; None: the imagery's own
chip_size = 128
stride = 64
# metres a side of the split blocks of one scene or mosaic; None: planned for the data
block_size = None
seed = 0

# %%
import pandas as pd
from schoolvision.book.data import prepare_data
from schoolvision.book.notebook import check_claims, repo_root, resolve
from schoolvision.data.dataset import ChipDataset
from schoolvision.io.folders import ChipsFolder
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
# `gsd` metres per pixel in a real UTM projection, with fields, trees, water, roads, houses with varied roofs and
# shadows, and schools (classroom blocks around a yard, often a sports field and a wall). Hard negatives,
# buildings and fields that are *not* schools (warehouses, markets, clinics, parks, dense housing), make the
# task need spatial structure rather than colour. The same seed always gives byte-identical files.
#
# With `imagery` and `schools` set, this step draws nothing: it checks that your files open (tile names,
# bands, CRS, the labels' layer and coordinate columns) before any long work, and the rest of the chapter
# shows your scenes and labels instead.

# %%
data = prepare_data(
    data_path,
    imagery,
    schools,
    base=repo_root(),
    towns=towns,
    size=size,
    gsd=gsd,
    seed=seed,
    schools_layer=schools_layer,
    schools_where=schools_where,
    lonlat_columns=lonlat_columns,
    bands=bands,
    crs=crs,
    scale=scale,
    **data_options,
)
scenes, footprints = data.sources(), data.read_schools()

# %% tags=["nbval-check-output"]
print(data.describe())

# %% [markdown]
# Every town, with the school footprints of `schools.geojson` drawn over it. The axes are the scene's
# own projected coordinates: what you see here is where QGIS puts it. (Imagery in EPSG:4326 or Web
# Mercator is shown, like it is chipped, in the UTM zone of its centre.)

# %%
fig = plots.plot_towns(data.previews(max_side=512), footprints)

# %%
first = data.first_scene_with(footprints)
town = data.previews(max_side=1400, names=[first])[first]
fig = plots.plot_scene(town, footprints, first)

# %% [markdown]
# Close-ups at full resolution: schools first, then look-alikes a model must learn to reject
# (from `landmarks.geojson`, when the demo writes one).

# %%
local = plots.schools_in(footprints, town).head(3)
zooms = data.zooms(first, local.geometry)
fig = (
    plots.plot_zooms(zooms, local, [f"school: {n}" for n in local["name"]])
    if len(local)
    else None
)

# %%
landmarks = data.read_landmarks()
hard = (
    plots.schools_in(landmarks, town).groupby("kind").head(1).head(4)
    if len(landmarks)
    else landmarks
)
print(f"hard negatives in {first}: {sorted(set(hard.get('kind', [])))}")

# %%
zooms = data.zooms(first, hard.geometry)
fig = (
    plots.plot_zooms(zooms, hard, [f"not a school: {k}" for k in hard["kind"]])
    if len(hard)
    else None
)

# %% [markdown]
# ### From footprints to labelled chips
#
# `make_chips` slides a `chip_size` window with step `stride` over each town (resampled to `gsd` metres
# per pixel), adds a few jittered windows centred on each school, and labels a chip `school` when it holds
# enough of a footprint, `not_school` when it touches none; slivers are left out. Each chip is a small
# GeoTIFF with its own CRS and transform, indexed in `chips.csv`. The same call (or
# `schoolvision chips --imagery ... --schools ... --out ...`) takes your own GeoTIFFs or tile folders;
# windows mostly outside the imagery's mask (alpha band, nodata) are skipped and counted. An existing
# `chips_dir` is replaced only when it is a chips folder; a folder holding anything else is refused.

# %%
config = data.config(
    chip_size=chip_size, stride=stride, gsd=gsd, block_size=block_size, seed=seed
)
summary = data.make_chips(chips_path, config)
chips = ChipsFolder(chips_path).read_index()

# %% [markdown]
# Class balance per split. `not_school` chips are under-sampled in the training split only; validation
# and test keep every chip so that their metrics describe a real scan.

# %% tags=["nbval-check-output"]
pd.crosstab(chips["split"], chips["label"], margins=True).reindex(
    ["train", "val", "test", "All"], fill_value=0
)

# %%
examples, images = ChipDataset(chips_path, split="train").sample_by_class(
    per_class=6, seed=seed
)
fig = plots.plot_chip_examples(
    examples, images, title="Chips of the train split, by class"
)

# %% [markdown]
# ### A spatial split
#
# Neighbouring chips overlap (the stride is half a chip), so a random split would put almost the same
# pixels in train and test. Whole towns go to one split instead: the last town is the test town, the one
# before it validation, the rest training. (With fewer than three scenes, as with one large orthomosaic,
# square blocks of `block_size` metres of each scene go to the splits instead, and chips straddling two
# blocks are dropped: on a small area, smaller blocks give each split its own schools.)

# %%
fig = plots.plot_split_map(chips, data.previews(max_side=384))

# %% tags=["nbval-check-output"]
print(chips.groupby("split")["scene"].unique().map(sorted).to_dict())

# %% [markdown]
# The PyTorch dataset reads the same index and returns each chip as a float tensor in `[0, 1]` with its
# label and its georeference.

# %% tags=["nbval-check-output"]
train = ChipDataset(chips_path, split="train")
item = train[0]
print(
    len(train),
    tuple(item["image"].shape),
    item["image"].dtype,
    int(item["label"]) in (0, 1),
)
print(train.georef(0)[0])

# %% [markdown]
# The claims of this page, checked against its chips:

# %% tags=["checks", "nbval-check-output"]
per_split = chips[chips["label"] == "school"].groupby("split").size()
ok = check_claims(
    {f"schools_{s}": int(per_split.get(s, 0)) for s in ("train", "val", "test")}
    | {
        "scenes": chips["scene"].nunique(),
        "splits_per_scene": int(chips.groupby("scene")["split"].nunique().max()),
    },
    {
        "every split holds school chips": (
            "schools_train > 0 and schools_val > 0 and schools_test > 0",
            "name scenes that hold schools as val_scenes and test_scenes (in"
            " data_options), or give more scenes; one scene is split by blocks:"
            " a smaller block_size, or a larger area",
        ),
        "with three scenes or more, each scene lies in one split": (
            "scenes < 3 or splits_per_scene == 1"
        ),
    },
)

# %% [markdown]
# ## Summary and next chapter
#
# - The demo holds several synthetic towns in a projected CRS with school footprints and hard negatives.
# - Chips are labelled from the footprints, written as georeferenced GeoTIFFs and indexed in `chips.csv`.
# - The split is by town, so the test town is never seen in training.
#
# Next, [chapter 2](02_training.ipynb) trains a classifier on these chips and measures it on the
# held-out town.
#
# ## With real data
#
# Set `imagery` and `schools` (and `gsd`: the chips must cover a whole school compound, so coarser imagery
# needs more pixels per chip or a larger `chip_size`). Then check, before training: that the close-ups
# show your schools inside their footprints (a shifted label teaches the model the wrong place), that the
# split map puts schools in every split (the chips step warns when validation or test holds none), and
# that `not_school` chips hold no unlabelled school: an official list that misses schools turns them into
# negatives. Look at a sample of `not_school` chips near settlements before you trust any metric.
#
# ## Exercises
#
# **Exercise 1.** Make the chips without overlap: a `stride` equal to `chip_size` (the default is half a chip). How many chips
# does the train split hold now, and why does the split by town matter less for this leakage question?
#
# ````{admonition} Solution
# :class: dropdown
#
# Rerun the chapter into scratch folders (the book's own chips stay as they are):
#
# ```bash
# papermill book/01_data.ipynb /tmp/01.ipynb -p stride 128 \
#     -p data_dir /tmp/demo -p chips_dir /tmp/chips
# ```
#
# The class-balance table shows about a quarter of the sliding-window chips (half as many windows along
# each axis); the jittered windows centred on schools are still added, so school chips fall less. Neighbours
# no longer overlap, but the split stays by town: overlap is not the only leak, nearby places look alike.
# ````
#
# **Exercise 2.** Draw fewer, smaller towns (`towns`, `size`) and look at the split map.
#
# ````{admonition} Solution
# :class: dropdown
#
# ```bash
# papermill book/01_data.ipynb /tmp/01.ipynb -p towns 3 -p size 1024 \
#     -p data_dir /tmp/demo -p chips_dir /tmp/chips
# ```
#
# With three towns, each split gets one whole town: the test town alone decides every test metric, so the
# bootstrap intervals of chapter 2 widen. With fewer than three scenes the split switches to spatial blocks.
# ````
