"""Core plumbing: atomic writes, georeferenced writers, checkpoints, the CLI's error contract."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from shapely.geometry import box

from schoolvision.cli import main
from schoolvision.errors import UserError
from schoolvision.io.atomic import atomic_path, write_json
from schoolvision.io.rasters import write_geotiff
from schoolvision.io.vectors import write_vectors
from schoolvision.model.backbones import build_model
from schoolvision.model.checkpoint import CheckpointMeta, load_classifier, read_checkpoint, save_checkpoint


def test_atomic_path_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_write_geotiff_is_georeferenced_and_deterministic(tmp_path):
    arr = np.random.default_rng(0).random((2, 300, 280), dtype=np.float32)
    transform = Affine(0.5, 0, 500000, 0, -0.5, 9000000)
    a = write_geotiff(tmp_path / "a.tif", arr, "EPSG:32736", transform, nodata=-1.0, overviews=True)
    b = write_geotiff(tmp_path / "b.tif", arr, "EPSG:32736", transform, nodata=-1.0, overviews=True)
    assert a.read_bytes() == b.read_bytes()
    with rasterio.open(a) as src:
        assert src.crs.to_epsg() == 32736
        assert src.transform == transform
        assert src.nodata == -1.0
        assert src.overviews(1)[:1] == [2]
        np.testing.assert_array_equal(src.read(), arr)


def test_write_vectors_geojson_is_wgs84(tmp_path):
    gdf = gpd.GeoDataFrame({"v": [1]}, geometry=[box(500000, 9000000, 500100, 9000100)], crs="EPSG:32736")
    write_vectors(gdf, gpkg=tmp_path / "x.gpkg", geojson=tmp_path / "x.geojson")
    back = gpd.read_file(tmp_path / "x.gpkg")
    assert back.crs.to_epsg() == 32736
    assert back.geometry.iloc[0].equals(gdf.geometry.iloc[0])  # the GeoPackage keeps the exact UTM box
    wgs = gpd.read_file(tmp_path / "x.geojson")
    assert wgs.crs.to_epsg() == 4326
    centre = wgs.geometry.iloc[0].centroid  # 50 m east of zone 36S's central meridian (33 E), 9.05 S
    assert centre.x == pytest.approx(33.00045, abs=1e-4) and centre.y == pytest.approx(-9.0461, abs=1e-3)


def test_checkpoint_roundtrip_reproduces_outputs(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet18", pretrained=False).eval()
    meta = CheckpointMeta("resnet18", image_size=64, chip_size=64, gsd=1.0, threshold=0.3, temperature=1.5)
    save_checkpoint(tmp_path / "best.pt", model, meta, epoch_extra=torch.tensor([1, 2]))
    torch.manual_seed(1)  # the rebuilt model starts from other random weights: only loading can make them equal
    again, meta2 = load_classifier(tmp_path)
    assert not again.training
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert meta2 == meta
    assert torch.equal(read_checkpoint(tmp_path / "best.pt")["epoch_extra"], torch.tensor([1, 2]))


def test_corrupt_and_foreign_checkpoints_are_user_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="bad.pt"):
        read_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(UserError, match="not a schoolvision checkpoint"):
        read_checkpoint(foreign)
    other = tmp_path / "other.pt"
    save_checkpoint(other, build_model("resnet18", pretrained=False), CheckpointMeta("resnet50", 64, 64, 1.0))
    with pytest.raises(UserError, match="do not fit backbone"):
        load_classifier(other)


def test_cli_user_error_is_one_line_exit_2(capsys, tmp_path):
    code = main(["evaluate", "--run", str(tmp_path / "missing"), "--chips", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err  # argparse's usage text would be several lines
    assert str(tmp_path / "missing") in err
