"""Output folders and small errors: no command writes into or around its inputs, ``--overwrite``
removes only what schoolvision wrote (its manifest), killed runs leave no temporaries behind, numeric
options are range-checked, and every error is one line, exit 2, no traceback.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest
import torch
from shapely.geometry import Point

from schoolvision.cli import build_parser, main
from schoolvision.data.chips import ChipConfig
from schoolvision.errors import UserError
from schoolvision.io import manifest
from schoolvision.io.atomic import atomic_path, write_text
from schoolvision.io.folders import prepare_output
from schoolvision.io.imagery import list_sources
from schoolvision.model.backbones import build_model
from schoolvision.model.checkpoint import CheckpointMeta, save_checkpoint
from schoolvision.scan.runner import ScanConfig
from schoolvision.train.fit import TrainConfig, fit

from fixtures import make_towns, write_red_scene, write_scene

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--chip-size", "64", "--stride", "32"]


def snapshot(root: Path) -> dict[str, str]:
    """Every file (hash) and folder under ``root``: equal snapshots = nothing written, changed or deleted."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def run_cli_warned(capsys, *argv) -> tuple[int, str, list[str]]:
    """(exit code, stderr, the warnings' messages) of one command (pytest records warnings, so they are not printed)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def assert_one_line(rc: int, err: str, *names) -> str:
    """Exit 2, one line on stderr naming each of ``names``, no traceback; the line."""
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def project(tmp_path_factory, small_chips, small_run):
    """A user's project: one town with its schools, plus a chips folder and a run (copies: a failed guard
    must not damage the shared fixtures)."""
    root = tmp_path_factory.mktemp("project") / "proj"
    make_towns(root, n=1)
    shutil.copytree(small_chips, root / "chips")
    shutil.copytree(small_run, root / "run")
    return root


@pytest.fixture(scope="module")
def scan_run(tmp_path_factory) -> Path:
    """A run folder with an untrained efficientnet_lite0 at 64 px (scans a 200 px scene in a second)."""
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("scan_run") / "run"
    meta = CheckpointMeta(backbone="efficientnet_lite0", image_size=64, chip_size=64, gsd=1.0, threshold=0.5)
    save_checkpoint(run / "best.pt", build_model("efficientnet_lite0", pretrained=False), meta)
    return run


# --- no output into or around an input --------------------------------------------------------


def test_chips_out_holding_the_inputs_loses_nothing(tmp_path, capsys):
    """The reported data loss: --out proj --overwrite where proj holds the scenes and the schools."""
    scenes, schools = make_towns(tmp_path / "proj", n=1)
    (tmp_path / "proj" / "notes.txt").write_text("the user's")
    before = snapshot(tmp_path)
    rc, _, err = run_cli(capsys, "chips", "--imagery", scenes, "--schools", schools, "--out", tmp_path / "proj",
                         "--overwrite", *SMALL)
    line = assert_one_line(rc, err, tmp_path / "proj", scenes)
    assert "--out contains the input --imagery" in line
    assert snapshot(tmp_path) == before  # every input byte-identical, nothing added


def _command(name: str, p: Path) -> tuple[list, str, Path]:
    """(argv without --out, the input option to place --out around, that input's path) of each command."""
    return {
        "chips": (["chips", "--imagery", p / "scenes", "--schools", p / "schools.geojson", *SMALL],
                  "--imagery", p / "scenes"),
        "train": (["train", "--chips", p / "chips", "--device", "cpu", "--epochs", "1"], "--chips", p / "chips"),
        "explain": (["explain", "--run", p / "run", "--chips", p / "chips", "--method", "gradcam", "--device", "cpu",
                     "--runtime", "torch"],
                    "--run", p / "run"),
        "cluster": (["cluster", "--run", p / "run", "--chips", p / "chips", "--device", "cpu"], "--chips",
                    p / "chips"),
        "scan": (["scan", "--run", p / "run", "--imagery", p / "scenes", "--device", "cpu"], "--imagery",
                 p / "scenes"),
    }[name]


@pytest.mark.parametrize("command", ["chips", "train", "explain", "cluster", "scan"])
@pytest.mark.parametrize("where", ["is", "lies inside", "contains"])
def test_out_may_not_be_hold_or_lie_inside_an_input(project, capsys, command, where):
    argv, option, path = _command(command, project)
    out = {"is": path, "lies inside": path / "out", "contains": path.parent}[where]
    before = snapshot(project)
    rc, _, err = run_cli(capsys, *argv, "--out", out, "--overwrite")
    line = assert_one_line(rc, err, out, "--out")
    assert f"--out {where} the input --" in line, line
    if where != "contains":  # the project folder holds several inputs: the first one is named
        assert f"{option} {path}" in line
    assert snapshot(project) == before


def test_export_refuses_a_file_inside_the_run_and_a_folder(project, tmp_path, capsys):
    pytest.importorskip("onnx")
    before = snapshot(project)
    rc, _, err = run_cli(capsys, "export", "--run", project / "run", "--out", project / "run" / "model.onnx")
    assert "--out lies inside the input --run" in assert_one_line(rc, err, project / "run" / "model.onnx")
    (tmp_path / "m.onnx").mkdir()
    rc, _, err = run_cli(capsys, "export", "--run", project / "run", "--out", tmp_path / "m.onnx")
    assert "is a folder" in assert_one_line(rc, err, tmp_path / "m.onnx")
    assert snapshot(project) == before


# --- --out naming a file ------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["demo", "chips", "train", "explain", "cluster", "scan"])
@pytest.mark.parametrize("under", [False, True])
def test_out_naming_a_file_is_one_line(project, tmp_path, capsys, command, under):
    target = tmp_path / "notes.txt"
    target.write_text("the user's")
    out = target / "sub" if under else target
    argv = ["demo", "--towns", "1"] if command == "demo" else _command(command, project)[0]
    before = snapshot(tmp_path)
    rc, _, err = run_cli(capsys, *argv, "--out", out, "--overwrite")
    line = assert_one_line(rc, err, out)
    assert ("lies under the file" if under else "exists and is not a folder") in line
    assert snapshot(tmp_path) == before


# --- --overwrite: only what schoolvision wrote ----------------------------------------------------


def test_chips_overwrite_keeps_foreign_files_and_removes_stale_chips(tmp_path, capsys, one_town):
    scenes, schools = one_town
    out = tmp_path / "chips"
    rc, _, err = run_cli(capsys, "chips", "--imagery", scenes, "--schools", schools, "--out", out, *SMALL)
    assert rc == 0, err
    first = set(pd.read_csv(out / "chips.csv")["path"])
    (out / "notes.txt").write_text("the user's")
    (out / "train" / "mine.txt").write_text("the user's, in a folder schoolvision writes into")
    rc, _, err = run_cli(capsys, "chips", "--imagery", scenes, "--schools", schools, "--out", out,
                         "--chip-size", "96", "--stride", "48")
    assert_one_line(rc, err, out, "--overwrite")  # not empty: refused without --overwrite
    rc, _, err = run_cli(capsys, "chips", "--imagery", scenes, "--schools", schools, "--out", out,
                         "--chip-size", "96", "--stride", "48", "--overwrite")
    assert rc == 0, err
    assert (out / "notes.txt").read_text() == "the user's" and (out / "train" / "mine.txt").exists()
    second = set(pd.read_csv(out / "chips.csv")["path"])
    assert second and first - second  # some chips of the first run were not written again ...
    tifs = {p.relative_to(out).as_posix() for p in out.rglob("*.tif")}
    assert tifs == second  # ... and are gone: only this run's chips remain
    assert set(manifest.read(out)) == second | {"chips.csv", "dataset.json", "schools.geojson"}
    assert not [p for p in out.iterdir() if manifest.is_temporary(p.name)]


def test_a_foreign_file_under_an_output_name_is_refused_not_replaced(tmp_path, capsys, one_town):
    scenes, schools = one_town
    out = tmp_path / "legacy"
    out.mkdir()
    (out / "dataset.json").write_text("{}")  # a folder of an older version, or the user's own file
    before = snapshot(out)
    rc, _, err = run_cli(capsys, "chips", "--imagery", scenes, "--schools", schools, "--out", out, "--overwrite",
                         *SMALL)
    assert "dataset.json, which schoolvision did not write" in assert_one_line(rc, err, out)
    assert snapshot(out) == before


def _two_scenes(folder: Path) -> Path:
    folder.mkdir(parents=True)
    write_red_scene(folder / "a.tif", 200, 150, squares=[(50, 50, 30)])
    write_red_scene(folder / "b.tif", 150, 150, squares=[(20, 20, 30)], seed=1)
    return folder


def test_scan_overwrite_removes_the_previous_scans_rasters_only(tmp_path, capsys, scan_run):
    scenes = _two_scenes(tmp_path / "scenes")
    out = tmp_path / "scan"
    args = ["scan", "--run", scan_run, "--out", out, "--device", "cpu", "--no-map", "--no-cam"]
    rc, _, err = run_cli(capsys, *args, "--imagery", scenes)
    assert rc == 0, err
    assert (out / "b_probability.tif").is_file()
    (out / "notes.txt").write_text("the user's")
    rc, _, err = run_cli(capsys, *args, "--imagery", scenes / "a.tif", "--overwrite")
    assert rc == 0, err
    assert not (out / "b_probability.tif").exists()  # the previous scan's raster is not left beside the new one
    assert (out / "a_probability.tif").is_file() and (out / "notes.txt").read_text() == "the user's"
    assert json.loads((out / "scan.json").read_text())["scenes"][0]["scene"] == "a"


# --- temporaries of a killed run ------------------------------------------------------------------

_KILLED_WRITE = """
import os, sys
from schoolvision.io.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("half")
    os._exit(9)  # killed: no cleanup, no rename
"""


def test_a_killed_runs_temporaries_are_removed_by_the_next_run(tmp_path, capsys, one_town):
    scenes, schools = one_town
    out = tmp_path / "chips"
    prepare_output(out, False)  # the killed run had started its folder (and manifest)
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITE, str(out / "train" / "x.tif")], cwd=REPO)
    assert proc.returncode == 9
    [left] = (out / "train").iterdir()
    assert manifest.is_temporary(left.name) and left.name.startswith(".x.") and left.name.endswith(".tmp.tif")
    staging = out / ".chips.k3j_x9a2.tmp"  # chips' staging folder, as a killed run leaves it
    (staging / "train").mkdir(parents=True)
    (staging / "train" / "c.tif").write_bytes(b"half")
    rc, _, err = run_cli(capsys, "chips", "--imagery", scenes, "--schools", schools, "--out", out, *SMALL)
    assert rc == 0, err  # a folder holding only a manifest and temporaries counts as empty
    assert not left.exists() and not staging.exists()
    assert not [p for p in out.rglob("*") if manifest.is_temporary(p.name)]

    subprocess.run([sys.executable, "-c", _KILLED_WRITE, str(out / "chips.csv")], cwd=REPO)  # killed again
    (out / ".notes").write_text("the user's hidden file")
    rc, _, err = run_cli(capsys, "chips", "--imagery", scenes, "--schools", schools, "--out", out, "--overwrite",
                         "--seed", "1", *SMALL)
    assert rc == 0, err
    assert (out / ".notes").read_text() == "the user's hidden file"
    assert not [p for p in out.rglob("*") if manifest.is_temporary(p.name)]


def test_train_lists_its_files_and_resume_removes_a_killed_runs_temporaries(tmp_path, fake_chips):
    out = tmp_path / "run"
    fit(TrainConfig(chips_dir=fake_chips, out_dir=out, epochs=1, batch_size=8, device="cpu", pretrained=False,
                    n_boot=20))
    listed = set(manifest.read(out))
    assert {"best.pt", "last.pt", "config.json", "metrics.json", "predictions.csv", "tensorboard"} <= listed
    left = out / ".last.k3j_x9a2.tmp.pt"
    left.write_bytes(b"half a checkpoint")
    fit(TrainConfig(chips_dir=fake_chips, out_dir=out, epochs=1, batch_size=8, device="cpu", pretrained=False,
                    n_boot=20, resume=True))
    assert not left.exists()
    with pytest.raises(UserError, match="--out lies inside the input --chips"):
        fit(TrainConfig(chips_dir=fake_chips, out_dir=fake_chips / "run", epochs=2, resume=True))
    fit(TrainConfig(chips_dir=fake_chips, out_dir=out, epochs=1, batch_size=8, device="cpu", pretrained=False,
                    n_boot=20, overwrite=True))
    assert set(manifest.read(out)) == listed


def test_atomic_temporaries_match_the_cleanup_pattern(tmp_path):
    for name in ("a_probability.tif", "candidates.gpkg", "dataset.json", "best.pt", "noext"):
        with atomic_path(tmp_path / name) as tmp:
            assert manifest.is_temporary(tmp.name) and manifest.is_temporary(tmp.name + ".aux.xml")
            tmp.write_text("x")
    assert not manifest.is_temporary("a_probability.tif") and not manifest.is_temporary(".notes.txt")
    assert not manifest.is_temporary(".hidden.tmp")


# --- the manifest --------------------------------------------------------------------------------


def test_manifest_lists_writes_before_they_happen_and_refuses_foreign_files(tmp_path):
    out = tmp_path / "out"
    prepare_output(out, False)
    write_text(out / "sub" / "a.txt", "mine")
    assert manifest.read(out) == ["sub/a.txt"]
    (out / "b.txt").write_text("the user's")
    with pytest.raises(UserError, match="did not write it") as err:
        write_text(out / "b.txt", "replaced?")
    assert err.value.path == str(out / "b.txt") and (out / "b.txt").read_text() == "the user's"
    write_text(out / "sub" / "a.txt", "mine again")  # its own file: fine
    assert manifest.read(out) == ["sub/a.txt"]


def test_manifest_ignores_a_torn_line_and_never_deletes_outside_its_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "outside.txt").write_text("the user's")
    (out / "a.txt").write_text("x")
    (out / manifest.MANIFEST).write_text(manifest.HEADER + "a.txt\n../outside.txt\n/etc/passwd\nb.t")
    assert manifest.read(out) == ["a.txt", "../outside.txt", "/etc/passwd"]
    assert manifest.remove_listed(out) == ["a.txt"]
    assert (tmp_path / "outside.txt").exists() and not (out / "a.txt").exists()


# --- an output inside an imagery folder is not imagery ---------------------------------------------


def test_imagery_listing_skips_output_folders_unless_named(tmp_path):
    scenes = tmp_path / "scenes"
    write_scene(scenes / "town.tif")
    inner = scenes / "scan"
    prepare_output(inner, False)
    write_red_scene(inner / "town_probability.tif", 64, 64)
    with pytest.warns(UserWarning, match="skipped, a schoolvision output folder"):
        sources = list_sources([scenes])
    assert [s.name for s in sources] == ["town"]
    assert [s.name for s in list_sources([inner])] == ["town_probability"]  # named: read


# --- numeric options --------------------------------------------------------------------------------

RANGES = [
    (["scan", "--run", "r", "--imagery", "i", "--out", "o", "--threshold", "1.5"], "--threshold must be in (0, 1)"),
    (["scan", "--run", "r", "--imagery", "i", "--out", "o", "--threshold", "0"], "--threshold must be in (0, 1)"),
    (["scan", "--run", "r", "--imagery", "i", "--out", "o", "--stride", "0"], "--stride must be >= 1"),
    (["scan", "--run", "r", "--imagery", "i", "--out", "o", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["scan", "--run", "r", "--imagery", "i", "--out", "o", "--match-distance", "0"], "--match-distance must be > 0"),
    (["scan", "--run", "r", "--imagery", "i", "--out", "o", "--min-area", "-1"], "--min-area must be >= 0"),
    (["chips", "--imagery", "i", "--schools", "s", "--out", "o", "--chip-size", "16"], "--chip-size must be >= 32"),
    (["chips", "--imagery", "i", "--schools", "s", "--out", "o", "--stride", "0"], "--stride must be >= 1"),
    (["chips", "--imagery", "i", "--schools", "s", "--out", "o", "--gsd", "0"], "--gsd must be > 0"),
    (["chips", "--imagery", "i", "--schools", "s", "--out", "o", "--point-buffer", "-1"],
     "--point-buffer must be >= 0"),
    (["train", "--chips", "c", "--out", "o", "--epochs", "0"], "--epochs must be >= 1"),
    (["train", "--chips", "c", "--out", "o", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["train", "--chips", "c", "--out", "o", "--lr", "0"], "--lr must be > 0"),
    (["train", "--chips", "c", "--out", "o", "--image-size", "16"], "--image-size must be >= 32"),
    (["train", "--chips", "c", "--out", "o", "--patience", "0"], "--patience must be >= 1"),
    (["explain", "--run", "r", "--chips", "c", "--method", "gradcam", "--out", "o", "--limit", "0"],
     "--limit must be >= 1"),
    (["explain", "--run", "r", "--chips", "c", "--method", "gradcam", "--out", "o", "--batch-size", "0"],
     "--batch-size must be >= 1"),
    (["cluster", "--run", "r", "--chips", "c", "--out", "o", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["cluster", "--run", "r", "--chips", "c", "--out", "o", "--k", "1"], "--k must be >= 2"),
    (["cluster", "--run", "r", "--chips", "c", "--out", "o", "--k-max", "1"], "--k-max must be >= 2"),
    (["cluster", "--run", "r", "--chips", "c", "--out", "o", "--variance", "1.5"], "--variance must be in (0, 1]"),
    (["evaluate", "--run", "r", "--chips", "c", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["evaluate", "--run", "r", "--chips", "c", "--n-boot", "0"], "--n-boot must be >= 1"),
    (["demo", "--out", "o", "--towns", "0"], "--towns must be >= 1"),
    (["demo", "--out", "o", "--size", "100"], "--size must be >= 256"),
    (["demo", "--out", "o", "--gsd", "0"], "--gsd must be > 0"),
    (["demo", "--out", "o", "--registry-missing", "1.5"], "--registry-missing must be in [0, 1]"),
    (["demo", "--out", "o", "--registry-false", "-1"], "--registry-false must be >= 0"),
]


@pytest.mark.parametrize(("argv", "message"), RANGES, ids=[" ".join(a[0:1] + a[-2:]) for a, _ in RANGES])
def test_numeric_options_are_range_checked(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_cli(capsys, *argv)
    assert message in assert_one_line(rc, err, argv[-2])
    assert list(tmp_path.iterdir()) == []  # refused before anything is read or written


def test_range_checks_hold_for_the_library_too():
    with pytest.raises(UserError, match="--chip-size must be >= 32, got 8"):
        ChipConfig(chip_size=8)
    with pytest.raises(UserError, match=r"--threshold must be in \(0, 1\), got nan"):
        ScanConfig(run=Path("r"), imagery=[], out_dir=Path("o"), threshold=float("nan"))


# --- splits and small scenes ------------------------------------------------------------------------


def test_chips_warns_when_val_or_test_hold_no_school(tmp_path, capsys, one_town):
    scenes, schools = one_town  # one 256 px town, one 512 m block: everything is train
    rc, err, lines = run_cli_warned(capsys, "chips", "--imagery", scenes, "--schools", schools, "--out",
                                    tmp_path / "c", *SMALL, "--block-size", "512")
    assert rc == 0 and "Traceback" not in err, err
    assert len(lines) == 2, lines
    for line, split in zip(lines, ("val", "test")):
        assert line.startswith(f"split {split} holds no school chip") and "\n" not in line
        assert "train: town_00 (" in line and "--seed" in line
    argv = ["chips", "--imagery", str(scenes), "--schools", str(schools), "--out", str(tmp_path / "d"), *SMALL,
            "--block-size", "512"]
    proc = subprocess.run([sys.executable, "-m", "schoolvision", *argv], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    printed = [ln for ln in proc.stderr.replace("\r", "\n").splitlines() if "warning" in ln]
    assert printed == [f"schoolvision chips: warning: {line}" for line in lines], printed  # one line each


def test_a_scene_smaller_than_a_chip_is_one_warning(tmp_path, capsys, one_town):
    scenes, schools = one_town
    tiny = tmp_path / "tiny.tif"
    write_scene(tiny, size=48, origin=(600_000.0, 100_000.0), schools_px=())
    rc, err, lines = run_cli_warned(capsys, "chips", "--imagery", scenes / "town_00.tif", tiny, "--schools", schools,
                                    "--out", tmp_path / "c", *SMALL)
    assert rc == 0 and "Traceback" not in err, err
    [line] = [ln for ln in lines if "tiny" in ln]
    assert line == ("tiny: scene of 48 x 48 m gave no chip: smaller than one 64 px chip; use a smaller --chip-size "
                    "or --gsd")
    scenes_meta = json.loads((tmp_path / "c" / "dataset.json").read_text())["scenes"]
    assert set(scenes_meta) == {"town_00", "tiny"}


def test_scene_names_of_the_split_options_are_checked(tmp_path, capsys, town_scenes):
    scenes, schools = town_scenes
    rc, _, err = run_cli(capsys, "chips", "--imagery", scenes, "--schools", schools, "--out", tmp_path / "c",
                         "--test-scenes", "nope", *SMALL)
    assert "--test-scenes names unknown scenes ['nope']" in assert_one_line(rc, err)
    rc, _, err = run_cli(capsys, "chips", "--imagery", scenes, "--schools", schools, "--out", tmp_path / "c",
                         "--test-scenes", "town_00", "--val-scenes", "town_02", *SMALL)
    assert rc == 0, err
    splits = {n: s["split"] for n, s in json.loads((tmp_path / "c" / "dataset.json").read_text())["scenes"].items()}
    assert splits == {"town_00": "test", "town_01": "train", "town_02": "val"}


# --- scan --schools when the only scene fails ------------------------------------------------------


def test_scan_with_schools_over_one_failing_scene_is_the_scenes_failure(tmp_path, capsys, scan_run):
    bad = tmp_path / "b.tif"
    bad.write_bytes(b"not a tiff at all")
    schools = tmp_path / "schools.geojson"
    gpd.GeoDataFrame({"name": ["s"]}, geometry=[Point(33.0, 0.9)], crs="EPSG:4326").to_file(schools)
    rc, out, err = run_cli(capsys, "scan", "--run", scan_run, "--imagery", bad, "--schools", schools,
                           "--out", tmp_path / "scan", "--device", "cpu", "--no-map")
    assert rc == 2 and "Traceback" not in err and "KeyError" not in err, err
    [failed] = [ln for ln in out.splitlines() if ln.startswith("FAILED")]
    assert failed.startswith("FAILED b: ") and str(bad) in failed
    assert not (tmp_path / "scan" / "evaluation.json").exists()


def test_scan_with_schools_outside_every_scene_evaluates_zero(tmp_path, capsys, scan_run):
    scenes = _two_scenes(tmp_path / "scenes")
    schools = tmp_path / "schools.geojson"
    gpd.GeoDataFrame({"name": ["far"]}, geometry=[Point(10.0, 50.0)], crs="EPSG:4326").to_file(schools)
    rc, _, err = run_cli(capsys, "scan", "--run", scan_run, "--imagery", scenes / "a.tif", "--schools", schools,
                         "--out", tmp_path / "scan", "--device", "cpu", "--no-map", "--no-cam")
    assert rc == 0 and "Traceback" not in err, err
    assert json.loads((tmp_path / "scan" / "evaluation.json").read_text())["schools"] == 0


# --- every option an error names exists on the command ---------------------------------------------
#
# Rule: for each commands/<name>.py, the schoolvision modules it imports transitively; every --option in
# the message of a UserError(...) (string literals, f-string parts and module-level string constants it
# uses), a check_range(...) call or a message= argument in those modules must be an option of that
# command, or, after "schoolvision <other>" in the same text, of that other command. Exceptions: ALLOWED.

OPTION = re.compile(r"--[a-z][a-z0-9-]*")
MENTION = re.compile(r"schoolvision (\w+)")

ALLOWED: dict[tuple[str, str], tuple[set[str], str]] = {
    ("cluster", "schoolvision.data.chip_config"): (
        {"--block-size", "--chip-size", "--crs", "--gsd", "--negative-ratio", "--point-buffer", "--stride"},
        "cluster imports the chips modules for SPLITS; ChipConfig and make_chips run in `chips` only"),
    ("cluster", "schoolvision.data.plan"): (
        {"--block-size"}, "cluster imports data.chips, which imports the plan; chips are planned in `chips` only"),
    ("cluster", "schoolvision.io.imagery"): (
        {"--bands", "--crs", "--imagery", "--scale"},
        "cluster reads the chips' scenes with the options dataset.json records, which `chips` validated"),
    ("cluster", "schoolvision.io.tiles"): (
        {"--tile-pattern", "--tile-scheme", "--zoom"},
        "cluster reads the chips' scenes as `chips` listed them"),
    ("evaluate", "schoolvision.io.outputs"): (
        {"--out"}, "evaluate has no output folder: it never calls prepare_output/check_inputs"),
    ("train", "schoolvision.model.runtime"): (
        {"--runtime"}, "train imports evaluation helpers; training and its evaluation run in torch"),
    ("train", "schoolvision.train.evaluation"): (
        {"--n-boot"}, "EvalConfig is built by `evaluate` only; train's n_boot is a TrainConfig field"),
}
ALLOWED[("review", "schoolvision.io.imagery")] = (
    {"--bands", "--crs", "--imagery", "--scale"},
    "review reads the scan's scenes with the options scan.json records, which `scan` validated")
ALLOWED[("review", "schoolvision.io.tiles")] = (
    {"--tile-pattern", "--tile-scheme", "--zoom"}, "review reads the scan's scenes as `scan` listed them")
ALLOWED[("review", "schoolvision.io.masks")] = ({"--mask-layer"}, "masks are read by `scan` only")
ALLOWED[("review", "schoolvision.scan.mask")] = (
    {"--mask", "--mask-distance", "--mask-min-area"}, "review imports scan modules; masks are applied by `scan` only")
ALLOWED[("review", "schoolvision.scan.options")] = (
    {"--match-distance", "--min-area", "--min-separation", "--stride", "--threshold"},
    "review imports the scene scanner, whose options `scan` validates; review reads them from scan.json")
ALLOWED[("review", "schoolvision.data.chip_config")] = (
    {"--block-size", "--chip-size", "--crs", "--gsd", "--negative-ratio", "--point-buffer", "--stride"},
    "review retrain cuts chips with the home chips' validated config (dataset.json), never the user's options")
ALLOWED[("review", "schoolvision.data.plan")] = (
    {"--block-size"}, "review retrain keeps the home chips' splits; chips are planned in `chips` only")
ALLOWED[("review", "schoolvision.train.fit")] = (
    {"--backbone", "--image-size", "--init-from", "--resume"},
    "review retrain fine-tunes with the home run's backbone and input size, which `train` validated")
ALLOWED[("review", "schoolvision.train.state")] = (
    {"--precision"}, "review retrain fine-tunes in the default precision")
ALLOWED[("review", "schoolvision.train.config")] = (
    {"--precision", "--beta", "--freeze-epochs", "--image-size", "--num-workers", "--patience"},
    "review retrain fine-tunes with the home run's backbone, input size and training settings, which `train` "
    "validated, in the default precision")
ALLOWED[("review", "schoolvision.train.evaluation")] = (
    {"--n-boot"}, "EvalConfig is built by `evaluate` only")
for _command_name in ("explain", "cluster", "review"):
    ALLOWED[(_command_name, "schoolvision.io.schools")] = (
        {"--lonlat-columns", "--schools-layer", "--schools-where"},
        "explain and cluster read the chips folder's own schools.geojson, written by `chips`, never a user file")
ALLOWED[("review", "schoolvision.model.runtime")] = (
    {"--runtime"}, "review imports scan modules; its few chips are scored and explained in torch")
ALLOWED[("novelty", "schoolvision.io.outputs")] = (
    {"--out"}, "novelty writes its summary into the run folder: it has no output folder")
for _command_name in ("scan", "review"):
    ALLOWED[(_command_name, "schoolvision.train.novelty")] = (
        {"--chips"}, "they read the run's novelty summary; its chips are named by `novelty --chips` (or train)")
for _command_name in ("scan", "explain", "cluster", "export", "evaluate", "review", "novelty"):
    ALLOWED[(_command_name, "schoolvision.model.backbones")] = (
        {"--no-pretrained"}, "ImageNet weights are loaded by `train` only; checkpoints are rebuilt without them")


def _module_file(name: str) -> Path | None:
    path = REPO / Path(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imports(name: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(_module_file(name).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("schoolvision"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("schoolvision"))
    return {m for m in found if _module_file(m)}


def _closure(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(_imports(module))
    return seen


def _messages(name: str) -> list[tuple[int, str]]:
    """(line, text) of every piece of an error message in module ``name``."""
    tree = ast.parse(_module_file(name).read_text())
    constants = {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                 and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                 for t in node.targets if isinstance(t, ast.Name)}

    def texts(sub: ast.AST) -> list[str]:
        return [n.value if isinstance(n, ast.Constant) else constants[n.id] for n in ast.walk(sub)
                if (isinstance(n, ast.Constant) and isinstance(n.value, str))
                or (isinstance(n, ast.Name) and n.id in constants)]

    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        if func in ("UserError", "check_range") and node.args:
            found += [(node.lineno, t) for t in texts(node.args[0])]
        if func == "check_ranges":  # check_ranges(config, "--stride >= 1", ...): each rule names its option
            found += [(node.lineno, t) for arg in node.args[1:] for t in texts(arg)]
        found += [(node.lineno, t) for kw in node.keywords if kw.arg == "message" for t in texts(kw.value)]
    return found


def _mentions(text: str, command: str) -> list[tuple[str, str]]:
    """(command, option) pairs of ``text``: an option after "schoolvision <other>" is <other>'s."""
    pairs, owner, start = [], command, 0
    for m in [*MENTION.finditer(text), None]:
        end = m.start() if m else len(text)
        pairs += [(owner, o) for o in OPTION.findall(text[start:end])]
        if m:
            owner, start = m.group(1), m.end()
    return pairs


def _options() -> dict[str, set[str]]:
    [sub] = [a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict)]
    return {name: _parser_options(p) for name, p in sub.choices.items()}


def _parser_options(parser) -> set[str]:
    """Every option of ``parser`` and of its own subcommands (``review build``, ``review import``)."""
    found = set()
    for action in parser._actions:
        found |= set(action.option_strings)
        if isinstance(getattr(action, "choices", None), dict):
            for child in action.choices.values():
                found |= _parser_options(child)
    return found


def test_the_option_rule_reads_messages_and_attributes_them():
    assert _mentions("cut chips first: schoolvision chips --imagery ... --out DIR; or --run", "train") == [
        ("chips", "--imagery"), ("chips", "--out"), ("chips", "--run")]
    assert _mentions("pass --overwrite or choose another --out", "scan") == [("scan", "--overwrite"), ("scan", "--out")]
    texts = " ".join(t for _, t in _messages("schoolvision.scan.options"))
    assert "--threshold" in texts and "--stride" in texts  # check_range names are read
    assert any("schoolvision review build" in t for _, t in _messages("schoolvision.io.reviews"))  # constants too
    assert "schoolvision.io.runs" in _closure("schoolvision.commands.train")


def test_every_option_an_error_names_exists_on_its_command():
    options = _options()
    wrong = []
    for command in options:
        for module in sorted(_closure(f"schoolvision.commands.{command}")):
            allowed = ALLOWED.get((command, module), (set(), ""))[0]
            for line, text in _messages(module):
                for owner, option in _mentions(text, command):
                    if owner in options and option not in options[owner] and not (owner == command
                                                                                   and option in allowed):
                        wrong.append(f"{module}:{line} names {option}, which `schoolvision {owner}` does not accept")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_the_allow_list_holds_no_stale_entry():
    options = _options()
    for (command, module), (allowed, reason) in ALLOWED.items():
        assert reason and command in options and module in _closure(f"schoolvision.commands.{command}"), module
        assert not allowed & options[command], f"{command} now accepts {allowed & options[command]}: drop them"
        named = {o for _, text in _messages(module) for owner, o in _mentions(text, command) if owner == command}
        assert allowed <= named, f"{module} no longer names {allowed - named} for {command}: drop them"
