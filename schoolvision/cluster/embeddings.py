"""Penultimate-layer features of chips, extracted once and cached.

Clustering is cheap and is re-run with other k, methods and subsets; the model pass is not. So
features (and the model's own P(school) from the same pass, plus small thumbnails for the projector
sprite) are cached as ``.npy`` + an index ``.csv`` keyed by the checkpoint's hash, the hash of
``chips.csv`` and the split. Subsets (predicted school, true school, false positives) are filters on
the cached rows, so changing the subset never re-runs the model. The one exception: asked for true
schools first, only the school chips go through the model (they are known from the labels).

The forward pass runs on a :mod:`runtime <schoolvision.model.runtime>` (ONNX Runtime on CPU by
default). The cache key names the runtime's precision, not the runtime: float32 runtimes (torch,
channels_last, ONNX Runtime) agree to ~1e-6, far below what PCA and clustering resolve, so their
features are interchangeable and one cache serves them all (caches written before runtimes existed
stay valid). An autocast runtime (bfloat16 / float16: CUDA, or a CPU with native bfloat16) moves
features by up to ~1e-2 and writes its own ``-bfloat16`` / ``-float16`` cache; asked for one, a
float32 cache (the reference) is used when present.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from schoolvision import CLASSES, SCHOOL
from schoolvision.data.chips import SPLITS
from schoolvision.data.dataset import ChipDataset
from schoolvision.errors import UserError
from schoolvision.io.atomic import atomic_path
from schoolvision.io.folders import ChipsFolder, RunFolder, sha256
from schoolvision.model.checkpoint import load_classifier
from schoolvision.model.device import resolve_device
from schoolvision.model.runtime import Runtime, make_runtime, runtime_precision

SUBSETS = ("all", "predicted-school", "true-school", "false-positive")
SPLIT_CHOICES = ("all", *SPLITS)  # a chips.csv split, or every chip
VIEWS = ("all", "centred", "grid")
"""Chip views to cluster (``view`` of chips.csv). ``centred``: only the windows cut around a school, so
every school sits in the middle of its chip and the framing (a school cut by the chip edge, or pushed
into a corner, as grid chips have it) cannot be what separates the clusters. Centred views exist in the
splits ``chips --centred-splits`` gave them (the training towns by default)."""
THUMB_SIZE = 48


@dataclass
class FeatureConfig:
    """Which model, which chips, and where the cache lives (default ``RUN/features``)."""

    run: Path
    chips_dir: Path
    split: str = "all"
    subset: str = "all"
    batch_size: int = 64
    device: str = "auto"
    cache_dir: Path | None = None
    num_workers: int = 0
    runtime: str = "auto"  # see schoolvision.model.runtime


@dataclass
class Features:
    """Feature vectors and one index row per vector (chips.csv columns + ``prob``, ``prediction``)."""

    vectors: np.ndarray  # (N, D) float32
    frame: pd.DataFrame  # N rows, same order as vectors
    thumbnails: np.ndarray  # (N, THUMB_SIZE, THUMB_SIZE, 3) uint8
    key: str  # cache key: checkpoint hash, chips.csv hash, split (and the precision when not float32)

    def select(self, mask: np.ndarray) -> Features:
        """The rows (and their vectors and thumbnails) where ``mask`` is true."""
        mask = np.asarray(mask, dtype=bool)
        return Features(self.vectors[mask], self.frame[mask].reset_index(drop=True), self.thumbnails[mask], self.key)


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    temperature: float = 1.0,
    num_workers: int = 0,
    thumb_size: int = THUMB_SIZE,
    progress: bool = True,
    runtime: Runtime | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run ``model.embed`` over a dataset of ``{"image", "index"}`` items.

    Returns ``(vectors (N, D) float32, prob (N,) P(school), index (N,) dataset rows, thumbnails)``.
    The head is applied to the same embedding, so P(school) costs nothing extra. With ``runtime``
    (built for ``model``) its :meth:`~schoolvision.model.runtime.Runtime.features` runs the pass;
    without, ``model`` runs eagerly: mixed precision (float16 autocast) on CUDA, float32 on CPU.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         pin_memory=device.type == "cuda")
    autocast = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else nullcontext()
    vectors, probs, index, thumbs = [], [], [], []
    for batch in tqdm(loader, desc="features", unit="batch", disable=not progress):
        x = batch["image"].to(device, non_blocking=True)
        if runtime is not None:
            emb, logits = (torch.from_numpy(a) for a in runtime.features(x))
        else:
            with autocast:
                emb = model.embed(x)
                logits = model.head(emb)
        vectors.append(emb.float().cpu().numpy())
        probs.append(torch.softmax(logits.float() / temperature, dim=1)[:, SCHOOL].cpu().numpy())
        index.append(np.asarray(batch["index"]))
        small = torch.nn.functional.interpolate(x.float(), size=(thumb_size, thumb_size), mode="area")
        thumbs.append((small.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    if not vectors:
        raise UserError("no chips to extract features from (empty split?)")
    return np.concatenate(vectors), np.concatenate(probs), np.concatenate(index), np.concatenate(thumbs)


def load_features(config: FeatureConfig, *, progress: bool = True) -> Features:
    """Features of the chips in ``config.split``, from the cache or the model, filtered to ``config.subset``."""
    if config.subset not in SUBSETS:
        raise UserError(f"unknown subset {config.subset!r}; use one of {', '.join(SUBSETS)}")
    if config.split not in SPLIT_CHOICES:
        raise UserError(f"unknown split {config.split!r}; use one of {', '.join(SPLIT_CHOICES)}")
    run, chips_dir = Path(config.run), Path(config.chips_dir)
    ckpt = RunFolder.checkpoint(run)
    if not ckpt.is_file():
        raise UserError("checkpoint not found (train a model first: schoolvision train --chips DIR --out RUN)", ckpt)
    chips = ChipsFolder(chips_dir)
    if not chips.has_index():
        raise UserError("chips.csv not found (cut chips first: schoolvision chips ...)", chips.index_path)
    key = f"{sha256(ckpt)[:16]}-{chips.index_sha256()[:16]}-{config.split}"
    cache_dir = Path(config.cache_dir) if config.cache_dir else (ckpt.parent / "features")
    reduced = runtime_precision(config.runtime, resolve_device(config.device))  # UserError: unknown runtime
    keys = [_keyed(key, reduced), key] if reduced is not None else [key]  # float32 serves every runtime
    # True schools are known without the model: extract only those (a few % of the chips), unless
    # the whole split is cached already. Every other subset needs the predictions of the whole split.
    schools_only = config.subset == "true-school"
    if schools_only:
        keys += [k + "-school" for k in keys]
    feats = next((f for f in (_read_cache(cache_dir, k) for k in keys) if f is not None), None)
    if feats is None:
        feats = _compute(config, ckpt, chips_dir, key, schools_only, progress)
        _write_cache(cache_dir, feats)
    return feats.select(subset_mask(feats.frame, config.subset))


def view_mask(frame: pd.DataFrame, view: str) -> np.ndarray:
    """Boolean mask of rows cut as ``view`` (one of :data:`VIEWS`; ``all`` keeps every row)."""
    if view not in VIEWS:
        raise UserError(f"unknown view {view!r}; use one of {', '.join(VIEWS)}")
    if view == "all":
        return np.ones(len(frame), dtype=bool)
    if "view" not in frame.columns:
        raise UserError(f"view {view!r} asks for chips.csv's 'view' column, which these chips lack")
    return (frame["view"].astype(str) == view).to_numpy()


def subset_mask(frame: pd.DataFrame, subset: str) -> np.ndarray:
    """Boolean mask of rows in ``subset`` (``label`` and ``prediction`` are class names)."""
    true_school = (frame["label"] == CLASSES[SCHOOL]).to_numpy()
    pred_school = (frame["prediction"] == CLASSES[SCHOOL]).to_numpy()
    masks = {
        "all": np.ones(len(frame), dtype=bool),
        "predicted-school": pred_school,
        "true-school": true_school,
        "false-positive": pred_school & ~true_school,
    }
    if subset not in masks:
        raise UserError(f"unknown subset {subset!r}; use one of {', '.join(SUBSETS)}")
    return masks[subset]


def _compute(
    config: FeatureConfig, ckpt: Path, chips_dir: Path, key: str, schools_only: bool, progress: bool
) -> Features:
    device = resolve_device(config.device)
    model, meta = load_classifier(ckpt, device)
    runtime = make_runtime(config.runtime, model, meta, device, checkpoint=ckpt)
    split = None if config.split == "all" else config.split
    ds = ChipDataset(chips_dir, split=split, augment=False, image_size=meta.image_size, require_classes=False)
    rows = np.flatnonzero(ds.class_ids == SCHOOL) if schools_only else np.arange(len(ds))
    if len(rows) == 0:
        what = "school chips" if schools_only else "chips"
        raise UserError(f"no {what} in split {config.split!r}", chips_dir / "chips.csv")
    vectors, prob, index, thumbs = extract_features(
        model, torch.utils.data.Subset(ds, rows.tolist()), batch_size=config.batch_size, device=device,
        temperature=meta.temperature, num_workers=config.num_workers, progress=progress, runtime=runtime,
    )
    # the precision actually used: torch-fast drops autocast that moved P(school) on the first batch
    key = _keyed(key, getattr(runtime, "dtype", None)) + ("-school" if schools_only else "")
    frame = ds.frame.iloc[index].reset_index(drop=True).copy()
    frame["label"] = frame["label"].map(_class_name)
    frame["prob"] = prob.astype(float)
    frame["prediction"] = np.where(prob >= meta.threshold, CLASSES[SCHOOL], CLASSES[1 - SCHOOL])
    return Features(vectors.astype(np.float32), frame, thumbs, key)


def _keyed(key: str, dtype: torch.dtype | None) -> str:
    """``key`` with the reduced precision features were computed in (none for float32)."""
    return key if dtype is None else f"{key}-{str(dtype).removeprefix('torch.')}"


def _class_name(value) -> str:
    """chips.csv holds class names, predictions.csv 0/1: accept both."""
    if isinstance(value, str) and value in CLASSES:
        return value
    return CLASSES[int(value)]


def _paths(cache_dir: Path, key: str) -> tuple[Path, Path, Path]:
    base = cache_dir / f"features-{key}"
    return base.with_suffix(".npy"), base.with_suffix(".csv"), Path(f"{base}.thumbs.npy")


def _read_cache(cache_dir: Path, key: str) -> Features | None:
    vec_path, csv_path, thumb_path = _paths(cache_dir, key)
    if not (vec_path.is_file() and csv_path.is_file() and thumb_path.is_file()):
        return None
    vectors = np.load(vec_path)
    frame = pd.read_csv(csv_path, dtype={"chip_id": str, "path": str})
    thumbs = np.load(thumb_path)
    if len(vectors) != len(frame) or len(thumbs) != len(frame):
        return None  # an interrupted or foreign cache: recompute
    return Features(vectors, frame, thumbs, key)


def _write_cache(cache_dir: Path, feats: Features) -> None:
    vec_path, csv_path, thumb_path = _paths(cache_dir, feats.key)
    for path, array in ((vec_path, feats.vectors), (thumb_path, feats.thumbnails)):
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, array)
    with atomic_path(csv_path) as tmp:
        feats.frame.to_csv(tmp, index=False)
