"""Registry audit, review queue, review page and decisions import (issue 15).

One red-roof town (``fixtures.write_registry_town``) with an imperfect registry is scanned once with
the scan tests' red-roof model (P(school) rises with the share of red pixels), so which registry
school is confirmed, missing or displaced is known. The browser test drives Debian's Chromium over
the DevTools protocol as ``benchmarks/browser_check.py`` does (no browser download).
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pytest
import torch

from schoolvision.cli import main
from schoolvision.errors import UserError
from schoolvision.io.folders import ReviewFolder, ScanFolder
from schoolvision.io.schools import read_schools
from schoolvision.model.checkpoint import CheckpointMeta
from schoolvision.review.decisions import import_decisions, latest, read_decisions
from schoolvision.review.queue import ReviewConfig, build_queue, order_items
from schoolvision.scan.runner import ScanConfig, run_scan

from fixtures import CHROMIUM, REVIEW_DISPLACED_M, page_in_chromium, write_registry_town

ROOT = Path(__file__).resolve().parents[1]


class RedModel(torch.nn.Module):
    """The scan tests' red-roof model: logit of 'school' = 40 * (share of red pixels - 0.05)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)  # a target layer for grad-CAM
        self.target_layer = self.conv
        self.target_layer_name = "conv"

    def forward(self, x):
        red = ((x[:, 0] > 0.8) & (x[:, 1] < 0.3)).float().mean((1, 2))
        s = 40 * (red - 0.05) + self.conv(x).mean((1, 2, 3)) * 0
        return torch.stack([torch.zeros_like(s), s], 1)


META = CheckpointMeta(backbone="efficientnet_lite0", image_size=64, chip_size=64, gsd=1.0, threshold=0.5)


@pytest.fixture(scope="module")
def town(tmp_path_factory):
    """(scene, registry.csv, scan folder) of the registry town, scanned with ``--registry``."""
    root = tmp_path_factory.mktemp("registry_town")
    scene, registry = write_registry_town(root)
    run_scan(ScanConfig(run=root, imagery=[scene], out_dir=root / "scan", registry=registry, runtime="torch",
                        device="cpu", progress=False, make_map=False), model=RedModel(), meta=META)
    return scene, registry, root / "scan"


@pytest.fixture(scope="module")
def queue(town, tmp_path_factory):
    """The review queue of the scan (uncertainty order, every item)."""
    out = tmp_path_factory.mktemp("queue") / "queue"
    build_queue(ReviewConfig(scan_dir=town[2], out_dir=out, device="cpu"), model=RedModel(), meta=META)
    return out


# --- registry audit ---------------------------------------------------------------------------


def test_registry_audit_counts_missing_and_displaced_schools(town):
    _, _, scan = town
    counts = ScanFolder(scan).read_summary()["registry"]
    assert (counts["registry_schools"], counts["outside_scenes"], counts["in_scenes"]) == (5, 1, 4)
    assert (counts["confirmed"], counts["not_seen"]) == (2, 2)
    assert (counts["candidates"], counts["candidates_registry"], counts["candidates_new"]) == (4, 2, 2)
    table = ScanFolder(scan).read_registry_audit()
    reg = table[table["kind"] == "registry"].set_index("name")
    assert reg.loc["A listed", "status"] == "confirmed" and reg.loc["B listed", "status"] == "confirmed"
    assert reg.loc["C listed", "status"] == "not_seen" and reg.loc["closed", "status"] == "not_seen"
    assert "far away" not in reg.index
    # the displaced listing's nearest new candidate is the real school C, about REVIEW_DISPLACED_M away
    assert abs(reg.loc["C listed", "nearest_m"] - REVIEW_DISPLACED_M) < 40
    cand = table[table["kind"] == "candidate"]
    assert sorted(cand["status"]) == ["new", "new", "registry", "registry"]
    assert set(cand.loc[cand["status"] == "registry", "name"]) == {"A listed", "B listed"}
    layers = set(gpd.list_layers(scan / "candidates.gpkg")["name"])
    assert {"registry_confirmed", "registry_not_seen", "candidates_registry", "candidates_new"} <= layers
    assert len(ScanFolder(scan).read_layer("candidates_new")) == 2


def test_bad_registry_is_refused_before_anything_is_scanned(town, tmp_path):
    scene, _, _ = town
    bad = tmp_path / "registry.csv"
    bad.write_text("name,where\nA,somewhere\n")
    out = tmp_path / "scan"
    with pytest.raises(UserError, match="registry.csv"):
        run_scan(ScanConfig(run=tmp_path, imagery=[scene], out_dir=out, registry=bad, runtime="torch", device="cpu",
                            progress=False), model=RedModel(), meta=META)
    assert not out.exists()


# --- review queue -------------------------------------------------------------------------------


def test_order_rules():
    items = [{"id": i, "probability": p} for i, p in (("a", 0.9), ("b", 0.45), ("c", 0.55), ("d", 0.1), ("e", 0.5))]
    assert [it["id"] for it in order_items(items, "uncertainty", 0.5)] == ["e", "c", "b", "a", "d"]
    assert [it["id"] for it in order_items(items, "probability", 0.5)] == ["a", "c", "e", "b", "d"]
    assert [it["id"] for it in order_items(items, "uncertainty", 0.8)] == ["a", "c", "e", "b", "d"]
    with pytest.raises(UserError, match="--order"):
        ReviewConfig(scan_dir=Path("s"), out_dir=Path("o"), order="random")


def test_queue_holds_candidates_near_misses_and_unseen_registry_schools(town, queue):
    folder = ReviewFolder(queue)
    q, items = folder.read_queue(), folder.read_items()
    assert q["counts"] == {"candidate": 4, "below_threshold": 2, "registry": 2} and q["items"] == len(items) == 8
    p = items["probability"].to_numpy()
    assert (abs(p[:-1] - 0.5) <= abs(p[1:] - 0.5)).all()  # uncertainty: nearest the threshold first
    assert list(items["position"]) == list(range(1, 9)) and items["id"].is_unique
    reg = items[items["source"] == "registry"]
    assert set(reg["name"]) == {"C listed", "closed"} and set(reg["registry_status"]) == {"not_seen"}
    cand = items[items["source"] == "candidate"]
    assert sorted(cand["registry_status"]) == ["new", "new", "registry", "registry"]
    assert (items.loc[items["source"] == "below_threshold", "probability"] < 0.5).all()
    for item_id in items["id"]:
        for kind in ReviewFolder.IMAGE_KINDS:
            assert folder.read_image(item_id, kind)[:2] == b"\xff\xd8"  # JPEG
    page = folder.page_path.read_text()
    assert q["queue_id"] in page and "http://" not in page and "https://" not in page  # offline
    assert page.count("data:image/jpeg;base64,") == 3 * len(items)


def test_probability_order_limit_and_stable_ids(town, queue, tmp_path):
    out = tmp_path / "by_probability"
    summary = build_queue(ReviewConfig(scan_dir=town[2], out_dir=out, order="probability", limit=5, device="cpu"),
                          model=RedModel(), meta=META)
    items = ReviewFolder(out).read_items()
    assert summary.items == len(items) == 5
    assert list(items["probability"]) == sorted(items["probability"], reverse=True)
    assert set(items["source"]) == {"candidate", "below_threshold"}  # the 4 schools first, then the best near miss
    every = ReviewFolder(queue).read_items().set_index("id")
    assert set(items["id"]) <= set(every.index)  # the same place in the same scan: the same id
    for _, it in items.iterrows():
        assert (every.loc[it["id"], "lon"], every.loc[it["id"], "lat"]) == (it["lon"], it["lat"])


def test_review_build_cli_loads_the_run(town, small_run, tmp_path, capsys):
    out = tmp_path / "queue"
    assert main(["review", "build", "--scan", str(town[2]), "--out", str(out), "--run", str(small_run),
                 "--device", "cpu", "--limit", "3"]) == 0
    assert "queued 3 item(s)" in capsys.readouterr().out
    assert len(ReviewFolder(out).read_items()) == 3
    assert main(["review", "build", "--scan", str(town[2]), "--out", str(out), "--run", str(small_run)]) == 2
    assert "not empty" in capsys.readouterr().err


# --- decisions import ---------------------------------------------------------------------------


def decisions_file(path: Path, rows) -> Path:
    """A decisions export: rows of (id, decision, timestamp)."""
    features = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 0]},
                 "properties": {"id": i, "decision": d, "timestamp": t}} for i, d, t in rows]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_import_turns_decisions_into_labels_with_provenance(queue, tmp_path):
    ids = list(ReviewFolder(queue).read_items()["id"])
    dec = decisions_file(tmp_path / "d.geojson", [
        (ids[0], "school", "2026-01-01T10:00:00Z"), (ids[1], "not_school", "2026-01-01T10:00:01Z"),
        (ids[2], "unsure", "2026-01-01T10:00:02Z"),
        (ids[0], "not_school", "2026-01-01T09:00:00Z"),  # an older decision for item 0: the later one wins
        (ids[1], "school", "2026-01-01T10:05:00Z"),  # a newer one for item 1: it wins
    ])
    out = tmp_path / "labels.geojson"
    s = import_decisions(dec, queue, out)
    assert (s.decisions, s.duplicates, s.labels) == (3, 2, 2)
    assert s.counts == {"school": 2, "not_school": 0, "unsure": 1}
    schools = read_schools(out, point_buffer_m=None, where="label=school")
    assert len(schools) == 2 and set(gpd.read_file(out)["item_id"]) == {ids[0], ids[1]}
    labels = gpd.read_file(out)
    assert set(labels["queue_id"]) == {ReviewFolder(queue).read_queue()["queue_id"]}
    assert {"decided_at", "provenance", "source", "probability"} <= set(labels.columns)


@pytest.mark.parametrize("case, message", [
    ("foreign", "2 of 3 decided items are not in the queue"),
    ("empty", "holds no decision"),
    ("unknown", "not one of school, not_school, unsure"),
    ("not_json", "not readable JSON"),
])
def test_import_refuses_bad_decisions(queue, tmp_path, capsys, case, message):
    ids = list(ReviewFolder(queue).read_items()["id"])
    path = tmp_path / "decisions.geojson"
    if case == "foreign":
        decisions_file(path, [(ids[0], "school", "2026-01-01T10:00:00Z"), ("0123456789ab", "school", "2026-01-01"),
                              ("ba9876543210", "not_school", "2026-01-01")])
    elif case == "empty":
        decisions_file(path, [])
    elif case == "unknown":
        decisions_file(path, [(ids[0], "maybe", "2026-01-01T10:00:00Z")])
    else:
        path.write_text("{not json")
    out = tmp_path / "labels.geojson"
    assert main(["review", "import", str(path), "--queue", str(queue), "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and message in err[0] and str(path) in err[0], err
    assert not out.exists()


def test_import_never_overwrites_a_file_unasked(queue, tmp_path):
    ids = list(ReviewFolder(queue).read_items()["id"])
    dec = decisions_file(tmp_path / "d.geojson", [(ids[0], "school", "2026-01-01T10:00:00Z")])
    out = tmp_path / "labels.geojson"
    out.write_text("mine")
    with pytest.raises(UserError, match="exists"):
        import_decisions(dec, queue, out)
    assert out.read_text() == "mine"
    assert import_decisions(dec, queue, out, overwrite=True).labels == 1


# --- the page in a browser --------------------------------------------------------------------


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Chromium")
def test_review_page_in_headless_chromium(queue, tmp_path, capsys):
    """Five decisions by key, a reload keeps them, Export downloads them, import gives exactly five labels."""
    pytest.importorskip("websocket")
    with page_in_chromium(ReviewFolder(queue).page_path, tmp_path / "downloads") as tab:
        assert tab.value("document.getElementById('progress').textContent").startswith("item 1 of 8")
        # item 1 school, item 2 not (then back, and school after all), 3 not, 4 school, 5 not
        for key in ("s", "n", "Backspace", "1", "2", "s", "n"):
            tab.press(key)
        progress = tab.value("document.getElementById('progress').textContent")
        assert progress.endswith("5 decided") and progress.startswith("item 6 of 8"), progress
        tab.load("Page.reload")
        assert tab.value("document.getElementById('progress').textContent").endswith("5 decided")
        tab.value("document.getElementById('export').click()")
        exported = tab.downloaded("decisions.geojson")
    items = ReviewFolder(queue).read_items()
    out = tmp_path / "labels.geojson"
    assert main(["review", "import", str(exported), "--queue", str(queue), "--out", str(out)]) == 0
    assert "5 decision(s): 3 school, 2 not a school, 0 unsure" in capsys.readouterr().out
    labels = gpd.read_file(out)
    assert list(labels["item_id"]) == list(items["id"][:5])
    assert list(labels["label"]) == ["school", "school", "not_school", "school", "not_school"]


def test_simulated_mapper_round_trip(town, queue, tmp_path):
    """The book's simulated mapper: ground-truth answers written as an export, imported as labels."""
    from schoolvision.book.simulate import simulate_review

    from fixtures import REVIEW_SCHOOLS_PX, UTM, pixel_boxes

    truth = gpd.GeoDataFrame(geometry=pixel_boxes(REVIEW_SCHOOLS_PX.values()), crs=UTM)
    mapped = simulate_review(queue, truth, tmp_path / "decisions.geojson", k=6, match_distance=30.0)
    answers = mapped.by_item
    items = ReviewFolder(queue).read_items().head(6).set_index("id")
    assert list(answers) == list(items.index)
    schools = {i for i, d in answers.items() if d == "school"}
    assert schools == set(items.index[items["source"] == "candidate"])  # red roofs only, no listing off by 200 m
    decisions = read_decisions(mapped.decisions)  # the reader of `review import`
    assert [(d["id"], d["decision"]) for d in decisions] == list(answers.items())
    assert latest(decisions)[1] == 0  # one second apart, none replaced
    again = simulate_review(queue, truth, tmp_path / "again.geojson", k=6, match_distance=30.0)
    assert again.decisions.read_bytes() == mapped.decisions.read_bytes()  # fixed timestamps: the same file
    s = import_decisions(mapped.decisions, queue, tmp_path / "labels.geojson")
    assert s.labels == len(answers) and s.counts["school"] == len(schools)


def test_audit_without_candidates_or_registry_schools_in_the_scenes():
    from schoolvision.scan.registry import audit_registry

    empty = gpd.GeoDataFrame({"rank": [], "scene": [], "max_prob": []}, geometry=[], crs="EPSG:4326")
    registry = gpd.GeoDataFrame({"school_id": [0], "name": ["far"]}, geometry=gpd.points_from_xy([10.0], [10.0]),
                                crs="EPSG:4326")
    counts, layers, table = audit_registry(empty, [], registry, 50.0)
    assert (counts["outside_scenes"], counts["confirmed"], counts["candidates_new"]) == (1, 0, 0)
    assert table.empty and all(len(v) == 0 for v in layers.values())


def test_scan_cli_registry(town, small_run, tmp_path, capsys):
    scene, registry, _ = town
    out = tmp_path / "scan"
    args = ["scan", "--run", str(small_run), "--imagery", str(scene), "--device", "cpu", "--runtime", "torch",
            "--no-map", "--no-cam"]
    assert main([*args, "--out", str(out), "--registry", str(registry)]) == 0
    assert "registry 4 school(s) in the scenes" in capsys.readouterr().out
    assert (out / "registry_audit.csv").is_file()
    missing = tmp_path / "nowhere.csv"
    assert main([*args, "--out", str(tmp_path / "other"), "--registry", str(missing)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and str(missing) in err[0] and not (tmp_path / "other").exists()


@pytest.mark.parametrize("extra, message", [([], "scan.json not found"), (["--limit", "0"], "--limit")])
def test_review_build_refuses_bad_input(tmp_path, capsys, extra, message):
    out = tmp_path / "queue"
    assert main(["review", "build", "--scan", str(tmp_path / "no_scan"), "--out", str(out), *extra]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()
