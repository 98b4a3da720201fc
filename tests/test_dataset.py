"""ChipDataset: items, georeference, folder trees, augmentation determinism, worker safety."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image

from fixtures import make_towns
from schoolvision.data.augment import augment_chip
from schoolvision.data.chips import ChipConfig, make_chips
from schoolvision.data.dataset import ChipDataset
from schoolvision.errors import UserError


@pytest.fixture(scope="module")
def chips(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    scenes, schools = make_towns(root)
    make_chips([scenes], schools, root / "chips", ChipConfig(chip_size=64, stride=32))
    return root / "chips"


def test_items_follow_the_contract(chips):
    ds = ChipDataset(chips, split="train")
    item = ds[0]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 64, 64)
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["label"].dtype == torch.int64 and item["index"] == 0
    assert set(ds.frame.split) == {"train"}
    counts = ds.class_counts()
    assert counts["school"] == (ds.frame.label == "school").sum() and sum(counts.values()) == len(ds)
    i = int(np.flatnonzero(ds.labels == 1)[0])
    assert ds[i]["label"].item() == 1 and ds.frame.label.iloc[i] == "school"
    assert np.array_equal((item["image"] * 255).round().byte().numpy(), ds.read_chip(0))


def test_georef_matches_index_row(chips):
    ds = ChipDataset(chips, split="test")
    crs, transform = ds.georef(3)
    row = ds.frame.iloc[3]
    assert crs.to_string() == row.crs
    assert np.isclose(transform.c, row.minx) and np.isclose(transform.f, row.maxy)


def test_image_size_resizes(chips):
    ds = ChipDataset(chips, split="val", image_size=32)
    assert ds[0]["image"].shape == (3, 32, 32)


def test_augmentation_is_seeded_and_changes_pixels(chips):
    a = ChipDataset(chips, split="train", augment=True, seed=1)
    b = ChipDataset(chips, split="train", augment=True, seed=1)
    assert torch.equal(a[2]["image"], b[2]["image"])
    plain = ChipDataset(chips, split="train")[2]["image"]
    a.set_epoch(1)
    assert not torch.equal(a[2]["image"], b[2]["image"]) or not torch.equal(a[2]["image"], plain)
    x = torch.rand(3, 16, 16)
    y = augment_chip(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1


def test_dataloader_with_workers(chips):
    ds = ChipDataset(chips, split="train", augment=True)
    assert len(pickle.dumps(ds)) < 200_000
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2)
    batch = next(iter(loader))
    assert batch["image"].shape == (8, 3, 64, 64) and batch["label"].shape == (8,)
    assert torch.equal(batch["image"][0], ds[0]["image"])


def test_plain_folder_tree_of_png_and_tif(chips, tmp_path):
    root = tmp_path / "seed"
    for label in ("school", "not_school"):
        (root / label).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(np.full((40, 40, 3), 100 + k, np.uint8)).save(root / label / f"{k}.png")
    src = ChipDataset(chips, split="test")
    tif = root / "school" / "geo.tif"
    tif.write_bytes(src.path(0).read_bytes())
    ds = ChipDataset.from_folder(root, image_size=64)
    assert len(ds) == 5 and ds.class_counts() == {"not_school": 2, "school": 3}
    assert ds[0]["image"].shape == (3, 64, 64)
    png = int(np.flatnonzero(ds.frame.path.str.endswith(".png"))[0])
    geo = int(np.flatnonzero(ds.frame.path.str.endswith(".tif"))[0])
    assert ds.georef(png) is None
    with rasterio.open(tif) as r:
        assert ds.georef(geo) == (r.crs, r.transform)


def test_empty_split_and_missing_class(chips, tmp_path):
    with pytest.raises(UserError, match="'holdout'"):
        ChipDataset(chips, split="holdout")
    root = tmp_path / "one"
    (root / "school").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "school" / "a.png")
    with pytest.raises(UserError, match="not_school"):
        ChipDataset(root)
    assert len(ChipDataset(root, require_classes=False)) == 1
    with pytest.raises(UserError, match="not found"):
        ChipDataset(tmp_path / "missing")
