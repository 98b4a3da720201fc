"""ChipDataset: items, georeference, folder trees, augmentation determinism, worker safety."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image

from schoolvision.data.augment import augment_chip
from schoolvision.data.dataset import CachedChipDataset, ChipDataset
from schoolvision.errors import UserError


def test_items_follow_the_contract(small_chips):
    ds = ChipDataset(small_chips, split="train")
    item = ds[0]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 64, 64)
    assert item["image"].min() >= 0.0 and item["image"].max() <= 1.0
    assert item["label"].dtype == torch.int64 and item["index"] == 0
    assert set(ds.frame.split) == {"train"}
    counts = ds.class_counts()
    assert counts["school"] == (ds.frame.label == "school").sum() and sum(counts.values()) == len(ds)
    i = int(np.flatnonzero(ds.class_ids == 1)[0])
    assert ds[i]["label"].item() == 1 and ds.frame.label.iloc[i] == "school"
    assert np.array_equal((item["image"] * 255).round().byte().numpy(), ds.read_chip(0))


def test_georef_matches_index_row(small_chips):
    ds = ChipDataset(small_chips, split="test")
    crs, transform = ds.georef(3)
    row = ds.frame.iloc[3]
    assert crs.to_string() == row.crs
    assert np.isclose(transform.c, row.minx) and np.isclose(transform.f, row.maxy)


def test_image_size_resizes(small_chips):
    ds = ChipDataset(small_chips, split="val", image_size=32)
    assert ds[0]["image"].shape == (3, 32, 32)


def test_augmentation_is_seeded_and_changes_pixels(small_chips):
    a = ChipDataset(small_chips, split="train", augment=True, seed=1)
    b = ChipDataset(small_chips, split="train", augment=True, seed=1)
    assert torch.equal(a[2]["image"], b[2]["image"])
    plain = ChipDataset(small_chips, split="train")
    items = range(len(a))
    assert any(not torch.equal(a[i]["image"], plain[i]["image"]) for i in items)
    a.set_epoch(1)  # another epoch draws other augmentations: a no-op set_epoch fails here
    assert any(not torch.equal(a[i]["image"], b[i]["image"]) for i in items)
    b.set_epoch(1)  # and the same epoch the same ones again
    assert all(torch.equal(a[i]["image"], b[i]["image"]) for i in items)
    x = torch.rand(3, 16, 16)
    y = augment_chip(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1


def test_dataloader_with_workers(small_chips):
    ds = ChipDataset(small_chips, split="train", augment=True)
    assert len(pickle.dumps(ds)) < 200_000
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2)
    batch = next(iter(loader))
    assert batch["image"].shape == (8, 3, 64, 64) and batch["label"].shape == (8,)
    assert torch.equal(batch["image"][0], ds[0]["image"])


def test_plain_folder_tree_of_png_and_tif(small_chips, tmp_path):
    root = tmp_path / "seed"
    for label in ("school", "not_school"):
        (root / label).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(np.full((40, 40, 3), 100 + k, np.uint8)).save(root / label / f"{k}.png")
    src = ChipDataset(small_chips, split="test")
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


def test_empty_split_and_missing_class(small_chips, tmp_path):
    with pytest.raises(UserError, match="'holdout'"):
        ChipDataset(small_chips, split="holdout")
    root = tmp_path / "one"
    (root / "school").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "school" / "a.png")
    with pytest.raises(UserError, match="not_school"):
        ChipDataset(root)
    assert len(ChipDataset(root, require_classes=False)) == 1
    with pytest.raises(UserError, match="not found"):
        ChipDataset(tmp_path / "missing")


def test_cached_dataset_gives_the_same_items_without_reading_files(small_chips, monkeypatch):
    plain = ChipDataset(small_chips, split="train", augment=True, seed=3)
    cached = CachedChipDataset(small_chips, split="train", augment=True, seed=3)
    plain.set_epoch(2)
    cached.set_epoch(2)

    def no_file(*args, **kwargs):
        raise AssertionError("the cached dataset opened a file")

    expected = [plain[i] for i in range(len(plain))]
    monkeypatch.setattr(rasterio, "open", no_file)
    assert len(cached) == len(plain)
    for i, item in enumerate(expected):
        assert torch.equal(cached[i]["image"], item["image"]) and cached[i]["label"] == item["label"]


def test_sample_by_class_is_seeded_and_school_first(small_chips):
    ds = ChipDataset(small_chips, split="train")
    rows, images = ds.sample_by_class(per_class=2, seed=1)
    assert list(rows["label"]) == ["school", "school", "not_school", "not_school"]
    assert rows.equals(ds.sample_by_class(per_class=2, seed=1)[0])
    for row, image in zip(rows.itertuples(), images):
        i = int(np.flatnonzero(ds.frame["chip_id"] == row.chip_id)[0])
        assert np.array_equal(image, ds.read_chip(i).transpose(1, 2, 0))
        assert row.width_m == pytest.approx(image.shape[1] * abs(ds.georef(i)[1].a))
    few, _ = ds.sample_by_class(per_class=10_000, seed=0)
    assert len(few) == len(ds)
