"""Real-world inputs end to end: the demo's towns re-encoded the way a GIS analyst receives imagery and labels.

``fixtures.make_foreign_dataset`` writes drone RGBA GeoTIFFs in EPSG:4326 with transparent borders, a
uint16 4-band satellite scene, a ``gdal2tiles`` TMS folder, a school CSV with ``latitude,longitude``
columns and a GeoPackage whose first layer is every building. The tests run the command line
(``chips``, a one-epoch ``train``, ``scan``) and the book's chapters 1 and 2 on them, and check that
the outputs land where the schools are and that masked pixels stay nodata.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import nbformat
import numpy as np
import pytest
import rasterio
import yaml
from rasterio.warp import Resampling, reproject
from scipy.ndimage import binary_erosion
from shapely.geometry import box

from build_tools import book
from schoolvision.book.data import prepare_data
from schoolvision.cli import main
from schoolvision.cluster.runner import read_scene_preview
from schoolvision.data.sources import chips_scenes, held_out_scene
from schoolvision.errors import UserError
from schoolvision.io.folders import ChipsFolder, ScanFolder, read_probability

from fixtures import FOREIGN_NODATA_ROWS, FOREIGN_TOWNS, ForeignDataset, make_foreign_dataset

ROOT = Path(__file__).resolve().parents[1]
CHIP = 128


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> ForeignDataset:
    return make_foreign_dataset(tmp_path_factory.mktemp("foreign") / "received")


@pytest.fixture(scope="module")
def snapshot(foreign) -> dict[Path, bytes]:
    """Every input file's bytes before any command ran."""
    return {p: p.read_bytes() for p in sorted(foreign.root.rglob("*")) if p.is_file()}


def _cli(*args) -> int:
    return main([str(a) for a in args])


def _schools_of(foreign: ForeignDataset, source: str) -> gpd.GeoDataFrame:
    return foreign.schools[foreign.schools["source"] == source]


def _chip_boxes(chips, crs_column: str = "crs") -> list[gpd.GeoSeries]:
    """One GeoSeries of chip footprints per CRS of the index."""
    return [gpd.GeoSeries([box(r.minx, r.miny, r.maxx, r.maxy) for r in part.itertuples()], crs=crs)
            for crs, part in chips.groupby(crs_column)]


def _footprints_hit(chips, schools: gpd.GeoDataFrame) -> set[str]:
    """Names of the schools that some chip of ``chips`` overlaps."""
    hit = set()
    for boxes in _chip_boxes(chips):
        local = schools.to_crs(boxes.crs)
        for geom in boxes:
            hit |= set(local[local.intersects(geom)]["name"])
    return hit


def _white_share(path: Path) -> float:
    with rasterio.open(path) as ds:
        rgb = ds.read([1, 2, 3])
    return float(np.all(rgb >= 250, axis=0).mean())


# --- chips ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drone_chips(foreign, snapshot, tmp_path_factory) -> Path:
    """Chips of the three RGBA EPSG:4326 drone scenes, labelled from the CSV of school points."""
    out = tmp_path_factory.mktemp("drone") / "chips"
    assert _cli("chips", "--imagery", foreign.drone, "--schools", foreign.schools_csv, "--out", out,
                "--chip-size", CHIP, "--gsd", 1.0) == 0
    return out


def test_drone_chips_lie_over_the_schools_and_skip_the_transparent_border(foreign, drone_chips):
    folder = ChipsFolder(drone_chips)
    chips, meta = folder.read_index(), folder.read_meta()
    assert set(chips["split"]) == {"train", "val", "test"}  # three scenes: one per split
    schools = _schools_of(foreign, "drone")
    school_chips = chips[chips["label"] == "school"]
    # every drawn school of every drone town is under some school chip: the 4326 -> UTM georeference holds
    assert _footprints_hit(school_chips, schools) == set(schools["name"])
    assert all(_footprints_hit(school_chips[school_chips.index == i], schools) for i in school_chips.index)
    # transparent pixels (white under alpha 0) never make up a chip
    assert max(_white_share(drone_chips / p) for p in chips["path"]) <= 0.1 + 1e-9
    skipped = {k: v for k, v in meta["skipped"].items() if "nodata" in k or "mask" in k}
    assert sum(skipped.values()) > 0, meta["skipped"]  # windows on the border were seen and refused
    assert meta["schools_read"]["lonlat_columns"] == ["longitude", "latitude"]


def test_a_geopackage_with_a_buildings_layer_first_is_refused_then_read_by_layer_or_filter(foreign, tmp_path):
    err = tmp_path / "refused"
    assert _cli("chips", "--imagery", foreign.tms, "--schools", foreign.labels_gpkg, "--out", err) == 2
    assert not err.exists()
    by_layer, by_filter = tmp_path / "layer", tmp_path / "where"
    assert _cli("chips", "--imagery", foreign.tms, "--schools", foreign.labels_gpkg, "--schools-layer", "schools",
                "--out", by_layer, "--gsd", 1.0) == 0
    assert _cli("chips", "--imagery", foreign.tms, "--schools", foreign.labels_gpkg, "--schools-layer", "buildings",
                "--schools-where", "amenity=school", "--out", by_filter, "--gsd", 1.0) == 0
    a, b = ChipsFolder(by_layer).read_index(), ChipsFolder(by_filter).read_index()
    assert (a["label"] == "school").sum() == (b["label"] == "school").sum() > 0


def test_refused_geopackage_names_its_layers(foreign, tmp_path, capsys):
    assert _cli("chips", "--imagery", foreign.tms, "--schools", foreign.labels_gpkg, "--out", tmp_path / "x") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "buildings" in err and "schools" in err and "--schools-layer" in err and str(foreign.labels_gpkg) in err


def test_tms_tiles_are_placed_in_their_own_hemisphere(foreign, tmp_path):
    out = tmp_path / "tms_chips"
    assert _cli("chips", "--imagery", foreign.tms, "--schools", foreign.labels_gpkg, "--schools-layer", "schools",
                "--out", out, "--gsd", 1.0) == 0
    chips = ChipsFolder(out).read_index()
    schools = _schools_of(foreign, "tms")
    # read as XYZ the mosaic would lie in the other hemisphere and hold no school at all
    assert _footprints_hit(chips[chips["label"] == "school"], schools) == set(schools["name"])
    assert set(chips["scene"]) == {"tms"}  # one mosaic, read at the finest zoom of the pyramid


def test_uint16_four_band_scene_is_scaled_and_its_nodata_rows_skipped(foreign, tmp_path):
    out = tmp_path / "sat_chips"
    assert _cli("chips", "--imagery", foreign.satellite, "--schools", foreign.labels_gpkg, "--schools-layer",
                "schools", "--bands", "3,2,1", "--out", out) == 0
    folder = ChipsFolder(out)
    chips, meta = folder.read_index(), folder.read_meta()
    scene = meta["scenes"][foreign.satellite.stem]
    assert scene["pixels"]["rule"] == "percentile" and scene["pixels"]["dtype"] == "uint16"
    with rasterio.open(out / chips["path"].iloc[0]) as ds:
        assert ds.dtypes[0] == "uint8" and ds.count == 3
    nodata_share = np.clip(FOREIGN_NODATA_ROWS - chips["row_off"], 0, None) / CHIP
    assert (nodata_share <= 0.1).all()  # windows over the nodata strip are skipped
    schools = _schools_of(foreign, "satellite")
    assert _footprints_hit(chips[chips["label"] == "school"], schools) == set(schools["name"])


# --- train and scan ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drone_run(drone_chips, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    assert _cli("train", "--chips", drone_chips, "--out", out, "--epochs", 1, "--image-size", 64, "--batch-size", 16,
                "--no-pretrained", "--device", "cpu") == 0
    return out


def _alpha_on(grid_path: Path, source: Path) -> np.ndarray:
    """The drone scene's alpha band on a probability raster's grid (nearest), 0 outside the scene."""
    with rasterio.open(grid_path) as grid, rasterio.open(source) as src:
        alpha = np.zeros((grid.height, grid.width), np.uint8)
        reproject(src.read(4), alpha, src_transform=src.transform, src_crs=src.crs, dst_transform=grid.transform,
                  dst_crs=grid.crs, resampling=Resampling.nearest)
    return alpha


@pytest.mark.slow
@pytest.mark.parametrize("native", [False, True], ids=["run-gsd", "native"])
def test_scan_of_a_drone_scene_finds_its_schools_in_place_and_keeps_the_mask(foreign, drone_run, tmp_path, native):
    town = f"town_{FOREIGN_TOWNS['drone'][-1]:02d}"
    scene = foreign.drone / f"{town}.tif"
    out = tmp_path / "scan"
    extra = ["--native-resolution"] if native else []
    assert _cli("scan", "--run", drone_run, "--imagery", scene, "--schools", foreign.schools_csv, "--out", out,
                "--device", "cpu", "--no-map", *extra) == 0
    folder = ScanFolder(out)
    known = folder.read_layer("known_schools")
    assert set(known["name"]) == set(foreign.schools[foreign.schools["scene"] == town]["name"])
    probability = folder.probability_paths()[town]
    prob, _, _ = read_probability(probability, max_side=100_000)
    alpha = _alpha_on(probability, scene)
    masked = binary_erosion(alpha == 0, iterations=2)  # away from the edge, where resampling mixes the two
    valid = binary_erosion(alpha > 0, iterations=2)
    assert masked.any() and np.isnan(prob[masked]).all(), "masked pixels must be nodata in the probability raster"
    assert np.isfinite(prob[valid]).mean() > 0.95
    cands = folder.read_layer("candidates")
    if len(cands):  # a one-epoch model: where there are candidates, they lie on the scanned scene's data
        with rasterio.open(probability) as ds:
            inside = cands.to_crs(ds.crs).within(box(*ds.bounds))
        assert inside.all()


@pytest.mark.slow
def test_scan_of_the_uint16_scene_with_the_runs_bands_keeps_its_nodata_rows(foreign, drone_run, tmp_path):
    out = tmp_path / "scan_sat"
    assert _cli("scan", "--run", drone_run, "--imagery", foreign.satellite, "--bands", "3,2,1", "--schools",
                foreign.labels_gpkg, "--schools-layer", "schools", "--out", out, "--device", "cpu", "--no-map",
                "--native-resolution") == 0
    folder = ScanFolder(out)
    prob, _, _ = read_probability(folder.probability_paths()[foreign.satellite.stem], max_side=100_000)
    assert prob.shape == (512, 512)  # the scene's own grid
    assert np.isnan(prob[:FOREIGN_NODATA_ROWS]).all()
    assert np.isfinite(prob[FOREIGN_NODATA_ROWS + 2 :]).all()
    assert folder.read_evaluation()["schools"] == len(_schools_of(foreign, "satellite"))


def test_no_input_file_was_changed(foreign, snapshot, drone_chips):
    after = {p: p.read_bytes() for p in sorted(foreign.root.rglob("*")) if p.is_file()}
    assert after.keys() == snapshot.keys()
    assert all(after[p] == snapshot[p] for p in snapshot)


# --- the book on the foreign data --------------------------------------------------------------------


@pytest.mark.slow
def test_book_chapters_1_and_2_run_on_a_user_profile(foreign, tmp_path, monkeypatch):
    """``book execute --profile mine.yaml --out DIR``: the user's files, tiny settings, the book untouched."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    work = tmp_path / "mine"
    profile = tmp_path / "elsewhere" / "mine.yaml"
    profile.parent.mkdir()
    profile.write_text(yaml.safe_dump({
        "common": {"chips_dir": str(work / "chips"), "run_dir": str(work / "run"), "device": "cpu", "seed": 0,
                   "data_dir": str(work / "never_written")},
        "01_data": {"imagery": [str(foreign.drone)], "schools": str(foreign.schools_csv), "gsd": 1.0,
                    "chip_size": CHIP, "stride": CHIP // 2},
        "02_training": {"epochs": 1, "image_size": 64, "batch_size": 16, "pretrained": False},
    }))
    notebooks = {s.stem: book.notebook_of(s) for s in book.chapter_sources(ROOT)}
    before = {name: path.read_bytes() for name, path in notebooks.items()}
    book.execute(profile, only=["01_data", "02_training"], root=ROOT, output_dir=work / "notebooks")
    for name in ("01_data", "02_training"):
        executed = work / "notebooks" / f"{name}.ipynb"
        nb = nbformat.read(executed, as_version=4)
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
        assert not errors, errors
        injected = next(c for c in nb.cells if book.INJECTED_TAG in c.metadata.get("tags", []))
        assert str(work) in injected.source  # it ran on the profile's folders
    assert {name: path.read_bytes() for name, path in notebooks.items()} == before  # the book's own notebooks
    assert not (work / "never_written").exists()  # no demo drawn
    chips = ChipsFolder(work / "chips")
    assert chips.read_meta()["scenes"].keys() == {f"town_{i:02d}" for i in FOREIGN_TOWNS["drone"]}
    assert (work / "run" / "best.pt").is_file()


# --- the book's data step: the demo or the user's files, never one over the other -------------------


def test_the_demo_is_never_drawn_into_a_folder_of_the_users(tmp_path):
    mine = tmp_path / "my_data"
    mine.mkdir()
    (mine / "schools.geojson").write_text("mine")
    with pytest.raises(UserError, match="not a demo"):
        prepare_data(mine, towns=1, size=256)
    assert [p.name for p in mine.iterdir()] == ["schools.geojson"] and (mine / "schools.geojson").read_text() == "mine"


def test_user_files_are_read_where_they_are_and_chips_never_replace_a_users_folder(foreign, snapshot, tmp_path):
    data_dir = tmp_path / "data"
    data = prepare_data(data_dir, [foreign.drone], foreign.schools_csv, towns=1)
    assert data.demo is None and not data_dir.exists()
    assert data.describe().startswith("3 scenes, e.g. town_00.tif: 4 bands uint8")
    assert set(data.previews(max_side=64)) == {f"town_{i:02d}" for i in FOREIGN_TOWNS["drone"]}
    assert all(p.crs.startswith("EPSG:32") for p in data.previews(max_side=64).values())  # the chips' UTM zones
    theirs = tmp_path / "their_folder"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    with pytest.raises(UserError):
        data.make_chips(theirs, data.config(chip_size=CHIP, gsd=1.0))
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]
    with pytest.raises(UserError, match="unknown data option"):
        prepare_data(data_dir, [foreign.drone], foreign.schools_csv, layer="x")
    with pytest.raises(UserError, match="without imagery"):
        prepare_data(data_dir, "", foreign.schools_csv)


def test_later_chapters_read_the_scenes_the_chips_were_cut_from(foreign, drone_chips):
    scenes = chips_scenes(drone_chips)
    assert set(scenes) == {f"town_{i:02d}" for i in FOREIGN_TOWNS["drone"]}
    assert held_out_scene(drone_chips) == f"town_{FOREIGN_TOWNS['drone'][-1]:02d}"
    chips = ChipsFolder(drone_chips).read_index()
    preview = read_scene_preview(scenes["town_00"], max_pixels=128)
    assert preview.crs.to_string() == chips[chips["scene"] == "town_00"]["crs"].iloc[0]  # the chips' CRS, not 4326
    with pytest.raises(UserError, match="no such scene"):
        chips_scenes(drone_chips, require="town_99")


def test_a_profile_outside_book_params_is_accepted(tmp_path, monkeypatch):
    profile = tmp_path / "mine.yaml"
    profile.write_text("common: {seed: 3}\n01_data: {imagery: [a], schools: b.csv}\n")
    monkeypatch.chdir(tmp_path)
    assert book.profile_path("mine.yaml", ROOT) == profile
    assert book.profile_path(str(profile), ROOT) == profile
    assert book.chapter_parameters(profile, "01_data") == {"seed": 3, "imagery": ["a"], "schools": "b.csv"}
    with pytest.raises(UserError, match="profile not found"):
        book.profile_path("missing.yaml", ROOT)
