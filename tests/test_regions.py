"""Demo regions (``demo --region``) and the imperfect registry (``registry.csv`` + ``registry_truth.csv``)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from shapely.geometry import Point

from schoolvision.cli import main
from schoolvision.data.chips import ChipConfig, make_chips
from schoolvision.demo import REGIONS, generate_town, make_demo, region_style
from schoolvision.demo.registry import REGISTRY_COLUMNS, TRUTH_COLUMNS
from schoolvision.errors import UserError
from schoolvision.io.schools import read_schools

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def region_towns():
    """Town 0 of seed 0 in every region (512 px)."""
    return {name: generate_town(0, 512, 1.0, index=0, region=name) for name in REGIONS}


def test_three_regions_with_their_own_lookalikes():
    assert {"rural", "urban", "arid"} <= set(REGIONS)
    assert REGIONS["rural"].stream == 0 and len({r.stream for r in REGIONS.values()}) == len(REGIONS)
    for region in REGIONS.values():
        assert region.closest in region.negative_kinds and region.description
    assert REGIONS["urban"].negative_kinds != REGIONS["rural"].negative_kinds
    with pytest.raises(UserError, match="unknown region 'alpine'"):
        region_style("alpine")


def test_rural_is_the_original_demo(region_towns):
    """The default region draws the very towns the demo drew before regions existed."""
    assert np.array_equal(generate_town(0, 512, 1.0, index=0).image, region_towns["rural"].image)
    assert region_towns["rural"].place == "Dodoma, Tanzania"


@pytest.mark.parametrize("region", sorted(REGIONS))
def test_every_region_is_deterministic_and_well_formed(region, region_towns):
    town = region_towns[region]
    again = generate_town(0, 512, 1.0, index=0, region=region)
    assert np.array_equal(town.image, again.image) and town.style == again.style
    assert all(a.equals(b) for a, b in zip(town.schools, again.schools))
    assert not np.array_equal(town.image, generate_town(1, 512, 1.0, index=0, region=region).image)
    assert len(town.schools) >= 2
    left, top = town.transform.c, town.transform.f
    for poly in town.schools:
        minx, miny, maxx, maxy = poly.bounds
        assert minx >= left + 64 and maxx <= left + 512 - 64 and miny >= top - 512 + 64 and maxy <= top - 64
    assert {lm.kind for lm in town.landmarks} <= set(REGIONS[region].negative_kinds)
    assert all(not lm.polygon.intersects(s) for lm in town.landmarks for s in town.schools)
    assert town.image.std(axis=(1, 2)).min() > 10


def test_regions_differ_visibly(region_towns):
    """Colour statistics tell the regions apart: arid is sandy (red over blue), urban grey and dense."""
    mean = {name: t.image.reshape(3, -1).mean(1) for name, t in region_towns.items()}
    names = sorted(region_towns)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(mean[a] - mean[b]).max() > 8, (a, b, mean[a], mean[b])
    warmth = {name: m[0] - m[2] for name, m in mean.items()}  # red minus blue
    assert warmth["arid"] > warmth["urban"] + 15
    saturation = {name: (m.max() - m.min()) for name, m in mean.items()}
    assert saturation["urban"] < saturation["arid"] and saturation["urban"] < saturation["rural"]
    assert region_towns["urban"].style["houses"] > 1.5 * region_towns["rural"].style["houses"]  # dense blocks
    assert region_towns["urban"].place != region_towns["rural"].place != region_towns["arid"].place


def _half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


@pytest.fixture(scope="module")
def urban_demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("urban") / "demo"
    make_demo(out, towns=2, seed=1, size=768, region="urban")
    return out


def test_registry_rules_hold(urban_demo):
    registry = pd.read_csv(urban_demo / "registry.csv")
    truth = pd.read_csv(urban_demo / "registry_truth.csv", keep_default_na=False)
    meta = json.loads((urban_demo / "demo.json").read_text())
    schools = gpd.read_file(urban_demo / "schools.geojson")
    marks = gpd.read_file(urban_demo / "landmarks.geojson")
    assert tuple(registry.columns) == REGISTRY_COLUMNS and tuple(truth.columns) == TRUTH_COLUMNS
    assert meta["region"] == "urban" and meta["parameters"]["registry"]["missing"] == 0.4
    assert registry["registry_id"].is_unique and len(registry) == (truth["registry_id"] != "").sum()
    for town in meta["towns"]:
        scene = town["name"]
        rows = truth[truth["scene"] == scene]
        n = (schools["scene"] == scene).sum()
        counts = rows["status"].value_counts().to_dict()
        listed = n - _half_up(0.4 * n)
        assert counts.get("missing", 0) == _half_up(0.4 * n)
        assert counts.get("displaced", 0) == _half_up(0.3 * listed)
        assert counts.get("correct", 0) == listed - _half_up(0.3 * listed)
        assert counts.get("false", 0) == min(2, (marks["scene"] == scene).sum())
        assert town["registry"] == {s: counts.get(s, 0) for s in ("correct", "displaced", "missing", "false")}
        assert set(rows.loc[rows["status"] != "false", "school"]) == set(schools.loc[schools["scene"] == scene, "name"])
        local = gpd.GeoSeries.from_xy(rows["true_lon"], rows["true_lat"], crs=4326).to_crs(town["crs"])
        shown = rows["status"] != "missing"
        at = gpd.GeoSeries.from_xy(rows.loc[shown, "lon"].astype(float), rows.loc[shown, "lat"].astype(float),
                                   crs=4326).to_crs(town["crs"])
        offsets = at.distance(local[shown.to_numpy()].set_axis(at.index))
        status = rows.loc[shown, "status"]
        assert offsets[status == "displaced"].between(99.5, 500.5).all(), offsets
        assert (offsets[status != "displaced"] < 0.5).all()
        for _, row in rows[rows["status"] == "false"].iterrows():  # listed on a look-alike of its kind
            hit = marks[(marks["scene"] == scene) & (marks["kind"] == row["kind"])]
            assert hit.contains(Point(row["lon"], row["lat"])).any()
        # the registry says nothing of the truth: names and ids by town and row only
        assert (registry.loc[registry["scene"] == scene, "name"].str.fullmatch(rf"{scene} school \d+")).all()
    merged = registry.merge(truth, on="registry_id", suffixes=("", "_truth"))
    assert np.allclose(merged["lon"], merged["lon_truth"].astype(float))
    points = read_schools(urban_demo / "registry.csv", None)
    assert len(points) == len(registry) and set(points.geom_type) == {"Point"}


def test_registry_options_and_bad_values(tmp_path):
    out = tmp_path / "all_displaced"
    info = make_demo(out, towns=1, seed=2, size=512, region="arid", registry_missing=0, registry_displaced=1,
                     registry_false=0)
    truth = pd.read_csv(info.registry_truth)
    assert set(truth["status"]) == {"displaced"} and truth["offset_m"].between(100, 500).all()
    for bad in ({"registry_missing": 1.5}, {"registry_displaced": -0.1}, {"registry_false": -1}, {"region": "x"}):
        with pytest.raises(UserError):
            make_demo(tmp_path / "bad", towns=1, size=512, **bad)
    assert not (tmp_path / "bad").exists()


def test_cli_region_and_registry_are_deterministic(tmp_path):
    args = ["demo", "--towns", "1", "--size", "384", "--seed", "3", "--region", "arid", "--registry-false", "1"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert {Path("registry.csv"), Path("registry_truth.csv")} <= set(files)
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    meta = json.loads((tmp_path / "a" / "demo.json").read_text())
    assert meta["parameters"]["region"] == "arid" and meta["parameters"]["registry"]["false"] == 1
    with pytest.raises(SystemExit):
        main([*args[:-4], "--region", "alpine", "--out", str(tmp_path / "c")])


def _colour_baseline():
    spec = importlib.util.spec_from_file_location("color_baseline", ROOT / "benchmarks" / "color_baseline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.baseline


@pytest.mark.slow
@pytest.mark.parametrize("region", sorted(REGIONS))
def test_colour_alone_does_not_find_schools(region, tmp_path):
    """Per-chip colour histograms stay at or below 0.75 test AUPRC in every region (3 small towns)."""
    demo, chips = tmp_path / "demo", tmp_path / "chips"
    make_demo(demo, towns=3, seed=0, size=1024, region=region)
    make_chips([demo / "scenes"], demo / "schools.geojson", chips, ChipConfig(seed=0))
    scores = _colour_baseline()(demo, chips, region=region)
    assert scores["n_test_pos"] >= 5
    assert scores["auprc_test"] <= 0.75, scores
