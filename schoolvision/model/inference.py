"""Batched inference: logits and calibrated P(school) for any chip dataset."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from schoolvision import SCHOOL
from schoolvision.model.device import resolve_device


def school_probability(logits: torch.Tensor | np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """P(school) = softmax(logits / temperature)[:, SCHOOL], as float64 numpy (never max-class)."""
    z = torch.as_tensor(np.asarray(logits) if isinstance(logits, np.ndarray) else logits.detach().cpu())
    return torch.softmax(z.double() / float(temperature), dim=1)[:, SCHOOL].numpy()


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    dataset: Dataset,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    indices: Sequence[int] | None = None,
    progress: bool = True,
    forward: Callable[[torch.Tensor], torch.Tensor | np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw logits (N, num_classes) as float32 and labels (N,) of ``dataset`` (or of ``indices`` in it).

    ``forward`` runs a batch instead of ``model(x)``: any callable from a (B, 3, H, W) float tensor on
    ``device`` to logits (tensor or array), e.g. a :class:`~schoolvision.model.runtime.Runtime`'s ``logits``
    (duck-typed: the runtimes import this module). ``model`` then only gives the class count.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    data = dataset if indices is None else Subset(dataset, list(indices))
    loader = DataLoader(
        data, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda"
    )
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for batch in tqdm(loader, desc="predict", leave=False, disable=not progress):
        x = batch["image"].to(device, non_blocking=True)
        if forward is not None:
            logits.append(torch.as_tensor(forward(x)).float().cpu())
        else:
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            logits.append(model(x).float().cpu())
        labels.append(batch["label"])
    model.train(was_training)
    n_classes = getattr(getattr(model, "module", model), "num_classes", 2)
    if not logits:
        return np.zeros((0, n_classes), np.float32), np.zeros(0, np.int64)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def predict(model: torch.nn.Module, dataset: Dataset, batch_size: int = 64, device: str | torch.device = "cpu",
            temperature: float = 1.0, num_workers: int = 0) -> np.ndarray:
    """Calibrated P(school) for every item of ``dataset``, in dataset order."""
    device = resolve_device(device) if isinstance(device, str) else device
    model = model.to(device)
    logits, _ = predict_logits(model, dataset, batch_size, device, num_workers)
    return school_probability(logits, temperature)
