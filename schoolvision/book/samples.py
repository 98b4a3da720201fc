"""A few chips for a chapter's figures: picked from a predictions table, explained side by side."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from torch import nn

from schoolvision.data.dataset import ChipDataset
from schoolvision.data.places import distinct_places
from schoolvision.errors import UserError
from schoolvision.explain.maps import resize_maps
from schoolvision.explain.methods import explain_batch
from schoolvision.explain.runner import OUTCOMES
from schoolvision.io.folders import ChipsFolder, read_predictions
from schoolvision.io.schools import footprint_mask


@dataclass
class ChipSample:
    """A handful of chips to show side by side: model inputs, native pixels, footprints, predictions."""

    chip_ids: list[str]
    images: torch.Tensor  # (N, 3, H, W) model input in [0, 1]
    chips: list[np.ndarray]  # uint8 (3, h, w) as stored
    masks: list[np.ndarray | None]  # school footprint on the chip grid
    probs: list[float]
    outcomes: list[str]


def pick_chips(predictions: str | Path, chips_dir: str | Path, image_size: int | None, *, outcome: str | None = None,
               label: int | None = None, pred: int | None = None, n: int = 4, by: str = "chip_id",
               split: str = "test") -> ChipSample:
    """``n`` chips of ``split`` chosen from a predictions table, with their pixels and footprints.

    ``predictions``: a run's ``predictions.csv`` or an :func:`~schoolvision.explain.runner.explain_chips`
    ``explanations.csv`` (columns chip_id, label, prob, pred). Filter by ``outcome`` (TP, FP, FN, TN) or
    ``label``/``pred``; order by ``chip_id`` or by ``prob`` (highest first: e.g. the not_school chips the
    model likes most). One chip per place: a school shown once, other chips a chip apart
    (:func:`~schoolvision.data.places.distinct_places`).
    """
    predictions, chips_dir = Path(predictions), Path(chips_dir)
    rec = read_predictions(predictions)
    if "method" in rec:
        rec = rec[rec["method"] == rec["method"].iloc[0]]
    if "split" in rec:
        rec = rec[rec["split"] == split]
    rec = rec.assign(outcome=[OUTCOMES[(int(a), int(b))] for a, b in zip(rec["label"], rec["pred"])])
    for col, value in (("outcome", outcome), ("label", label), ("pred", pred)):
        if value is not None:
            rec = rec[rec[col] == value]
    rec = rec.sort_values(["prob", "chip_id"], ascending=[False, True]) if by == "prob" else rec.sort_values("chip_id")
    index = ChipsFolder(chips_dir).read_index()
    places = index.set_index(index["chip_id"].astype(str)).reindex(rec["chip_id"].astype(str))
    places = places.assign(label=rec["label"].map(lambda v: "school" if int(v) == 1 else "not_school").to_numpy())
    rec = rec.iloc[[places.index.get_loc(c) for c in distinct_places(places, places.index, n)]]
    if rec.empty:
        raise UserError(f"no chips match outcome={outcome} label={label} pred={pred} in split {split!r}", predictions)
    ds = ChipDataset(chips_dir, split=split, image_size=image_size, require_classes=False)
    pos = {cid: i for i, cid in enumerate(ds.frame["chip_id"].astype(str))}
    schools = ChipsFolder(chips_dir).read_schools()
    idx = [pos[c] for c in rec["chip_id"]]
    chips = [ds.read_chip(i) for i in idx]
    masks = [_mask(ds, i, chip, schools) for i, chip in zip(idx, chips)]
    return ChipSample(list(rec["chip_id"]), torch.stack([ds[i]["image"] for i in idx]), chips, masks,
                      rec["prob"].astype(float).tolist(), rec["outcome"].tolist())


def _mask(ds: ChipDataset, i: int, chip: np.ndarray, schools) -> np.ndarray | None:
    """The school footprints on chip ``i``'s grid, or None without footprints or georeference."""
    georef = ds.georef(i)
    if schools is None or georef is None:
        return None
    return footprint_mask(schools, georef[0], georef[1], chip.shape[-2:])


def focus_chip_ids(predictions: str | Path, split: str = "test", negatives: int = 16) -> list[str]:
    """Every school chip of ``split`` plus the ``negatives`` not-school chips with the highest P(school).

    What a chapter explains on CPU: the faithfulness subset, every false positive (they have the
    highest P among negatives) and the closest calls, without the hundreds of easy negatives.
    """
    rec = read_predictions(predictions)
    rec = rec[rec["split"] == split] if "split" in rec else rec
    neg = rec[rec["label"] == 0].sort_values(["prob", "chip_id"], ascending=[False, True]).head(negatives)
    return sorted(rec.loc[rec["label"] == 1, "chip_id"].tolist() + neg["chip_id"].tolist())


def check_alignment(explain_dir: str | Path, chips_dir: str | Path, method: str = "gradcam", split: str = "test",
                    n: int = 10) -> dict:
    """Do the first ``n`` heatmap GeoTIFFs share their chip's CRS, transform and size? (for the book)."""
    ds = ChipDataset(Path(chips_dir), split=split, require_classes=False)
    paths = dict(zip(ds.frame["chip_id"].astype(str), ds.frame["path"]))
    tifs = sorted((Path(explain_dir) / method / "heatmaps").glob("*.tif"))[:n]
    same = {"crs": True, "transform": True, "size": True}
    dtype, nodata = None, None
    for tif in tifs:
        with rasterio.open(tif) as h, rasterio.open(Path(chips_dir) / paths[tif.stem]) as c:
            same["crs"] &= h.crs == c.crs
            same["transform"] &= h.transform == c.transform
            same["size"] &= (h.width, h.height) == (c.width, c.height)
            dtype, nodata = h.dtypes[0], h.nodata
    same = {f"same_{k}": v for k, v in same.items()}
    return {"heatmaps_checked": len(tifs), **same, "dtype": dtype, "nodata": nodata}


def compare_methods(model: nn.Module, sample: ChipSample, methods: list[str], **kwargs) -> dict[str, np.ndarray]:
    """Maps of each method for the same chips, on the chips' native grid: {method: (N, h, w)}."""
    device = next(model.parameters()).device
    h, w = sample.chips[0].shape[-2:]
    return {m: resize_maps(explain_batch(model, sample.images.to(device), m, **kwargs), h, w) for m in methods}
