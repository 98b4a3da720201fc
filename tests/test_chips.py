"""Chip extraction: labels, spatial splits, georeference and pixels that match the scene."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.windows import Window

from schoolvision.data.chips import CSV_COLUMNS, ChipConfig, make_chips
from schoolvision.errors import UserError

from fixtures import write_scene

SMALL = {"chip_size": 64, "stride": 32}


@pytest.fixture(scope="module")
def chipped_towns(town_scenes, small_chips_summary):
    """(scenes, schools, chips folder, summary) of the shared towns, chipped with ``SMALL`` in conftest."""
    return *town_scenes, small_chips_summary.out_dir, small_chips_summary


def check_chips_match_scenes(out):
    """Every chip lies inside its scene and equals the scene's pixels at its window (native GSD)."""
    meta = json.loads((out / "dataset.json").read_text())
    frame = pd.read_csv(out / "chips.csv", keep_default_na=False)
    cs = meta["chip_size"]
    for scene, rows in frame.groupby("scene"):
        with rasterio.open(meta["scenes"][scene]["path"]) as src:
            b = src.bounds
            for r in rows.itertuples():
                assert b.left <= r.minx < r.maxx <= b.right and b.bottom <= r.miny < r.maxy <= b.top
                expected = src.read((1, 2, 3), window=Window(r.col_off, r.row_off, cs, cs))
                with rasterio.open(out / r.path) as chip:
                    assert chip.crs == src.crs and chip.shape == (cs, cs)
                    assert np.allclose(chip.bounds, (r.minx, r.miny, r.maxx, r.maxy))
                    assert np.array_equal(chip.read(), expected)
    return frame


def test_both_classes_in_every_split_and_test_is_a_whole_town(chipped_towns):
    _, _, out, summary = chipped_towns
    frame = pd.read_csv(out / "chips.csv", keep_default_na=False)
    assert list(frame.columns) == CSV_COLUMNS
    for split in ("train", "val", "test"):
        assert set(frame[frame.split == split].label) == {"school", "not_school"}
        assert summary.counts[split]["school"] > 0
    assert set(frame[frame.split == "test"].scene) == {"town_02"}
    assert set(frame[frame.split == "val"].scene) == {"town_01"}
    for r in frame.itertuples():
        assert r.path == f"{r.split}/{r.label}/{r.chip_id}.tif" and (out / r.path).is_file()
    school = frame[frame.label == "school"]
    assert ((school.school_fraction >= 0.5) | (school.school_cover >= 0.25)).all()
    assert (frame[frame.label == "not_school"].school_cover == 0).all()
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["counts"] == summary.counts and meta["schools"] == "schools.geojson" and meta["gsd"] == 1.0
    assert (out / "schools.geojson").is_file()


def test_chip_pixels_and_bounds_equal_the_scene(chipped_towns):
    check_chips_match_scenes(chipped_towns[2])


def test_train_negatives_undersampled(chipped_towns):
    frame = pd.read_csv(chipped_towns[2] / "chips.csv", keep_default_na=False)
    train = frame[frame.split == "train"]
    assert (train.label == "not_school").sum() <= 3 * (train.label == "school").sum()
    assert chipped_towns[3].skipped.get("ambiguous", 0) > 0


def test_same_inputs_give_same_chips_and_reuse(chipped_towns, tmp_path):
    scenes, schools, out, _ = chipped_towns
    again = make_chips([scenes], schools, tmp_path / "again", ChipConfig(**SMALL))
    assert (tmp_path / "again" / "chips.csv").read_bytes() == (out / "chips.csv").read_bytes()
    assert make_chips([scenes], schools, out, ChipConfig(**SMALL)).reused
    assert not again.reused


def test_single_scene_split_by_blocks_without_overlap(tmp_path):
    schools_px = [(r, c, 40) for r in (30, 200, 330) for c in (30, 200, 330)]
    polys = write_scene(tmp_path / "one.tif", size=400, schools_px=schools_px)
    import geopandas as gpd

    gpd.GeoDataFrame(geometry=polys, crs="EPSG:32636").to_file(tmp_path / "s.geojson", driver="GeoJSON")
    out = tmp_path / "chips"
    make_chips([tmp_path / "one.tif"], tmp_path / "s.geojson", out, ChipConfig(**SMALL, block_size=128))
    frame = check_chips_match_scenes(out)
    assert set(frame.split) == {"train", "val", "test"}
    boxes = {s: frame[frame.split == s][["minx", "miny", "maxx", "maxy"]].to_numpy() for s in ("train", "val", "test")}
    for a in ("train", "val", "test"):
        for b in ("train", "val", "test"):
            if a < b:
                for p in boxes[a]:
                    q = boxes[b]
                    overlap = (np.minimum(p[2], q[:, 2]) > np.maximum(p[0], q[:, 0])) & (
                        np.minimum(p[3], q[:, 3]) > np.maximum(p[1], q[:, 1]))
                    assert not overlap.any()


def test_interrupted_run_leaves_nothing(chipped_towns, tmp_path, monkeypatch):
    import schoolvision.data.scenes as scenes_mod

    calls = {"n": 0}
    real = scenes_mod.write_geotiff

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(scenes_mod, "write_geotiff", failing)
    with pytest.raises(KeyboardInterrupt):
        make_chips([chipped_towns[0]], chipped_towns[1], tmp_path / "out", ChipConfig(**SMALL))
    assert list(tmp_path.iterdir()) == []


def test_scene_overrides_and_unknown_scene(chipped_towns, tmp_path):
    scenes, schools, _, _ = chipped_towns
    config = ChipConfig(**SMALL, test_scenes=("town_00",), val_scenes=("town_02",))
    s = make_chips([scenes], schools, tmp_path / "o", config)
    assert s.scenes["town_00"]["split"] == "test" and s.scenes["town_01"]["split"] == "train"
    with pytest.raises(UserError, match="unknown scenes"):
        make_chips([scenes], schools, tmp_path / "p", ChipConfig(**SMALL, test_scenes=("nope",)))


def test_demo_chips_both_classes_per_split_and_pixels_match(request):
    pytest.importorskip("schoolvision.demo")
    out = request.getfixturevalue("chips_dir")
    frame = check_chips_match_scenes(out)
    meta = json.loads((out / "dataset.json").read_text())
    scenes = sorted(meta["scenes"])
    for split in ("train", "val", "test"):
        assert set(frame[frame.split == split].label) == {"school", "not_school"}
    assert set(frame[frame.split == "test"].scene) == {scenes[-1]}
    assert meta["scenes"][scenes[-1]]["split"] == "test"


def test_data_figures_draw_what_the_caller_read(chipped_towns):
    import geopandas as gpd
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from schoolvision.data.dataset import ChipDataset
    from schoolvision.io.folders import ChipsFolder
    from schoolvision.io.preview import read_rgb_preview, read_rgb_zooms
    from schoolvision.plotting import data as plots

    scenes, schools_file, out, _ = chipped_towns
    paths = sorted(scenes.glob("*.tif"))
    previews = {p.stem: read_rgb_preview(p, max_side=64) for p in paths}
    schools = gpd.read_file(schools_file)
    on_first = plots.schools_in(schools, previews[paths[0].stem])
    assert len(on_first) == 2 and on_first.crs == previews[paths[0].stem].crs
    fig = plots.plot_towns(previews, schools)
    assert [ax.get_title() for ax in fig.axes[: len(paths)]] == [f"{p.stem}: 2 schools" for p in paths]
    chips = ChipsFolder(out).read_index()
    fig = plots.plot_split_map(chips, previews)
    assert sum(isinstance(p, Rectangle) for ax in fig.axes for p in ax.patches) == len(chips)
    zooms = read_rgb_zooms(paths[0], on_first.geometry, pad=10.0)
    for zoom, geom in zip(zooms, on_first.geometry):
        left, right, bottom, top = zoom.extent
        assert left <= geom.bounds[0] and geom.bounds[2] <= right and bottom <= geom.bounds[1] and geom.bounds[3] <= top
    assert len(plots.plot_zooms(zooms, on_first, ["a", "b"]).axes) == 2
    examples, images = ChipDataset(out, split="train").sample_by_class(per_class=2, seed=0)
    fig = plots.plot_chip_examples(examples, images, title="train")
    assert fig.axes[0].get_ylabel().startswith("school (") and fig.axes[2].get_ylabel().startswith("not_school (")
    plt.close("all")


# --- chips planned for the data: split blocks and stride left at None ----------------------------------


def write_small_area(tmp_path, schools_px, size=384):
    """One scene of ``size`` m at 1 m/px with bright-square schools, and its schools file."""
    import geopandas as gpd

    polys = write_scene(tmp_path / "area.tif", size=size, schools_px=schools_px)
    gpd.GeoDataFrame({"name": [f"s{i}" for i in range(len(polys))]}, geometry=polys,
                     crs="EPSG:32636").to_file(tmp_path / "s.geojson", driver="GeoJSON")
    return tmp_path / "area.tif", tmp_path / "s.geojson"


SPREAD = [(r, c, 30) for r in (30, 170, 310) for c in (30, 170, 310)]  # 9 schools over 384 m


def test_planned_blocks_give_every_split_a_school(tmp_path):
    scene, schools = write_small_area(tmp_path, SPREAD)
    # the old fixed block (512 px) is the whole area: every school in train, val and test empty
    fixed = make_chips([scene], schools, tmp_path / "fixed", ChipConfig(**SMALL, block_size=512))
    assert set(pd.read_csv(tmp_path / "fixed" / "chips.csv").split) == {"train"}
    # its warnings name the block size that fixes it, and that size does
    [value] = {w.split("--block-size ")[1].split()[0] for w in fixed.warnings}
    again = make_chips([scene], schools, tmp_path / "again", ChipConfig(**SMALL, block_size=float(value)))
    assert not again.warnings and set(pd.read_csv(tmp_path / "again" / "chips.csv").split) == {"train", "val", "test"}
    summary = make_chips([scene], schools, tmp_path / "planned", ChipConfig(**SMALL))
    frame = check_chips_match_scenes(tmp_path / "planned")
    assert set(frame[frame.label == "school"].split) == {"train", "val", "test"} and not summary.warnings
    meta = json.loads((tmp_path / "planned" / "dataset.json").read_text())
    assert meta["plan"]["chosen"] == ["block_size"] and 128 <= meta["block_size_m"] < 384
    assert meta["config"]["block_size"] is None  # what the user set; the plan records what was used
    assert all(meta["plan"]["schools_by_split"][s] >= 1 for s in ("train", "val", "test"))
    assert f"stride 32 px, split blocks of {meta['block_size_m']:g} m (planned)" in str(summary)


def test_planned_stride_gives_a_small_area_more_chips(tmp_path):
    scene, schools = write_small_area(tmp_path, SPREAD)
    make_chips([scene], schools, tmp_path / "c", ChipConfig(chip_size=64))
    meta = json.loads((tmp_path / "c" / "dataset.json").read_text())
    assert meta["stride"] < 32 and meta["plan"]["chosen"] == ["stride", "block_size"]  # 11 x 11 windows at 32
    assert ((384 - 64) // meta["stride"] + 1) ** 2 >= 500


def test_splits_that_cannot_hold_a_school_stop_with_what_to_do(tmp_path):
    clustered = [(20, 20, 20), (20, 60, 20), (60, 20, 20), (60, 60, 20)]  # 4 schools in one corner
    scene, schools = write_small_area(tmp_path, clustered)
    with pytest.raises(UserError) as err:
        make_chips([scene], schools, tmp_path / "c", ChipConfig(**SMALL))
    line = str(err.value)
    assert "\n" not in line and not (tmp_path / "c").exists()
    assert "--block-size" in line or "too close together" in line, line
    with pytest.raises(UserError, match=r"--block-size 40 m is smaller than one chip .*--block-size 64"):
        make_chips([scene], schools, tmp_path / "c", ChipConfig(**SMALL, block_size=40))
