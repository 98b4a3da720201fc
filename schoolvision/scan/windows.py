"""Chip-size windows over a scene: where they go, how they are read and scored, how they are weighted.

Windows at ``stride`` tile the scan grid (:func:`schoolvision.data.windows.window_offsets`, the grid
chips are cut on too): the last row and column of windows are shifted in to end exactly on the
border, so no strip is skipped, and a scene smaller than one chip is padded. Windows
that hold only nodata (the dataset mask: alpha, internal mask, nodata value) are skipped and counted;
masked pixels of the others are read as 0. A background thread reads and stacks the next batches
while the model scores the current one (GDAL releases the GIL), so reading and inference overlap.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.windows import Window

from schoolvision.model.inference import school_probability
from schoolvision.model.runtime import Runtime
from schoolvision.train.novelty import NoveltySummary


def gaussian_weight(chip: int, sigma: float = 0.25) -> np.ndarray:
    """(chip, chip) blending weight peaking at the window centre, sigma = ``sigma`` x chip, never zero."""
    x = np.arange(chip, dtype=np.float64) - (chip - 1) / 2
    g = np.maximum(np.exp(-0.5 * (x / (chip * sigma)) ** 2), 1e-6)
    return np.outer(g, g).astype(np.float32)


def to_float(arr: np.ndarray) -> np.ndarray:
    """Image values as float32 in [0, 1] (uint8 and uint16 scaled by their range, floats clipped)."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def pad(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pad (C, h0, w0) up to (C, h, w) by reflection (edge values when a side is 1 px)."""
    ph, pw = h - arr.shape[-2], w - arr.shape[-1]
    if ph <= 0 and pw <= 0:
        return arr
    mode = "reflect" if min(arr.shape[-2:]) > 1 else "edge"
    return np.pad(arr, [(0, 0)] * (arr.ndim - 2) + [(0, max(ph, 0)), (0, max(pw, 0))], mode=mode)


class WindowReader:
    """Batches of windows read from an open dataset; counts the windows skipped as all nodata."""

    def __init__(self, ds, chip: int, batch_size: int):
        self.ds, self.chip, self.batch_size = ds, chip, batch_size
        self.skipped = 0

    def batches(self, windows: list[tuple[int, int]]) -> Iterator[tuple[list, np.ndarray, np.ndarray]]:
        """Yield (offsets, images (B,3,chip,chip) float32, masks (B,chip,chip) bool) for (row, col) offsets."""
        ds, chip = self.ds, self.chip
        offs, imgs, masks = [], [], []
        for ro, co in windows:
            win = Window(co, ro, min(chip, ds.width - co), min(chip, ds.height - ro))
            mask = ds.dataset_mask(window=win) > 0
            if not mask.any():
                self.skipped += 1
                continue
            img = ds.read((1, 2, 3), window=win)
            img[:, ~mask] = 0  # masked pixels are nodata (0), as in the chips the model was trained on
            offs.append((ro, co))
            imgs.append(pad(to_float(img), chip, chip))
            masks.append(pad(mask[None], chip, chip)[0] if mask.shape != (chip, chip) else mask)
            if len(offs) == self.batch_size:
                yield offs, np.stack(imgs), np.stack(masks)
                offs, imgs, masks = [], [], []
        if offs:
            yield offs, np.stack(imgs), np.stack(masks)


def prefetch(iterator: Iterator, depth: int) -> Iterator:
    """Run ``iterator`` in a background thread, ``depth`` items ahead; exceptions are re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    done = object()
    stop = threading.Event()

    def work():
        try:
            for item in iterator:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(exc)
            return
        q.put(done)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)


@torch.no_grad()  # not inference_mode: grad-CAM needs gradients on what this returns
def to_input(images: np.ndarray | torch.Tensor, image_size: int, device=None) -> torch.Tensor:
    """(B,3,H,W) float images in [0,1] as a tensor on ``device``, resized (anti-aliased) to the model's input size."""
    x = torch.as_tensor(images).to(device or "cpu", non_blocking=True)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return x


def resized(batches: Iterator[tuple[list, np.ndarray, np.ndarray]],
            image_size: int) -> Iterator[tuple[list, torch.Tensor, np.ndarray]]:
    """:meth:`WindowReader.batches` with the images resized on the CPU (in the reader thread, beside the model)."""
    for offs, imgs, masks in batches:
        yield offs, to_input(imgs, image_size), masks


def predict_windows(runtime: Runtime, images: np.ndarray | torch.Tensor, image_size: int) -> np.ndarray:
    """P(school) float32 of a batch of (B,3,H,W) float images in [0,1] (resized to the input size if need be).

    The forward pass runs in ``runtime`` (:mod:`schoolvision.model.runtime`), whose temperature
    calibrates the probability; a resize runs in torch on the runtime's device.
    """
    return runtime.probability(to_input(images, image_size, runtime.device)).astype(np.float32)


def score_windows(runtime: Runtime, images: np.ndarray | torch.Tensor, image_size: int,
                  novelty: NoveltySummary | None = None) -> list[np.ndarray]:
    """``[P(school)]`` of a batch of windows, or ``[P(school), novelty percentile]`` with a novelty summary.

    Both come from one forward pass: the embedding the novelty is scored on is the one the head reads.
    """
    if novelty is None:
        return [predict_windows(runtime, images, image_size)]
    emb, logits = runtime.features(to_input(images, image_size, runtime.device))
    return [school_probability(logits, runtime.meta.temperature).astype(np.float32), novelty.percentile(emb)]
