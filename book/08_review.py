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
# - how the mapper's decisions become training data (`review import`, `chips --negatives`) and a better
#   model (`train --init-from`), measured on a town nobody reviewed.
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
#   (`scan_*`), the review queue with `review.html` (`queue/`), the decisions and labels, the fine-tuning
#   chips and run (`chips/`, `run/`) and `review_round.json` (the figures of the results page).

# %% tags=["parameters"]
run_dir = "runs/quick"
chips_dir = "data/chips"
mapping_dir = "outputs/mapping"
out_dir = "outputs/review"
region = "urban"
size = 1024
k = 100
order = "uncertainty"
floor = 0.05
replay = 1
epochs = 3
lr = 0.001
match_distance = 50.0
seed = 0
device = "auto"
# your own data: decisions.geojson exported from the review page; "": stop after the page
decisions = ""

# %%
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display
from schoolvision.book import simulate
from schoolvision.book.notebook import (
    check_claims,
    glue_all,
    repo_root,
    require,
    resolve,
)
from schoolvision.book.own import OwnRoundConfig, review_own_data
from schoolvision.data.sources import demo_of
from schoolvision.data.synthetic import REGIONS, make_demo
from schoolvision.io.folders import ScanFolder
from schoolvision.io.imagery import list_sources
from schoolvision.io.preview import read_band_preview, read_source_preview
from schoolvision.plotting import review as review_plots
from schoolvision.plotting import scan as scan_plots
from schoolvision.plotting.theme import apply_theme
from schoolvision.review.decisions import import_decisions
from schoolvision.review.queue import ORDERS, ReviewConfig, build_queue
from schoolvision.train.fit import TrainConfig, fit

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
# rerun this chapter with `decisions` set to the exported file: it then imports the decisions, cuts
# chips of the reviewed places and fine-tunes the model (`out_dir/run`). On the demo's chips this
# section is skipped, and the rest of the chapter runs the simulated round.

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
        demo_dir, towns=2, seed=seed, size=size, region=region, overwrite=True
    )
    town_a, town_b = sorted(demo.n_schools)
    scene = {s.name: s for s in list_sources(demo.scenes)}
    counts = {"schools_a": demo.n_schools[town_a], "schools_b": demo.n_schools[town_b]}
    glued = glue_all(
        "ch8", {"region": region, "town_a": town_a, "town_b": town_b, **counts}
    )

# %% [markdown]
# Town {glue:text}`ch8_town_a` is the one a mapper will review; town {glue:text}`ch8_town_b` nobody
# reviews: it only measures. The demo also writes the region's **registry** (`registry.csv`): the
# official school list a mapping team starts from. It is wrong the way real registries are, by seeded
# rules (`schoolvision/data/registry.py`): some schools are missing, some are listed hundreds of metres
# from their buildings, and a few listed "schools" are something else. `registry_truth.csv` says which,
# so that the book can check the audit below; a real registry comes without it.
#
# ### The home model in the new region
#
# Both towns are scanned with the model of chapter 2 at its tuned threshold, as chapter 6 scanned the
# home town, and measured against their true schools. Town {glue:text}`ch8_town_a` is also audited
# against the registry (`scan --registry`).

# %%
if on_demo:
    truth, audit_with = demo.schools, {"registry": demo.registry}
    common = {"truth": truth, "match_distance": match_distance, "device": device}
    scan_a = simulate.scan_town(
        run_path, scene[town_a].path, out_path / "scan_a", **common, **audit_with
    )
    scan_b = simulate.scan_town(
        run_path, scene[town_b].path, out_path / "scan_b", **common
    )
    evaluations = {f"{town_a} (to review)": scan_a.evaluation}
    evaluations |= {
        f"{town_b} (never reviewed)": scan_b.evaluation,
        "home (chapter 6)": home,
    }
    display(simulate.scan_table(evaluations))
    print(simulate.novelty_lines({town_a: scan_a, town_b: scan_b}))

# %%
if on_demo:
    probability = read_band_preview(scan_b.scenes[0].probability)
    scan_b_folder = ScanFolder(scan_b.out_dir)
    cands, known = (
        scan_b_folder.read_layer(n) for n in ("candidates", "known_schools")
    )
    title = f"{town_b} ({region}), before any review"
    image = read_source_preview(scene[town_b])
    fig = scan_plots.plot_probability(
        image, probability, cands, known, scan_b.threshold, title
    )
# %%
if on_demo:
    before = {
        "recall_before": scan_b.evaluation["recall"],
        "home_recall": home["recall"],
    }
    before |= {"precision_before": scan_b.evaluation["precision"]}
    glued = glue_all("ch8", {**before, "recall_a_before": scan_a.evaluation["recall"]})

# %% [markdown]
# At home the model found {glue:text}`ch8_home_recall:.0%` of the test town's schools; here it finds
# {glue:text}`ch8_recall_a_before:.0%` in town {glue:text}`ch8_town_a` and
# {glue:text}`ch8_recall_before:.0%` in town {glue:text}`ch8_town_b`. Nothing in the model is broken:
# it learned what schools look like in the home region, and these do not look like that.
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
# each finds schools:

# %%
if on_demo:
    curve = simulate.discovery(scan_a.out_dir, truth, ORDERS, floor, match_distance)
    fig = review_plots.plot_discovery(curve, k, demo.n_schools[town_a])
# %%
if on_demo:
    per_hundred = simulate.found_per_hundred(curve, k)
    rates = {
        f"per_100_{row.order}": row.per_100_items for row in per_hundred.itertuples()
    }
    glue_all("ch8", rates)
    display(per_hundred)

# %% [markdown]
# Ranked by probability, the first items are the model's surest schools; ranked by uncertainty, its
# hardest cases, schools and look-alikes alike. Per hundred items reviewed, the first found
# {glue:text}`ch8_per_100_probability:.0f` schools here, the second
# {glue:text}`ch8_per_100_uncertainty:.0f`; the second also shows the model the look-alikes it
# confuses with schools, as hard negatives. This round reviews in the order `order`.
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
# ### Fine-tuning on the review
#
# The accepted places are school labels; the rejected places, hard negatives: `chips --negatives` cuts a
# `not_school` chip centred on each. The model of chapter 2 is then trained a few more epochs from its own
# weights (`train --init-from`), on chips of the reviewed town and of `replay` home training towns (old
# examples, so that it does not forget the home region while it learns the new one). The home
# validation and test towns stay the validation and test splits: the model is still chosen, and its
# threshold tuned, at home, and its home test score says whether it forgot the home region.

# %%
if on_demo:
    home_schools, train_labels = (
        chips_path / "schools.geojson",
        out_path / "train_labels.geojson",
    )
    accepted = imported.counts["school"]
    schools = simulate.training_labels(
        labels_path, home_schools, train_labels, accepted
    )
    options = {"replay": replay, "seed": seed}
    tuning = out_path / "chips"
    chips = simulate.review_chips(
        scene[town_a].path, schools, labels_path, chips_path, tuning, **options
    )
    print(chips)

# %%
if on_demo:
    tuned = TrainConfig(
        chips.out_dir, out_path / "run", epochs=epochs, lr=lr, seed=seed, device=device
    )
    tuned.init_from, tuned.overwrite = run_path, True
    metrics = fit(tuned)
    print(
        "home test town, fine-tuned:"
        f" AUPRC {metrics['auprc']:.3f}, F1 {metrics['f1']:.3f}"
    )

# %% [markdown]
# ### The town nobody reviewed, again

# %%
if on_demo:
    after = simulate.scan_town(
        out_path / "run", scene[town_b].path, out_path / "scan_b_after", **common
    )
    rounds = simulate.round_table(
        {"before review": scan_b.evaluation, "after one round": after.evaluation},
        home["recall"],
    )
    fig = review_plots.plot_rounds(rounds, home["recall"])
# %%
if on_demo:
    last = rounds.iloc[-1]
    after_glue = glue_all(
        "ch8", {f"{m}_after": last[m] for m in ("recall", "precision")}
    )
    glue_all("ch8", {"gap_closed": last["gap_closed"]})
    context = {"region": region, "order": order, "k": k, "reviewed_town": town_a}
    result = out_path / "review_round.json"
    simulate.write_round(
        result, rounds, mapper, home["recall"], **context, measured_town=town_b
    )
    display(rounds)

# %% [markdown]
# After one round of {glue:text}`ch8_reviewed` reviewed items, recall on town {glue:text}`ch8_town_b`,
# which nobody reviewed, went from {glue:text}`ch8_recall_before:.2f` to
# {glue:text}`ch8_recall_after:.2f` (precision {glue:text}`ch8_precision_before:.2f` to
# {glue:text}`ch8_precision_after:.2f`): {glue:text}`ch8_gap_closed:.0%` of the gap to the home recall
# closed. Read recall and precision together: the fine-tuned run tunes its own threshold on the home
# validation town, so a round can trade precision for recall; the places the next round rejects become
# hard negatives, which is how precision is won back.

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
        "after one round, recall on the town nobody reviewed is higher": (
            "ch8_recall_after > ch8_recall_before"
        ),
    },
)

# %% [markdown]
# ## Summary and next
#
# - A model meets new regions: at home it found {glue:text}`ch8_home_recall:.0%` of the schools, in the
#   new region far fewer. Measure a scan on known schools of every new region before trusting it.
# - `review build` ranks what to check, `review.html` records the mapper's decisions offline,
#   `review import` turns them into labels, `chips --negatives` and `train --init-from` into a better model.
# - One round of a small review closed {glue:text}`ch8_gap_closed:.0%` of the recall gap on a town nobody
#   reviewed.
# - Next: [the results page](07_results.ipynb) gathers the figures of every chapter.
#
# ## With real data
#
# Start a new area from its official school list: `scan --registry` audits it, `review build` queues the
# candidates and the listed schools the scan did not see. Review with the page, a few dozen items at a
# time, then `review import`, `chips --schools LABELS --schools-where label=school --negatives LABELS
# --negatives-where label=not_school` over the reviewed imagery (with the home validation and test
# scenes, so that the model is still chosen on them), and `train --init-from RUN`. Measure on a town
# nobody reviewed before trusting the new model there; repeat while the recall climbs.
#
# ## Exercises
#
# **Exercise 1.** Review in the other order: `order = "probability"`. Does the fine-tuned model do
# better or worse on the town nobody reviewed, and why?
#
# ```{admonition} Solution
# :class: dropdown
#
# Rerun the chapter with one changed parameter, into a scratch folder:
#
#     papermill book/08_review.ipynb /tmp/08.ipynb -p order probability \
#         -p out_dir /tmp/review_p
#
# The review finds schools faster but sees fewer look-alikes: the fine-tuning gets more school examples
# and fewer hard negatives. Compare the two rounds' recall and precision on the town nobody reviewed:
# school examples mostly move recall, hard negatives mostly precision.
# ```
#
# **Exercise 2.** Halve the review: `k = 50`. How much of the gain remains?
#
# ```{admonition} Solution
# :class: dropdown
#
#     papermill book/08_review.ipynb /tmp/08.ipynb -p k 50 -p out_dir /tmp/review_50
#
# Fewer reviewed items give fewer new labels: the gain shrinks, but the first items of a good ranking
# carry most of it, which is why the order of the queue matters.
# ```
#
# **Exercise 3.** Another region: `region = "arid"`. Does the home model fail there too?
#
# ```{admonition} Solution
# :class: dropdown
#
#     papermill book/08_review.ipynb /tmp/08.ipynb -p region arid -p out_dir /tmp/review_arid
#
# It fails differently: earth-coloured roofs and walled family compounds, whose walls look like a school
# yard's. Read the false alarms with the review page's grad-CAM.
# ```
