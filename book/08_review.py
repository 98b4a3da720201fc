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
# # 8. Review and retrain
#
# **What you will learn**
#
# - what happens when the model of chapter 2 meets a region it never saw: other roofs, other school
#   layouts, other light, and an official school registry that is wrong in the usual ways;
# - how a scan becomes a ranked **review queue** (`schoolvision review build`) and an offline review page
#   (`review.html`) on which a mapper says "school" or "not a school", item by item;
# - which items a mapper should look at first: the ones the model is least sure of, or the most likely
#   schools;
# - how the mapper's decisions become training data and a better model in one command
#   (`schoolvision review retrain`), measured on towns nobody reviewed, with the model's weights and its
#   threshold told apart.
#
# | Prerequisite | Importance | Notes |
# | --- | --- | --- |
# | [2. Training](02_training.ipynb) | Necessary | the model to review with and fine-tune, in `run_dir` |
# | [1. Data](01_data.ipynb) | Necessary | the home chips in `chips_dir`: their validation and test towns |
# | [6. Mapping](06_mapping.ipynb) | Necessary | the home scan in `mapping_dir`: the recall to reach |
# | A browser | Helpful | to open `review.html` |
#
# - **Time to run**: {glue:text}`07_results.ipynb::res_time_08_review:s`.
# - **Writes**: `out_dir`: the new region's towns and registry (`demo/`), the scans before and after
#   (`scan_*`, `grid/`), the review queue with `review.html` (`queue/`), the decisions and labels, the
#   round (`round/`: its chips and the fine-tuned run `round/run`, with `round.json`) and
#   `review_round.json` (the figures of the results page).

# %% tags=["parameters"]
run_dir = "runs/quick"
chips_dir = "data/chips"
mapping_dir = "outputs/mapping"
out_dir = "outputs/review"
region = "urban"
towns = 4
size = 1024
k = 100
order = "uncertainty"
floor = 0.05
replay = 0.2
epochs = 3
lr = 0.0003
match_distance = 50.0
seed = 0
device = "auto"
# your own data: decisions.geojson exported from the review page; "": stop after the page
decisions = ""

# %%
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display
from schoolvision.book import round_study, simulate
from schoolvision.book.notebook import (
    check_claims,
    glue_all,
    repo_root,
    require,
    resolve,
)
from schoolvision.book.own import OwnRoundConfig, review_own_data
from schoolvision.data.sources import demo_of
from schoolvision.demo import REGIONS, make_demo
from schoolvision.io.folders import ScanFolder
from schoolvision.io.imagery import list_sources
from schoolvision.io.preview import read_band_preview, read_source_preview
from schoolvision.plotting import review as review_plots
from schoolvision.plotting import scan as scan_plots
from schoolvision.plotting.theme import apply_theme
from schoolvision.review.decisions import import_decisions
from schoolvision.review.queue import ORDERS, ReviewConfig, build_queue
from schoolvision.rounds.retrain import RetrainConfig, retrain

apply_theme()
run_path = require(run_dir, "02_training")
chips_path = require(chips_dir, "01_data")
home_eval = require(resolve(mapping_dir) / "evaluation.json", "06_mapping")
home = ScanFolder(home_eval.parent).read_evaluation()
out_path = resolve(out_dir)
# the new region and the simulated mapper: on the demo's chips only
on_demo = demo_of(chips_path) is not None


# %% [markdown]
# ## On your own data
#
# With your imagery and school list (chapter 1's `imagery` and `schools`), there is no simulated mapper
# and no synthetic region: the round is yours. Your imagery is scanned with the model of chapter 2 and
# your school list as the registry (`scan --registry`: each listed school confirmed or not seen), and the
# review queue and its page are built for that scan. Open the page, decide the items, press *Export*, and
# rerun this chapter with `decisions` set to the exported file: it then runs `review retrain` on them
# (`out_dir/round`: chips only where you looked, the home chips replayed, the model fine-tuned and measured
# on chapter 2's test split). On the demo's chips this section is skipped, and the rest of the chapter
# runs the simulated round.

# %%
own_config = OwnRoundConfig(
    run_path,
    chips_path,
    out_path,
    decisions and resolve(decisions),
    order=order,
    k=k,
    floor=floor,
    epochs=epochs,
    lr=lr,
    replay=replay,
    match_distance=match_distance,
    seed=seed,
    device=device,
)
own = None if on_demo else review_own_data(own_config)
print(own.summary(own_config) if own else "the demo's chips: the simulated round below")

# %% [markdown]
# ## The work
#
# ### A new region, and its registry
#
# The demo draws towns of other regions too (`schoolvision demo --region NAME`). Each region has its
# own roofs, its own kind of school and its own look-alikes; the one chosen here, `region`:

# %%
if on_demo:
    print(f"{region}: {REGIONS[region].description}")
    demo_dir = out_path / "demo"
    demo = make_demo(
        demo_dir, towns=towns, seed=seed, size=size, region=region, overwrite=True
    )
    town_a, *unreviewed = sorted(demo.n_schools)
    scene = {s.name: s for s in list_sources(demo.scenes)}
    others = {town: scene[town].path for town in unreviewed}
    n_other = sum(demo.n_schools[town] for town in unreviewed)
    counts = {"schools_a": demo.n_schools[town_a], "schools_other": n_other}
    names = {"town_a": town_a, "n_unreviewed": len(unreviewed)}
    glued = glue_all("ch8", {"region": region, **names, **counts})

# %% [markdown]
# Town {glue:text}`ch8_town_a` ({glue:text}`ch8_schools_a` schools) is the one a mapper will review;
# the other {glue:text}`ch8_n_unreviewed` towns ({glue:text}`ch8_schools_other` schools) nobody
# reviews: they only measure, and several of them, because one town's handful of schools says little
# on its own. The demo also writes the region's **registry** (`registry.csv`): the official school
# list a mapping team starts from. It is wrong the way real registries are, by seeded rules
# (`schoolvision/demo/registry.py`): some schools are missing, some are listed hundreds of metres
# from their buildings, and a few listed "schools" are something else. `registry_truth.csv` says
# which, so that the book can check the audit below; a real registry comes without it.
#
# ### The home model in the new region
#
# Every town is scanned with the model of chapter 2 at its tuned threshold, as chapter 6 scanned the
# home town, and measured against its true schools. Town {glue:text}`ch8_town_a` is also audited
# against the registry (`scan --registry`).

# %%
if on_demo:
    truth, audit_with = demo.schools, {"registry": demo.registry}
    common = {"truth": truth, "match_distance": match_distance, "device": device}
    scan_a = simulate.scan_town(
        run_path, scene[town_a].path, out_path / "scan_a", **common, **audit_with
    )
    home_t, models = {"home threshold": scan_a.threshold}, {"home model": run_path}
    grid_path = out_path / "grid"
    grid = round_study.threshold_grid(models, home_t, others, out=grid_path, **common)
    shown = ["schools", "candidates", "found", "recall", "precision", "novelty"]
    display(grid.set_index("town")[shown])
    start = round_study.pooled(grid, seed=seed).iloc[0]
    evaluations = {f"{town_a} (to review)": scan_a.evaluation, "home (chapter 6)": home}
    display(simulate.scan_table(evaluations))

# %% [markdown]
# The first table is the home model on each town nobody will review (`novelty`: the share of the
# town's windows that the run's trust map, chapter 6, flags as unlike its training data); the second,
# the town to review beside the home town of chapter 6. The map of the town to review:

# %%
if on_demo:
    probability = read_band_preview(scan_a.scenes[0].probability)
    scan_a_folder = ScanFolder(scan_a.out_dir)
    cands, known = (
        scan_a_folder.read_layer(n) for n in ("candidates", "known_schools")
    )
    title = f"{town_a} ({region}), before any review"
    image = read_source_preview(scene[town_a])
    fig = scan_plots.plot_probability(
        image, probability, cands, known, scan_a.threshold, title
    )
# %%
if on_demo:
    before = {"recall_before": start["recall"], "home_recall": home["recall"]}
    before |= {"precision_before": start["precision"]}
    before |= {"recall_before_low": start["recall_low"]}
    before |= {"recall_before_high": start["recall_high"]}
    glued |= glue_all("ch8", before)

# %% [markdown]
# At home the model found {glue:text}`ch8_home_recall:.0%` of the test town's schools; in the
# {glue:text}`ch8_n_unreviewed` towns nobody will review it finds {glue:text}`ch8_recall_before:.0%`
# of them (from {glue:text}`ch8_recall_before_low:.0%` to {glue:text}`ch8_recall_before_high:.0%`
# when whole towns are resampled: the interval says how much one town differs from the next), with
# precision {glue:text}`ch8_precision_before:.2f`. It learned what schools look like in the home
# region, and these do not all look like that.
#
# ### The review queue
#
# `schoolvision review build --scan DIR --out DIR` ranks what a mapper should look at: every candidate,
# the probability peaks just below the threshold (where missed schools hide) and the registry schools the
# scan did not see. Each item carries its chip, its grad-CAM, a view of its surroundings, its probability
# and its registry status. Two ranking rules (`--order`):
#
# - `uncertainty`: the probability nearest the threshold first, the items the model is least sure of,
#   which teach it most;
# - `probability`: the most likely schools first, which maps fastest.
#
# The queue of town {glue:text}`ch8_town_a`, cut to the review budget `k`:

# %%
if on_demo:
    queue_path = out_path / "queue"
    config = ReviewConfig(scan_a.out_dir, queue_path, order=order, limit=k, floor=floor)
    config.device, config.overwrite = device, True
    queue = build_queue(config)
    display(pd.Series(queue.counts, name="items").to_frame())

# %% [markdown]
# The page `review.html` in the queue folder is the mapper's tool: one self-contained file that opens
# from disk without a server or a network, one item at a time with its chip and grad-CAM side by side
# and its surroundings below, keys for *school* (`s`), *not a school* (`n`), *unsure* (`u`) and *back*
# (`b`), and a counter. Decisions stay in the browser's storage, so a reload or a crash loses none;
# *Export* downloads `decisions.geojson`.

# %%
if on_demo:
    page = Path(queue.page).resolve()
    shown = page.relative_to(repo_root()) if page.is_relative_to(repo_root()) else page
    display(Markdown(f"The page: `{shown}` (open it from disk in any browser)"))

# %% [markdown]
# ### Which items first?
#
# The mapper of this book is simulated: the demo's ground truth answers each item (a school when the
# item lies within `match_distance` metres of a true school's footprint,
# `schoolvision/book/simulate.py`). It can answer the whole queue in both orders, to compare how fast
# each finds schools, budget by budget:

# %%
if on_demo:
    curve = simulate.discovery(scan_a.out_dir, truth, ORDERS, floor, match_distance)
    fig = review_plots.plot_discovery(curve, k, demo.n_schools[town_a])
# %%
if on_demo:
    n_items = int(curve["reviewed"].max())
    sweep = round_study.budget_sweep(curve, [3, 5, 10, n_items])
    glue_all("ch8", {"queue_items": n_items, "reviewed_budget": min(k, n_items)})
    display(sweep)

# %% [markdown]
# Ranked by probability, the first items are the model's surest schools; ranked by uncertainty, its
# hardest cases, schools and look-alikes alike. The table gives the distinct schools each order has
# found after a budget of items: where the budget is short of the queue, the orders can differ; at
# the whole queue ({glue:text}`ch8_queue_items` items) both have found the same. This round's budget,
# `k`, covers {glue:text}`ch8_reviewed_budget` items of it, in the order `order`.
#
# ### The review, and its decisions as labels
#
# The simulated mapper decides the first `k` items of the queue and exports its decisions as the page
# does. `schoolvision review import` turns them into labels with their provenance: accepted items become
# school points, rejected ones hard-negative points.

# %%
if on_demo:
    decisions, labels_path = out_path / "decisions.geojson", out_path / "labels.geojson"
    mapper = simulate.simulate_review(queue_path, truth, decisions, k, match_distance)
    imported = import_decisions(
        mapper.decisions, queue_path, labels_path, overwrite=True
    )
    review = {"reviewed": mapper.reviewed, "accepted": mapper.schools}
    glue_all(
        "ch8",
        {**review, "rejected": mapper.not_schools, "found_a": mapper.schools_found},
    )
    display(pd.Series(imported.counts, name="decisions").to_frame())

# %% [markdown]
# The mapper reviewed {glue:text}`ch8_reviewed` items: {glue:text}`ch8_accepted` answers *school*
# ({glue:text}`ch8_found_a` different schools: two items can show one school) and
# {glue:text}`ch8_rejected` places that are not one.
#
# ### The registry, audited
#
# The scan's registry audit (`registry_audit.csv`, and layers in `candidates.gpkg`) says which registry
# schools a candidate confirms and which the scan did not see; the review settles the rest. Beside it,
# what the registry truth says:

# %%
if on_demo:
    audit = simulate.registry_review(
        scan_a.out_dir, demo.registry_truth, mapper.answers
    )
    counts = audit.set_index("measure")["count"]
    added = counts["review: schools added"]
    glue_all(
        "ch8",
        {
            "added": added,
            "moved": counts["review: misplaced schools found at their place"],
        },
    )
    display(audit)

# %% [markdown]
# The review added {glue:text}`ch8_added` schools the registry misses and put
# {glue:text}`ch8_moved` listed schools at their true place: the corrections a registry needs, which a
# scan alone only suggests.
#
# ### Review to retrain, in one command
#
# `schoolvision review retrain --queue QUEUE --decisions decisions.geojson --run RUN --out ROUND` turns
# the decisions into chips and fine-tunes the model, by rules that cannot mislabel
# (`schoolvision/rounds/retrain.py`): chips are cut only where the mapper looked (each decided place
# and its surroundings), accepted places give school chips, rejected places hard negatives, and
# `not_school` grid chips come only from neighbourhoods in which every item was rejected, no more of
# them than the home chips' ratio of not-school to school chips allows; imagery nobody reviewed is
# never read. A share `replay` of the home training chips is trained on again, so
# that the model does not forget the home region, for `epochs` epochs at the learning rate `lr`, from
# the home model's weights. The home validation and test towns stay whole: the model is still chosen,
# and its threshold tuned, at home, and its home test score is measured on the same chips as in
# chapter 2.

# %%
if on_demo:
    options = {"epochs": epochs, "replay": replay, "lr": lr, "seed": seed}
    round_config = RetrainConfig(
        queue_path,
        mapper.decisions,
        run_path,
        out_path / "round",
        **options,
        device=device,
        overwrite=True,
    )
    done = retrain(round_config)
    print(round_study.round_counts(done.record))
    display(round_study.home_test_table(done.record))

# %% [markdown]
# ### The towns nobody reviewed, again
#
# A round changes two things: the weights, fine-tuned on the reviewed places, and the threshold,
# tuned again on the home validation town. Each model is therefore scanned at each threshold, on
# every town nobody reviewed: the home model at the fine-tuned threshold shows what the threshold
# alone does, the fine-tuned model at the home threshold what the weights alone do. Recall and
# precision are pooled over the towns, with intervals that resample whole towns.

# %%
if on_demo:
    tuned_t = {"fine-tuned threshold": done.record["thresholds"]["after"]}
    rest = round_study.threshold_grid(
        models, tuned_t, others, out=grid_path / "home_tuned", **common
    )
    tuned = {"fine-tuned": Path(done.run)}
    both = home_t | tuned_t
    after = round_study.threshold_grid(
        tuned, both, others, out=grid_path / "tuned", **common
    )
    grid = pd.concat([grid, rest, after], ignore_index=True)
    table = round_study.pooled(grid, seed=seed)
    fig = review_plots.plot_threshold_grid(table, home["recall"])
# %%
if on_demo:
    verdict = round_study.round_verdict(table)
    after_glue = glue_all("ch8", round_study.glue_values(table) | {"verdict": verdict})
    context = {"region": region, "order": order, "k": k, "reviewed_town": town_a}
    result = out_path / "review_round.json"
    round_study.write_round(
        result, table, grid, done.record, mapper, home["recall"], **context
    )
    display(table.set_index(["model", "threshold"]).drop(columns="value"))

# %% [markdown]
# After one round of {glue:text}`ch8_reviewed` reviewed items, on the towns nobody reviewed, each
# model at its own threshold: recall went from {glue:text}`ch8_recall_before:.2f` to
# {glue:text}`ch8_recall_after:.2f` (interval across towns {glue:text}`ch8_recall_after_low:.2f` to
# {glue:text}`ch8_recall_after_high:.2f`), precision from {glue:text}`ch8_precision_before:.2f` to
# {glue:text}`ch8_precision_after:.2f`. {glue:text}`ch8_verdict` With so few schools per town, a
# difference of one or two schools is within the intervals: a round is judged on more towns, or over
# several rounds.

# %% [markdown]
# The claims of this page, checked against its numbers (on your own data, where no round is simulated,
# they are not measured):

# %% tags=["checks", "nbval-check-output"]
ok = check_claims(
    glued | after_glue if on_demo else {},
    {
        "the home model finds fewer schools in the new region than at home": (
            "ch8_recall_before < ch8_home_recall"
        ),
        "each model at its own threshold: the round does not lose recall": (
            "ch8_recall_after >= ch8_recall_before"
        ),
    },
)

# %% [markdown]
# ## Summary and next
#
# - A model meets new regions: at home it found {glue:text}`ch8_home_recall:.0%` of the schools, in the
#   towns of the new region {glue:text}`ch8_recall_before:.0%`. Measure a scan on known schools of
#   several towns of every new region before trusting it.
# - `review build` ranks what to check, `review.html` records the mapper's decisions offline, and
#   `review retrain` turns them into a fine-tuned model by rules that never label imagery nobody saw.
# - Judge a round with both models at both thresholds, precision beside recall, on towns nobody
#   reviewed: here recall {glue:text}`ch8_recall_before:.2f` to {glue:text}`ch8_recall_after:.2f`,
#   precision {glue:text}`ch8_precision_before:.2f` to {glue:text}`ch8_precision_after:.2f`.
# - Next: [the results page](07_results.ipynb) gathers the figures of every chapter.
#
# ## With real data
#
# Start a new area from its official school list: `scan --registry` audits it, `review build` queues the
# candidates and the listed schools the scan did not see. Review with the page, a few dozen items at a
# time, press *Export*, then `review retrain --queue QUEUE --decisions decisions.geojson --run RUN --out
# ROUND`. Scan towns nobody reviewed with both runs before trusting the new one there (`scan
# --threshold` sets the other run's threshold); repeat while the recall climbs.
#
# ## Exercises
#
# **Exercise 1.** Review fewer items in the other order: `k = 5` and `order = "probability"`, then
# `k = 5` and `order = "uncertainty"`. Which round teaches the model more?
#
# ```{admonition} Solution
# :class: dropdown
#
# Rerun the chapter with changed parameters, into scratch folders:
#
#     papermill book/08_review.ipynb /tmp/08p.ipynb -p k 5 -p order probability \
#         -p out_dir /tmp/review_p
#     papermill book/08_review.ipynb /tmp/08u.ipynb -p k 5 -p order uncertainty \
#         -p out_dir /tmp/review_u
#
# The budget table above says how many schools each order has found after `k` items; the round learns
# from those schools and from the look-alikes it rejected. Compare the two runs' tables of the towns
# nobody reviewed, each model at its own threshold and at the other's.
# ```
#
# **Exercise 2.** Review more towns: `towns = 6` (one reviewed, five that measure). How do the
# intervals across towns change?
#
# ```{admonition} Solution
# :class: dropdown
#
#     papermill book/08_review.ipynb /tmp/08.ipynb -p towns 6 -p out_dir /tmp/review_6
#
# More towns give more resamples and more schools: the intervals narrow, and a difference of one
# school between the two models weighs less.
# ```
#
# **Exercise 3.** Another region: `region = "arid"`. Does the home model fail there too?
#
# ```{admonition} Solution
# :class: dropdown
#
#     papermill book/08_review.ipynb /tmp/08.ipynb -p region arid -p out_dir /tmp/review_arid
#
# Compare its first table with this one's. The arid region has earth-coloured roofs and walled family
# compounds, whose walls look like a school yard's: read its false alarms with the review page's
# grad-CAM.
# ```
