"""Heatmap arrays: scaled, resized onto the chip grid and blended over the chip.

The lowest module of :mod:`schoolvision.explain`, shared by the methods, SHAP, the runner and the
figures, so none of them has to import another for these few array operations.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from pytorch_grad_cam.utils.image import scale_cam_image


def normalise(maps: np.ndarray) -> np.ndarray:
    """Scale each map of (B, H, W) to [0, 1] by its maximum (negative values clipped)."""
    maps = np.clip(maps, 0, None)
    peak = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    return (maps / np.where(peak > 0, peak, 1.0)).astype(np.float32)


def cam_from_features(features: np.ndarray, weights: np.ndarray, height: int, width: int) -> np.ndarray:
    """Class activation maps of feature maps (B, C, h, w) with channel ``weights`` (C,), at (B, height, width).

    Computed and scaled step by step as pytorch-grad-cam's Grad-CAM does (weighted sum, ReLU, min-max
    to [0, 1], resize to the input with OpenCV, min-max again), so with the weights of
    :func:`schoolvision.explain.layers.linear_cam_weights` divided by h x w the maps equal the gradient
    Grad-CAM's to float noise.
    """
    cam = (np.asarray(weights, np.float32)[None, :, None, None] * features).sum(axis=1)
    scaled = scale_cam_image(np.maximum(cam, 0), (width, height))
    return scale_cam_image(np.maximum(scaled, 0)).astype(np.float32)


def resize_maps(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of (B, h, w) maps to the chips' native grid."""
    if maps.shape[-2:] == (height, width):
        return maps.astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
    return F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[:, 0].numpy()


def chip_rgb(chip: np.ndarray) -> np.ndarray:
    """(3, H, W) uint8 or float -> (H, W, 3) float in [0, 1]."""
    img = np.asarray(chip)
    img = img.transpose(1, 2, 0) if img.ndim == 3 and img.shape[0] in (1, 3) else img
    return img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else np.clip(img.astype(np.float32), 0, 1)


def overlay_rgb(chip: np.ndarray, heat: np.ndarray, alpha: float = 0.5, signed: bool = False) -> np.ndarray:
    """Blend a heatmap over a chip: (H, W, 3) uint8. Signed maps use a diverging colour map around 0."""
    img = chip_rgb(chip)
    if signed:  # pixel attributions are spiky: scale by the 99th percentile so the pattern shows, and weight
        # the colour by the square root of |value| so that the many moderate pixels do not vanish into the chip
        scale = max(float(np.percentile(np.abs(heat), 99)), 1e-12)
        colours = colormaps["RdBu_r"](np.clip(heat / scale, -1, 1) * 0.5 + 0.5)[..., :3]
        weight = alpha * np.sqrt(np.clip(np.abs(heat) / scale, 0, 1))[..., None]
    else:
        scale = max(float(heat.max()), 1e-12)
        colours = colormaps["jet"](np.clip(heat / scale, 0, 1))[..., :3]
        weight = alpha
    return (np.clip(img * (1 - weight) + colours * weight, 0, 1) * 255).astype(np.uint8)
