"""Imagery pixels as users receive them: masks honoured, 16-bit scaled to 8 bits, imagery options on scan.

- the dataset mask (alpha band, internal mask, nodata value) survives band selection, scaling and
  warping; ``chips`` skips and counts chips over masked pixels; ``scan`` writes nodata there, on the
  scene's own grid and through a warp. Under the alpha of the drone scenes lies magenta, which the
  "red roof" model calls a school: a reader that ignored the mask would fail these tests;
- uint16 imagery becomes 8-bit by the per-scene 2-98 percentile stretch (or ``--scale``), recorded
  in ``dataset.json`` and the run, and ``scan`` applies the run's bands and rule by itself;
- a raster without geotransform is refused in one line naming it; bad option values exit 2.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
from affine import Affine

from schoolvision.cli import main
from schoolvision.io.imagery import ImageryOptions, list_sources, open_source, pixel_scale, with_options
from schoolvision.io.rasters import write_geotiff
from schoolvision.model.checkpoint import CheckpointMeta, read_checkpoint
from schoolvision.scan.probability import NODATA
from schoolvision.scan.scene import scan_scene
from schoolvision.train.fit import TrainConfig, fit

from fixtures import (
    HIDDEN,
    ORIGIN,
    UTM,
    grey_red_rgb,
    make_fake_chips,
    save_untrained_run,
    write_rgba_scene,
    write_schools,
    write_uint16_scene,
    write_ungeoreferenced,
)

SMALL = ["--chip-size", "64", "--stride", "32"]


def cli(capsys, *argv):
    """(exit code, stdout, stderr) of ``schoolvision argv``; warnings of a run are not what is tested."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


class RedModel(torch.nn.Module):
    """Logit of 'school' = 40 * (share of red pixels - 0.05): red squares (and magenta) are schools."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)
        self.target_layer, self.target_layer_name = self.conv, "conv"

    def forward(self, x):
        red = ((x[:, 0] > 0.8) & (x[:, 1] < 0.3)).float().mean((1, 2))
        s = 40 * (red - 0.05) + self.conv(x).mean((1, 2, 3)) * 0
        return torch.stack([torch.zeros_like(s), s], 1)


def red_meta(**kw) -> CheckpointMeta:
    return CheckpointMeta(backbone="efficientnet_lite0", image_size=64, chip_size=64, gsd=1.0, **kw)


# --- masks ---------------------------------------------------------------------------------------


def test_rgba_transparent_border_gives_no_chip_and_is_counted(tmp_path, capsys):
    scene = tmp_path / "drone" / "drone.tif"
    boxes = write_rgba_scene(scene, border=48, squares=((100, 100, 40),))  # EPSG:4326, warped to UTM
    schools = write_schools(tmp_path / "schools.geojson", boxes, "EPSG:4326")
    out = tmp_path / "chips"
    rc, stdout, err = cli(capsys, "chips", "--imagery", scene, "--schools", schools, "--out", out, *SMALL,
                          "--gsd", "1", "--negative-ratio", "0")
    assert rc == 0, err
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["skipped"]["masked"] > 0
    assert f"masked {meta['skipped']['masked']}" in stdout  # the printed summary counts them too
    frame = pd.read_csv(out / "chips.csv")
    assert len(frame) > 0 and (frame.label == "school").any()
    for rel in frame.path:
        with rasterio.open(out / rel) as chip:
            arr = chip.read()
        assert arr.dtype == np.uint8
        hidden = (arr[0] >= 250) & (arr[1] <= 5) & (arr[2] >= 250)
        assert not hidden.any(), rel  # nothing under the alpha reaches a chip
        assert np.all(arr == 0, axis=0).mean() <= 0.1 + 1e-9, rel  # at most max_nodata_fraction is nodata


@pytest.mark.parametrize("kind", ["internal_mask", "nodata"])
def test_internal_mask_and_nodata_survive_band_selection(tmp_path, kind):
    path = tmp_path / f"{kind}.tif"
    img = grey_red_rgb(128, 128)
    valid = np.ones((128, 128), bool)
    valid[:, :40] = False
    prof = {"driver": "GTiff", "width": 128, "height": 128, "count": 3, "dtype": "uint8", "crs": UTM,
            "transform": Affine(1, 0, ORIGIN[0], 0, -1, ORIGIN[1])}
    if kind == "nodata":
        img[:, ~valid] = 7
        prof["nodata"] = 7
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **prof) as dst:
        dst.write(img)
        if kind == "internal_mask":
            dst.write_mask(valid)
    (src,) = with_options(list_sources([path]), bands=(3, 2, 1))  # a band VRT over the file
    with open_source(src) as ds:
        assert np.array_equal(ds.dataset_mask() > 0, valid)
    with open_source(src, gsd=2.0) as ds:  # resampled: a warped view of the band VRT
        mask = ds.dataset_mask() > 0
        assert not mask[:, :19].any() and mask[:, 21:].all()


def test_scan_writes_nodata_under_the_mask_on_the_scene_grid(tmp_path):
    scene = tmp_path / "utm_drone.tif"  # projected at the run's GSD: scanned on its own grid, no warp
    write_rgba_scene(scene, border=72, squares=((110, 110, 36),), crs=UTM,
                     transform=Affine(1, 0, ORIGIN[0], 0, -1, ORIGIN[1]))
    (src,) = list_sources([scene])
    for native in (False, True):
        out = tmp_path / f"p_{native}.tif"
        res = scan_scene(RedModel(), red_meta(), src, out, stride=32, progress=False, native_resolution=native,
                         runtime="torch")
        with rasterio.open(scene) as s, rasterio.open(out) as p:
            alpha, prob = s.read(4), p.read(1)
            assert (p.crs, p.transform, p.shape) == (s.crs, s.transform, s.shape)
        assert (prob[alpha == 0] == NODATA).all()  # the magenta under the alpha is never scored
        assert (prob[alpha > 0] >= 0).all()
        assert prob[120:140, 120:140].mean() > 0.8  # the red square inside is found
        assert res.skipped_windows > 0  # windows entirely under the mask are skipped, and counted
    empty = tmp_path / "empty_drone.tif"  # no school at all: windows over the rim read masked pixels as 0
    write_rgba_scene(empty, border=72, squares=(), crs=UTM, transform=Affine(1, 0, ORIGIN[0], 0, -1, ORIGIN[1]))
    scan_scene(RedModel(), red_meta(), list_sources([empty])[0], tmp_path / "e.tif", stride=32, progress=False,
               runtime="torch")
    with rasterio.open(tmp_path / "e.tif") as p:
        prob = p.read(1)
    assert (prob[alpha > 0] >= 0).all() and prob[alpha > 0].max() < 0.5  # not the magenta beside them


def test_scan_writes_nodata_under_the_mask_through_a_warp(tmp_path):
    scene = tmp_path / "geo_drone.tif"  # EPSG:4326: scanned in UTM at 1 m, written back on the 4326 grid
    write_rgba_scene(scene, border=48, squares=((100, 100, 40),))
    (src,) = list_sources([scene])
    res = scan_scene(RedModel(), red_meta(), src, tmp_path / "p.tif", stride=16, progress=False, runtime="torch")
    with rasterio.open(scene) as s, rasterio.open(tmp_path / "p.tif") as p:
        alpha, prob = s.read(4), p.read(1)
        assert (p.crs, p.transform, p.shape) == (s.crs, s.transform, s.shape)
    assert res.crs == "EPSG:4326"
    assert (prob[alpha == 0] == NODATA).all()
    assert (prob[alpha > 0] >= 0).mean() > 0.99
    assert prob[110:130, 110:130].mean() > 0.8


# --- bit depth -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def satellite(tmp_path_factory):
    """A uint16 blue-green-red-NIR scene (11-bit data) with one red-roof school, and its schools file."""
    root = tmp_path_factory.mktemp("satellite")
    boxes = write_uint16_scene(root / "sat.tif", squares=((100, 100, 48),))
    return root / "sat.tif", write_schools(root / "schools.geojson", boxes, UTM)


@pytest.fixture(scope="module")
def satellite_chips(satellite, tmp_path_factory):
    """``chips --bands 3,2,1`` of :func:`satellite` (default scale rule): (folder, dataset.json, stdout)."""
    out = tmp_path_factory.mktemp("sat_chips") / "chips"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rc = main(["chips", "--imagery", str(satellite[0]), "--schools", str(satellite[1]), "--out", str(out),
                   *SMALL, "--bands", "3,2,1", "--negative-ratio", "0"])
    assert rc == 0
    return out, json.loads((out / "dataset.json").read_text())


def test_uint16_scene_without_bands_is_one_line(tmp_path, capsys, satellite):
    rc, _, err = cli(capsys, "chips", "--imagery", satellite[0], "--schools", satellite[1], "--out",
                     tmp_path / "out", *SMALL)
    line = one_line(err)
    assert rc == 2 and str(satellite[0]) in line and "--bands" in line
    assert "gdal_translate" not in line and not (tmp_path / "out").exists()


def test_uint16_chips_are_8_bit_and_the_stretch_is_recorded(satellite, satellite_chips):
    out, meta = satellite_chips
    assert meta["imagery"]["bands"] == [3, 2, 1] and meta["imagery"]["scale"] is None
    assert "percentile" in meta["imagery"]["rule"]
    pixels = meta["scenes"]["sat"]["pixels"]
    assert pixels["dtype"] == "uint16" and pixels["rule"] == "percentile" and pixels["percentiles"] == [2.0, 98.0]
    with rasterio.open(satellite[0]) as ds:  # 256 px: the "decimated" read is the whole scene
        expected = [np.percentile(ds.read(b).astype(float), [2, 98]) for b in (3, 2, 1)]
    assert np.allclose(pixels["low"], [e[0] for e in expected], rtol=1e-5)
    assert np.allclose(pixels["high"], [e[1] for e in expected], rtol=1e-5)
    frame = pd.read_csv(out / "chips.csv")
    assert (frame.label == "school").any()
    values = []
    for rel in frame.path:
        with rasterio.open(out / rel) as chip:
            assert chip.dtypes == ("uint8",) * 3
            values.append(chip.read())
    values = np.stack(values)
    assert values.min() >= 1 and values.max() == 255  # valid pixels span 1-255; 0 stays nodata


def test_uint16_nodata_rows_are_masked_after_scaling(tmp_path):
    write_uint16_scene(tmp_path / "nd.tif", nodata_rows=20)
    (src,) = with_options(list_sources([tmp_path / "nd.tif"]), bands=(3, 2, 1))
    with open_source(src) as ds:
        arr, mask = ds.read(), ds.dataset_mask() > 0
    assert arr.dtype == np.uint8
    assert not mask[:20].any() and mask[20:].all() and (arr[:, :20] == 0).all() and arr[:, 20:].min() >= 1
    assert pixel_scale(src).low[0] > 0  # the nodata rows do not drag the stretch down to 0


def test_fixed_scale_maps_min_max_for_every_band(tmp_path, capsys, satellite):
    out = tmp_path / "chips"
    rc, stdout, err = cli(capsys, "chips", "--imagery", satellite[0], "--schools", satellite[1], "--out", out,
                          *SMALL, "--bands", "3,2,1", "--scale", "0,2047", "--negative-ratio", "0")
    assert rc == 0, err
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["imagery"]["scale"] == [0.0, 2047.0] and meta["config"]["scale"] == [0.0, 2047.0]
    assert meta["scenes"]["sat"]["pixels"] == {"dtype": "uint16", "rule": "fixed", "low": [0.0] * 3,
                                               "high": [2047.0] * 3}
    assert "fixed --scale" in stdout
    top = max(rasterio.open(out / rel).read().max() for rel in pd.read_csv(out / "chips.csv").path)
    assert top == round(1 + 1840 / 2047 * 254)  # the brightest data value (230 x 8), not stretched to 255


@pytest.mark.parametrize("scale", ["2047", "x,y", "9,3", "1,inf"])
def test_bad_scale_exits_2_in_one_line(tmp_path, capsys, satellite, scale):
    for command in (["chips", "--schools", satellite[1], *SMALL], ["scan", "--run", tmp_path]):
        rc, _, err = cli(capsys, *command, "--imagery", satellite[0], "--out", tmp_path / "out", f"--scale={scale}")
        assert rc == 2 and "--scale" in one_line(err) and not (tmp_path / "out").exists()


# --- the run records how its chips read imagery; scan applies it -----------------------------------


@pytest.fixture(scope="module")
def satellite_run(satellite_chips, tmp_path_factory):
    """A 1-epoch run on fake chips whose dataset.json says how the satellite chips were read (bands, stretch)."""
    chips = make_fake_chips(tmp_path_factory.mktemp("fake_sat") / "chips")
    meta = json.loads((chips / "dataset.json").read_text())
    meta["imagery"] = satellite_chips[1]["imagery"]
    (chips / "dataset.json").write_text(json.dumps(meta))
    out = tmp_path_factory.mktemp("sat_run") / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(TrainConfig(chips_dir=chips, out_dir=out, epochs=1, batch_size=8, device="cpu", seed=0,
                        pretrained=False, n_boot=20))
    return out


def test_the_run_records_the_chips_imagery_options(satellite_chips, satellite_run):
    recorded = satellite_chips[1]["imagery"]
    assert read_checkpoint(satellite_run / "best.pt")["meta"]["imagery"] == recorded
    assert json.loads((satellite_run / "config.json").read_text())["imagery"] == recorded


def test_scan_applies_the_runs_bands_and_stretch(tmp_path, capsys, satellite, satellite_chips, satellite_run):
    out = tmp_path / "scan"
    rc, stdout, err = cli(capsys, "scan", "--run", satellite_run, "--imagery", satellite[0], "--out", out,
                          "--device", "cpu", "--no-map", "--no-cam")
    assert rc == 0, err + stdout
    summary = json.loads((out / "scan.json").read_text())
    assert summary["imagery"]["bands"] == [3, 2, 1] and summary["imagery"]["scale"] is None
    assert summary["scenes"][0]["pixels"] == satellite_chips[1]["scenes"]["sat"]["pixels"]  # the same stretch
    with rasterio.open(out / "sat_probability.tif") as p:
        assert p.crs == UTM and (p.read(1) >= 0).all()
    rc, stdout, _ = cli(capsys, "scan", "--run", satellite_run, "--imagery", satellite[0], "--out",
                        tmp_path / "auto", "--device", "cpu", "--no-map", "--no-cam", "--bands", "auto")
    assert rc == 2 and "FAILED sat" in stdout and "--bands" in stdout  # the plain band rule: 4 bands are refused


def test_scan_applies_a_recorded_fixed_scale_unless_told_otherwise(tmp_path, capsys, satellite):
    run = save_untrained_run(tmp_path / "run", imagery=ImageryOptions((3, 2, 1), None, (0, 2047)).record())
    for extra, rule in (([], "fixed"), (["--scale", "auto"], "percentile"), (["--scale", "100,1900"], "fixed")):
        out = tmp_path / f"scan_{len(extra)}_{rule}"
        rc, _, err = cli(capsys, "scan", "--run", run, "--imagery", satellite[0], "--out", out, "--device", "cpu",
                         "--no-map", "--no-cam", *extra)
        assert rc == 0, err
        pixels = json.loads((out / "scan.json").read_text())["scenes"][0]["pixels"]
        assert pixels["rule"] == rule
        if extra[1:] == ["100,1900"]:
            assert pixels["low"] == [100.0] * 3 and pixels["high"] == [1900.0] * 3


# --- georeference --------------------------------------------------------------------------------


@pytest.mark.parametrize("crs", [None, "EPSG:4326"])
def test_no_geotransform_is_one_line_naming_the_file(tiny_run, tmp_path, capsys, crs):
    bad = write_ungeoreferenced(tmp_path / "photo.tif", crs=crs)
    schools = write_schools(tmp_path / "s.geojson", write_rgba_scene(tmp_path / "x.tif"), "EPSG:4326")
    for extra in ([], ["--crs", "EPSG:4326"]):
        rc, _, err = cli(capsys, "chips", "--imagery", bad, "--schools", schools, "--out", tmp_path / "out",
                         *SMALL, *extra)
        line = one_line(err)
        assert rc == 2 and str(bad) in line and "no georeference" in line and "UTM" not in line
    run = tiny_run
    rc, stdout, _ = cli(capsys, "scan", "--run", run, "--imagery", bad, "--out", tmp_path / "scan", "--no-map")
    assert rc == 2 and f"{bad}: raster has no georeference" in stdout


def test_scan_crs_option_places_a_raster_without_crs(tiny_run, tmp_path, capsys):
    scene = tmp_path / "nocrs.tif"
    write_geotiff(scene, grey_red_rgb(128, 128, ((40, 40, 30),)), None, Affine(1, 0, ORIGIN[0], 0, -1, ORIGIN[1]))
    run = tiny_run
    rc, stdout, _ = cli(capsys, "scan", "--run", run, "--imagery", scene, "--out", tmp_path / "a", "--no-map",
                        "--no-cam", "--device", "cpu")
    assert rc == 2 and "--crs" in stdout
    rc, _, err = cli(capsys, "scan", "--run", run, "--imagery", scene, "--out", tmp_path / "b", "--no-map",
                     "--no-cam", "--device", "cpu", "--crs", "EPSG:32636")
    assert rc == 0, err
    with rasterio.open(tmp_path / "b" / "nocrs_probability.tif") as p:
        assert p.crs == UTM and p.transform == Affine(1, 0, ORIGIN[0], 0, -1, ORIGIN[1])


def test_hidden_colour_is_what_an_unmasked_reader_would_see(tmp_path):
    """The premise of the mask tests: under the alpha lies magenta, which the red-roof model scores high."""
    write_rgba_scene(tmp_path / "d.tif", border=48)
    with rasterio.open(tmp_path / "d.tif") as ds:
        assert tuple(ds.read((1, 2, 3), window=((0, 1), (0, 1)))[:, 0, 0]) == HIDDEN
    x = torch.zeros(1, 3, 8, 8)
    x[:, 0], x[:, 2] = 1.0, 1.0
    assert torch.softmax(RedModel()(x), 1)[0, 1] > 0.99
