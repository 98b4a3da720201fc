"""PyTorch dataset of chips, from a chips folder or a plain folder tree of images.

The chips folder is one made by :func:`schoolvision.data.chips.make_chips`; a plain tree holds
``school/`` + ``not_school/`` folders of GeoTIFF / PNG / JPEG images.

Items are dicts ``{"image": float32 (3, H, W) in [0, 1], "label": int64 (1 = school), "index": int}``
(the model normalises inside). Files are opened in ``__getitem__`` only, so the dataset pickles
cheaply into DataLoader workers. Augmentation draws come from a generator seeded by
``(seed, epoch, index)``: the same seed and epoch give the same images whatever the worker count.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import torch
import torch.nn.functional as F
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from tqdm.auto import tqdm

from schoolvision import CLASSES
from schoolvision.data.augment import AugmentConfig, augment_chip
from schoolvision.errors import UserError
from schoolvision.io.folders import ChipsFolder

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


class ChipDataset(torch.utils.data.Dataset):
    """Chips of one split (or all) with their class ids and georeference.

    ``class_ids[i]`` is the index in ``CLASSES`` of chip ``i``'s label (1 = school); the school
    footprints the labels were cut from are :func:`schoolvision.io.schools.read_schools`' business.
    """

    def __init__(
        self,
        chips_dir: str | Path,
        split: str | None = None,
        augment: bool = False,
        image_size: int | None = None,
        seed: int = 0,
        augment_config: AugmentConfig | None = None,
        require_classes: bool = True,
    ):
        self.root = Path(chips_dir)
        self.split = split
        self.augment = augment
        self.image_size = image_size
        self.seed = seed
        self.epoch = 0
        self.augment_config = augment_config or AugmentConfig()
        folder = ChipsFolder(self.root)
        if folder.has_index():
            frame = folder.read_index(split)
        elif self.root.is_dir():
            frame = folder_frame(self.root, split)
        else:
            raise UserError("chips folder not found; run `schoolvision chips` first", self.root)
        self.frame = frame.reset_index(drop=True)
        where = f"split {split!r}" if split else "dataset"
        if len(self.frame) == 0:
            raise UserError(f"{where} has no chips", self.root)
        if require_classes:
            for name in CLASSES:
                if not (self.frame["label"] == name).any():
                    raise UserError(f"{where} has no {name!r} chips; both classes are needed", self.root)
        self.class_ids = np.array([CLASSES.index(v) for v in self.frame["label"]], dtype=np.int64)

    @classmethod
    def from_folder(cls, root: str | Path, **kwargs) -> ChipDataset:
        """A dataset over a ``school/`` + ``not_school/`` tree (or ``<split>/school`` ...)."""
        return cls(root, **kwargs)

    def __len__(self) -> int:
        return len(self.frame)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draws (call once per training epoch)."""
        self.epoch = int(epoch)

    def class_counts(self) -> dict[str, int]:
        """Number of chips per class name."""
        return {name: int((self.class_ids == i).sum()) for i, name in enumerate(CLASSES)}

    def path(self, i: int) -> Path:
        """Where chip ``i`` is stored."""
        return self.root / self.frame["path"].iloc[i]

    def read_chip(self, i: int) -> np.ndarray:
        """The chip's pixels, uint8 (3, H, W), as stored (no resize, no augmentation)."""
        path = self.path(i)
        try:
            if path.suffix.lower() in (".tif", ".tiff"):
                with rasterio.open(path) as ds:
                    arr = ds.read(list(range(1, min(ds.count, 3) + 1)))
            else:
                with Image.open(path) as img:
                    arr = np.asarray(img.convert("RGB")).transpose(2, 0, 1)
        except (RasterioError, OSError) as exc:
            raise UserError(f"cannot read chip ({str(exc).splitlines()[0][:120]})", path) from None
        if arr.shape[0] == 1:
            arr = np.repeat(arr, 3, axis=0)
        return np.ascontiguousarray(arr, dtype=np.uint8)

    def georef(self, i: int) -> tuple[CRS, Affine] | None:
        """(CRS, transform) of the stored chip, or None for a non-georeferenced image."""
        path = self.path(i)
        if path.suffix.lower() not in (".tif", ".tiff"):
            return None
        with rasterio.open(path) as ds:
            return (ds.crs, ds.transform) if ds.crs is not None else None

    def sample_by_class(self, per_class: int = 6, seed: int = 0) -> tuple[pd.DataFrame, list[np.ndarray]]:
        """A seeded sample of up to ``per_class`` chips of each class, school first (chips to look at).

        Returns:
            The chips' index rows, class after class, with ``width_m`` (ground width of the chip)
            added, and their pixels as (H, W, 3) uint8 arrays in the same order.
        """
        rows, images = [], []
        for label in sorted(self.frame["label"].unique(), reverse=True):
            of_class = self.frame[self.frame["label"] == label]
            for i in of_class.sample(min(per_class, len(of_class)), random_state=seed).index:
                image = self.read_chip(int(i))
                georef = self.georef(int(i))
                width = image.shape[-1] * abs(georef[1].a) if georef is not None else float("nan")
                rows.append({**self.frame.loc[i].to_dict(), "width_m": width})
                images.append(image.transpose(1, 2, 0))
        return pd.DataFrame(rows), images

    def __getitem__(self, i: int) -> dict:
        image = torch.from_numpy(self.read_chip(i)).float().div_(255.0)
        if self.augment:
            g = torch.Generator().manual_seed(hash((self.seed, self.epoch, int(i))) & 0x7FFF_FFFF_FFFF_FFFF)
            image = augment_chip(image, g, self.augment_config)
        if self.image_size and tuple(image.shape[-2:]) != (self.image_size, self.image_size):
            image = F.interpolate(image[None], size=(self.image_size, self.image_size), mode="bilinear",
                                  antialias=True, align_corners=False)[0].clamp_(0.0, 1.0)
        return {"image": image, "label": torch.tensor(self.class_ids[i], dtype=torch.int64), "index": int(i)}


class CachedChipDataset(ChipDataset):
    """A :class:`ChipDataset` whose chips are decoded once, on creation, and kept in memory (uint8).

    Items (augmentation included) are exactly those of the plain dataset; only the GeoTIFF decoding
    of every epoch is saved, which is what small training splits spend most of their time on.
    """

    def __init__(self, chips_dir: str | Path, split: str | None = None, **kwargs):
        super().__init__(chips_dir, split=split, **kwargs)
        decode = ChipDataset.read_chip
        self._cache = [decode(self, i) for i in tqdm(range(len(self)), desc=f"load {split} chips", leave=False)]

    def read_chip(self, i: int) -> np.ndarray:
        """The chip's pixels from memory, uint8 (3, H, W)."""
        return self._cache[i]


def folder_frame(root: Path, split: str | None = None) -> pd.DataFrame:
    """Index a ``school/`` + ``not_school/`` tree (optionally under ``root/<split>/``) like chips.csv."""
    base = root / split if split and (root / split).is_dir() else root
    rows = []
    for label in CLASSES:
        folder = base / label
        if not folder.is_dir():
            continue
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                rows.append({"chip_id": p.stem, "path": p.relative_to(root).as_posix(), "label": label,
                             "split": split or "", "scene": ""})
    if not rows:
        raise UserError(f"no chips.csv and no images under {base}/school or {base}/not_school", root)
    return pd.DataFrame(rows)
