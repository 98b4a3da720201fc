"""A sampled review queue and the estimate from its decisions (issue 27).

The red-roof registry town of the review tests (``fixtures.write_registry_town``, scanned with the
red-roof model) has 64 windows of one chip and four schools: A and B listed at their place, C listed
200 m off (a window away) and D missing, so two schools are unlisted and two registry rows (C's and
a closed school's) stand where no school is.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from test_review import META, RedModel

from schoolvision.book.simulate_sample import answer_sample, true_measures
from schoolvision.cli import main
from schoolvision.errors import UserError
from schoolvision.io.folders import ReviewFolder
from schoolvision.review.decisions import write_decisions
from schoolvision.review.estimate import combine, estimate, estimate_measures, read_combined
from schoolvision.review.queue import ReviewConfig, build_queue
from schoolvision.review.sample import SampleConfig, build_frame, draw_sample, neyman_allocation, sample_items
from schoolvision.scan.runner import ScanConfig, run_scan

from fixtures import REVIEW_SCHOOLS_PX, UTM, pixel_boxes, write_registry_town


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("estimate_town")
    scene, registry = write_registry_town(root)
    run_scan(ScanConfig(run=root, imagery=[scene], out_dir=root / "scan", registry=registry, runtime="torch",
                        device="cpu", progress=False, make_map=False), model=RedModel(), meta=META)
    return root / "scan"


@pytest.fixture(scope="module")
def frame(scan):
    return build_frame(scan)


@pytest.fixture(scope="module")
def truth() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({"name": list(REVIEW_SCHOOLS_PX)}, geometry=pixel_boxes(REVIEW_SCHOOLS_PX.values()),
                            crs=UTM)


@pytest.fixture(scope="module")
def queue(scan, tmp_path_factory) -> Path:
    """A sampled queue of 16 windows, images and page made as ``review build --sample 16`` makes them."""
    out = tmp_path_factory.mktemp("sampled") / "queue"
    build_queue(ReviewConfig(scan_dir=scan, out_dir=out, device="cpu"), model=RedModel(), meta=META,
                selection=sample_items(scan, SampleConfig(size=16, seed=3)))
    return out


def test_frame_holds_every_window_once_with_its_stratum(frame, truth):
    w = frame.windows
    assert len(w) == 64 and not w.duplicated(["scene", "row", "col"]).any()
    assert (w["kind"] == "candidate").sum() == 4 and w["registry_rows"].sum() == 4  # 4 rows in the scene
    assert true_measures(frame, truth) == {"unlisted_schools": 2, "unlisted_schools_one_by_one": 2,
                                           "registry_not_at_school": 2, "schools": 4,
                                           "recall": 1.0, "precision": 1.0, "schools_outside_the_frame": 0}


def test_neyman_allocation_follows_sizes_and_prior_within_caps():
    sizes = {"a": 100, "b": 10000, "c": 0, "d": 3}
    sds = {"a": 0.5, "b": 0.1, "c": 0.5, "d": 0.5}
    alloc = neyman_allocation(sizes, sds, 300)
    assert sum(alloc.values()) == 300 and alloc["c"] == 0 and alloc["d"] >= 2
    assert alloc["b"] / alloc["a"] == pytest.approx(10000 * 0.1 / (100 * 0.5), rel=0.05)
    capped = neyman_allocation({"a": 10, "b": 1000}, {"a": 0.5, "b": 0.001}, 100)
    assert capped == {"a": 10, "b": 90}  # a's share (83) exceeds what it holds: the rest goes to b
    assert neyman_allocation(sizes, sds, 50000) == sizes  # a census
    small = neyman_allocation(sizes, sds, 6)
    assert small == {"a": 2, "b": 2, "c": 0, "d": 2}  # every stratum's minimum first


def test_inclusion_probabilities_sum_to_the_sample_size_in_each_stratum(frame):
    items, design = draw_sample(frame, SampleConfig(size=20, seed=1))
    items = pd.DataFrame(items)
    assert len(items) == 20 == sum(s["n"] for s in design["strata"].values())
    for name, s in design["strata"].items():
        mine = items[items["stratum"] == name]
        assert len(mine) == s["n"]
        pi = mine["inclusion_probability"].to_numpy()
        assert np.allclose(pi, s["n"] / s["N"]) if s["N"] else not len(mine)
        assert s["N"] * s["inclusion_probability"] == pytest.approx(s["n"])  # sum over the stratum's windows
        assert (1 / pi).sum() == pytest.approx(s["N"] if s["n"] else 0)  # the sample expands to the stratum
    # the draw is random within a stratum: over many seeds each window of the largest stratum comes up
    # about as often as its inclusion probability says
    big = "window/new"
    hits = pd.Series(0, index=frame.windows.index[frame.windows["stratum"] == big])
    for seed in range(200):
        drawn, d = draw_sample(frame, SampleConfig(size=20, seed=seed))
        at = frame.windows.reset_index().set_index(["lon", "lat"])["index"]
        hits[[int(at[(it["lon"], it["lat"])]) for it in drawn if it["stratum"] == big]] += 1
    assert hits.mean() / 200 == pytest.approx(d["strata"][big]["inclusion_probability"])
    assert hits.min() > 0 and hits.max() < 200 * 0.5


def test_a_census_gives_the_true_counts_with_zero_width(frame, truth):
    items, design = draw_sample(frame, SampleConfig(size=len(frame.windows)))
    items = pd.DataFrame(items)
    m = estimate_measures(design, items, answer_sample(frame, items, truth))
    true = true_measures(frame, truth)
    for name in ("unlisted_schools", "registry_not_at_school", "schools", "recall", "precision"):
        assert m[name]["estimate"] == pytest.approx(true[name]) and m[name]["low"] == m[name]["high"], name


def test_a_sample_interval_covers_the_truth_and_is_wider(frame, truth):
    items, design = draw_sample(frame, SampleConfig(size=16, seed=0))
    items = pd.DataFrame(items)
    m = estimate_measures(design, items, answer_sample(frame, items, truth))["unlisted_schools"]
    assert m["low"] <= 2 <= m["high"] and m["high"] > m["low"]
    assert m["low"] >= m["seen"]  # never below the schools the review saw


def test_sampled_queue_holds_the_design(queue):
    folder = ReviewFolder(queue)
    q, items = folder.read_queue(), folder.read_items()
    assert q["order"] == "sample" and q["items"] == 16 == len(items)
    assert {s: v["n"] for s, v in q["sample"]["strata"].items() if v["n"]} == items["stratum"].value_counts().to_dict()
    assert items["inclusion_probability"].between(0, 1, inclusive="right").all()
    assert folder.page_path.is_file() and all((queue / p).is_file() for p in items["chip"])


def _decide(queue: Path, path: Path, truth, change: dict | None = None) -> Path:
    """The simulated mapper's decisions file for ``queue``, with ``change`` (id -> decision) applied."""
    return write_decisions(path, queue, {**answers_of(queue, truth), **(change or {})},
                           timestamp="2026-01-01T00:00:00Z")


def answers_of(queue: Path, truth) -> dict[str, str]:
    """The simulated mapper's answers for a queue on disk (its frame rebuilt from the scan)."""
    folder = ReviewFolder(queue)
    return answer_sample(build_frame(folder.read_queue()["scan"]), folder.read_items(), truth)


def test_estimate_cli_writes_estimate_json_and_a_table(queue, truth, tmp_path, capsys):
    dec = _decide(queue, tmp_path / "d.geojson", truth)
    out = tmp_path / "estimate.json"
    assert main(["estimate", "--queue", str(queue), "--decisions", str(dec), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "unlisted_schools" in printed and "95% interval" in printed
    record = json.loads(out.read_text())
    m = record["measures"]["unlisted_schools"]
    assert m["low"] <= m["estimate"] <= m["high"] and record["decided"] == 16
    assert main(["estimate", "--queue", str(queue), "--decisions", str(dec), "--out", str(out)]) == 2  # exists


def test_decisions_of_another_queue_are_refused_in_one_line(queue, scan, truth, tmp_path, capsys):
    other = tmp_path / "other"
    build_queue(ReviewConfig(scan_dir=scan, out_dir=other, device="cpu"), model=RedModel(), meta=META,
                selection=sample_items(scan, SampleConfig(size=16, seed=4)))
    foreign = _decide(other, tmp_path / "foreign.geojson", truth)
    out = tmp_path / "estimate.json"
    assert main(["estimate", "--queue", str(queue), "--decisions", str(foreign), "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "another queue" in err[0] and str(foreign) in err[0], err
    assert not out.exists()
    ranked = tmp_path / "ranked"  # a ranked queue cannot be estimated from
    build_queue(ReviewConfig(scan_dir=scan, out_dir=ranked, device="cpu", limit=2), model=RedModel(), meta=META)
    with pytest.raises(UserError, match="not a sample"):
        read_combined([foreign], ranked)


def test_unsure_answers_count_as_not_reviewed(queue, truth, tmp_path):
    folder = ReviewFolder(queue)
    items = folder.read_items()
    answers = answers_of(queue, truth)
    school = next(i for i, d in answers.items() if d == "school")
    quiet = next(i for i, d in answers.items() if d == "not_school")
    unsure = {school: "unsure", quiet: "unsure"}
    with_unsure = estimate(queue, [_decide(queue, tmp_path / "u.geojson", truth, unsure)], tmp_path / "u.json")
    without = estimate_measures(folder.read_queue()["sample"], items,
                                {i: d for i, d in answers.items() if i not in unsure})
    for name, m in with_unsure["measures"].items():  # the rule: as if the two were never reviewed
        assert (m["estimate"], m["low"], m["high"]) == (without[name]["estimate"], without[name]["low"],
                                                       without[name]["high"]), name
    assert with_unsure["counts"]["unsure"] == 2
    s = with_unsure["unsure_sensitivity"]
    assert s["unsure_as_school"]["schools"] >= with_unsure["measures"]["schools"]["estimate"] - 1e-9
    assert s["unsure_as_school"]["schools"] > s["unsure_as_not_school"]["schools"]


def test_several_mappers_combine_by_majority_and_report_disagreement(queue, truth, tmp_path):
    c = combine([{"a": "school", "b": "school", "c": "unsure"}, {"a": "school", "b": "not_school"},
                 {"a": "not_school", "d": "not_school"}])
    assert c.decisions == {"a": "school", "b": "unsure", "c": "unsure", "d": "not_school"}
    assert (c.multiple, c.disagreements, c.disagreement_rate) == (2, 2, 1.0)
    answers = answers_of(queue, truth)
    flip = next(i for i, d in answers.items() if d == "school")
    one = _decide(queue, tmp_path / "one.geojson", truth)
    two = _decide(queue, tmp_path / "two.geojson", truth, {flip: "not_school"})
    r = estimate(queue, [one, two], tmp_path / "two.json")
    assert (r["mappers"], r["disagreements"], r["items_with_several_votes"]) == (2, 1, 16)
    assert r["disagreement_rate"] == pytest.approx(1 / 16) and r["counts"]["unsure"] == 1  # the tie


def test_a_top_probability_review_counts_only_what_it_saw(frame, truth):
    from schoolvision.book.simulate_sample import top_probability_count

    top = top_probability_count(frame, truth, budget=4, match_distance=30.0)
    assert top == {"reviewed": 4, "unlisted_schools_found": 2, "schools_found": 4}  # C and D are not listed
    assert top_probability_count(frame, truth, budget=1, match_distance=30.0)["schools_found"] == 1


def test_the_books_comparison_puts_the_estimate_beside_the_truth(scan, truth):
    from schoolvision.book.simulate_sample import sample_vs_ranking

    table = sample_vs_ranking(scan, truth, budget=64, match_distance=30.0)  # every window: a census
    assert (table["estimate"] == table["truth"]).all() and (table["low"] == table["high"]).all()
    assert table.loc["unlisted_schools", "ranking"] == 2


def test_review_build_sample_cli(scan, small_run, tmp_path, capsys):
    out = tmp_path / "queue"
    args = ["review", "build", "--scan", str(scan), "--run", str(small_run), "--device", "cpu", "--sample", "8"]
    assert main([*args, "--out", str(out), "--seed", "2"]) == 0
    assert "by sample" in capsys.readouterr().out
    queue = ReviewFolder(out).read_queue()
    assert queue["order"] == "sample" and queue["sample"]["seed"] == 2 and queue["items"] == 8
    assert main([*args, "--out", str(tmp_path / "other"), "--limit", "3"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "--limit" in err[0] and not (tmp_path / "other").exists()


def test_a_stratum_without_decisions_is_flagged_and_bounds_the_interval(queue, truth, tmp_path):
    items = ReviewFolder(queue).read_items()
    answers = answers_of(queue, truth)
    some = {i: answers[i] for i in items.loc[items["source"] != "window", "id"]}  # no window decided
    r = estimate(queue, [write_decisions(tmp_path / "d.geojson", queue, some, timestamp="2026-01-01T00:00:00Z")],
                 tmp_path / "e.json")
    design = ReviewFolder(queue).read_queue()["sample"]["strata"]
    left = [s for s in design if s.startswith("window/") and design[s]["N"]]
    assert set(left) <= set(r["strata_without_decisions"]) and left
    m = r["measures"]["schools"]
    assert m["high"] >= m["estimate"] + sum(design[s]["N"] for s in left)  # every unreviewed window may hold one
