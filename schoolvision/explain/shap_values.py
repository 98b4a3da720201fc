"""SHAP attributions for the school classifier, with their additivity measured.

* :func:`gradient_shap` (default): ``shap.GradientExplainer``, i.e. expected gradients against a
  seeded background of training chips. Its values sum to ``f(x) - E[f(background)]`` only in
  expectation (Monte Carlo over ``nsamples``), so :func:`additivity` measures the gap per chip.
* :func:`deep_shap`: ``shap.DeepExplainer`` (DeepLIFT rescale rules), exact additivity, checked by
  shap itself (``check_additivity=True``). Only valid for backbones made of layers shap has rules for
  (ResNets); in-place and reused ReLUs are replaced by distinct copies first.

The explained output ``f`` is the log-odds of the target class, a single number per chip.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from schoolvision import SCHOOL
from schoolvision.data.dataset import ChipDataset
from schoolvision.errors import UserError
from schoolvision.explain.layers import resolve_layer
from schoolvision.explain.maps import resize_maps
from schoolvision.model.device import kept_heap


class LogOdds(nn.Module):
    """``model`` -> (B, 1) log-odds of ``target``: one output, so SHAP explains it once."""

    def __init__(self, model: nn.Module, target: int = SCHOOL):
        super().__init__()
        self.model = model
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1) log-odds: the target logit minus the log-sum-exp of the others."""
        out = self.model(x)
        others = torch.cat([out[:, : self.target], out[:, self.target + 1 :]], dim=1)
        return (out[:, self.target] - torch.logsumexp(others, dim=1))[:, None]


def background_from_split(chips_dir: str | Path, image_size: int | None, n: int = 16, seed: int = 0,
                          split: str = "train") -> torch.Tensor:
    """A seeded sample of ``n`` chips of ``split`` (half schools where possible), (n, 3, H, W)."""
    ds = ChipDataset(Path(chips_dir), split=split, image_size=image_size)
    if len(ds) == 0:
        raise UserError(f"split {split!r} has no chips for the SHAP background", chips_dir)
    rng = np.random.default_rng(seed)
    labels = (ds.frame["label"].astype(str).to_numpy() == "school") if "label" in ds.frame else np.zeros(len(ds), bool)
    school, other = np.flatnonzero(labels), np.flatnonzero(~labels)
    k = min(len(school), n // 2)
    picks = list(rng.choice(school, k, replace=False)) + list(rng.choice(other, min(len(other), n - k), replace=False))
    return torch.stack([ds[int(i)]["image"] for i in sorted(picks)])


def gradient_shap(
    model: nn.Module,
    x: torch.Tensor,
    background: torch.Tensor,
    *,
    nsamples: int = 64,
    seed: int = 0,
    target: int = SCHOOL,
    layer: str | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Expected-gradients SHAP values: (B, 3, H, W) for pixels, or (B, H, W) for an internal layer.

    With ``layer`` the values are for that layer's input, summed over channels and upsampled to
    the image size.
    """
    import shap

    device = next(model.parameters()).device
    wrapped = LogOdds(model, target).eval()
    if layer is not None:
        _, module = resolve_layer(model, layer)
        explainer = shap.GradientExplainer((wrapped, module), background.to(device), batch_size=batch_size)
    else:
        explainer = shap.GradientExplainer(wrapped, background.to(device), batch_size=batch_size)
    values = explainer.shap_values(x.to(device), nsamples=nsamples, rseed=seed)
    values = np.asarray(values, dtype=np.float32)
    if values.ndim == 5:  # (B, C, H, W, outputs=1)
        values = values[..., 0]
    if layer is not None:
        maps = torch.from_numpy(values.sum(axis=1))[:, None]
        return F.interpolate(maps, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0].numpy()
    return values


def deep_explainer_supported(model: nn.Module) -> bool:
    """DeepExplainer has rescale rules for ReLU networks built from conv/BN/pool/linear: the ResNets."""
    return getattr(model, "backbone", "").startswith("resnet")


class _DistinctReluBasicBlock(nn.Module):
    """torchvision BasicBlock/Bottleneck forward with one ReLU module per use (DeepLIFT stores per-module state)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block
        n = 3 if hasattr(block, "conv3") else 2
        self.relus = nn.ModuleList(nn.ReLU(inplace=False) for _ in range(n))

    def forward(self, x):
        b = self.block
        out = self.relus[0](b.bn1(b.conv1(x)))
        out = b.bn2(b.conv2(out))
        if hasattr(b, "conv3"):
            out = b.bn3(b.conv3(self.relus[1](out)))
        identity = b.downsample(x) if b.downsample is not None else x
        return self.relus[-1](out + identity)


class _ReluMaxPool(nn.Module):
    """The ResNet stem max-pool rewritten as ``max(a, b) = relu(a - b) + b`` over the window's shifts.

    Same outputs for non-negative inputs (it follows a ReLU), but built from operations DeepLIFT's
    rescale rule handles exactly: shap's max-pool rule does not add up for overlapping windows
    (max-unpooling overwrites instead of summing), which fails the additivity check.
    """

    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        k, st, pad = (v if isinstance(v, int) else v[0] for v in (pool.kernel_size, pool.stride, pool.padding))
        self.k, self.stride, self.pad = k, st, pad
        self.relus = nn.ModuleList(nn.ReLU() for _ in range(k * k - 1))

    def forward(self, x):
        h, w = x.shape[-2:]
        ho, wo = (h + 2 * self.pad - self.k) // self.stride + 1, (w + 2 * self.pad - self.k) // self.stride + 1
        xp = F.pad(x, (self.pad,) * 4, value=0.0)
        s = self.stride
        views = [xp[:, :, i : i + s * (ho - 1) + 1 : s, j : j + s * (wo - 1) + 1 : s]
                 for i in range(self.k) for j in range(self.k)]
        out = views[0]
        for relu, v in zip(self.relus, views[1:]):
            out = relu(v - out) + out
        return out


def deeplift_copy(model: nn.Module) -> nn.Module:
    """A copy of a ResNet classifier that DeepExplainer can explain exactly.

    No shared or in-place ReLUs (DeepLIFT keeps per-module state) and the stem max-pool rewritten
    with ReLUs (:class:`_ReluMaxPool`); the copy computes the same function.
    """
    if not deep_explainer_supported(model):
        raise UserError(
            "DeepExplainer is only valid for ResNet backbones here "
            f"(got {getattr(model, 'backbone', type(model).__name__)}); "
            "use the gradient explainer"
        )
    net = copy.deepcopy(model).eval()
    for name in ("layer1", "layer2", "layer3", "layer4"):
        stage = net.trunk.get_submodule(name)
        for i, block in enumerate(list(stage)):
            stage[i] = _DistinctReluBasicBlock(block)
    net.trunk.maxpool = _ReluMaxPool(net.trunk.maxpool)
    for m in net.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return net


def deep_shap(model: nn.Module, x: torch.Tensor, background: torch.Tensor, *, target: int = SCHOOL,
              check_additivity: bool = True) -> np.ndarray:
    """DeepExplainer SHAP values (B, 3, H, W); shap raises if they do not add up to the output."""
    import shap

    device = next(model.parameters()).device
    wrapped = LogOdds(deeplift_copy(model), target).eval()
    explainer = shap.DeepExplainer(wrapped, background.to(device))
    values = np.asarray(explainer.shap_values(x.to(device), check_additivity=check_additivity), dtype=np.float32)
    return values[..., 0] if values.ndim == 5 else values


def additivity(model: nn.Module, x: torch.Tensor, background: torch.Tensor, values: np.ndarray,
               target: int = SCHOOL) -> dict[str, list[float]]:
    """Per chip: sum of SHAP values vs ``f(x) - mean f(background)`` (log-odds) and the relative gap."""
    device = next(model.parameters()).device
    wrapped = LogOdds(model, target).eval()
    with torch.no_grad():
        fx = wrapped(x.to(device))[:, 0].cpu().numpy()
        fb = float(wrapped(background.to(device))[:, 0].mean())
    sums = values.reshape(len(values), -1).sum(axis=1)
    delta = fx - fb
    rel = np.abs(sums - delta) / np.maximum(np.abs(delta), 1e-6)
    return {"shap_sum": sums.tolist(), "output_minus_background": delta.tolist(), "relative_gap": rel.tolist(),
            "background_mean_output": fb}


@dataclass
class ShapResult:
    """SHAP values of a few chips, their channel-summed maps on the chip grid, cost and additivity."""

    values: np.ndarray  # (N, 3, H, W) on the model input grid
    maps: np.ndarray  # (N, h, w) summed over channels, on the chips' grid
    seconds_per_chip: float
    additivity: dict[str, list[float]]


def explain_sample(model: nn.Module, sample, background: torch.Tensor, *, nsamples: int = 64, seed: int = 0,
                   target: int = SCHOOL) -> ShapResult:
    """GradientExplainer on a :class:`~schoolvision.book.samples.ChipSample`, timed, with its additivity gap."""
    start = time.perf_counter()
    with kept_heap():  # many backward passes over large batches: see kept_heap
        values = gradient_shap(model, sample.images, background, nsamples=nsamples, seed=seed, target=target)
    seconds = (time.perf_counter() - start) / len(sample.images)
    h, w = sample.chips[0].shape[-2:]
    return ShapResult(values, resize_maps(values.sum(axis=1), h, w), seconds,
                      additivity(model, sample.images, background, values, target))
