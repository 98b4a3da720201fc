"""Augmentations suited to overhead imagery: no "up" direction, mild colour and scale changes.

Flips and 90-degree rotations are exact symmetries of a nadir view; colour jitter mimics sensor
and illumination differences between scenes; a mild zoom mimics small GSD differences. Every
draw comes from the given ``torch.Generator``, so a seed fixes the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Strength of each augmentation (0 turns it off)."""

    flips: bool = True
    rotations: bool = True
    brightness: float = 0.1  # multiplicative, +-
    contrast: float = 0.1
    saturation: float = 0.1
    max_zoom: float = 1.15  # random crop of 1/zoom of the side, resized back


def augment_chip(image: torch.Tensor, generator: torch.Generator,
                 config: AugmentConfig = AugmentConfig()) -> torch.Tensor:
    """Augment a float (3, H, W) image in [0, 1]; returns a new tensor of the same shape."""
    u = lambda: float(torch.rand((), generator=generator))  # noqa: E731
    x = image
    if config.flips and u() < 0.5:
        x = x.flip(-1)
    if config.rotations:
        k = int(torch.randint(0, 4, (), generator=generator))
        x = torch.rot90(x, k, dims=(-2, -1)) if k else x
    if config.max_zoom > 1.0:
        zoom = 1.0 + u() * (config.max_zoom - 1.0)
        h, w = x.shape[-2:]
        ch, cw = max(1, round(h / zoom)), max(1, round(w / zoom))
        if (ch, cw) != (h, w):
            top, left = int(u() * (h - ch + 1)), int(u() * (w - cw + 1))
            crop = x[:, top : top + ch, left : left + cw]
            x = F.interpolate(crop[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    if config.brightness:
        x = x * (1.0 + (2 * u() - 1) * config.brightness)
    if config.contrast:
        mean = x.mean()
        x = (x - mean) * (1.0 + (2 * u() - 1) * config.contrast) + mean
    if config.saturation:
        grey = x.mean(dim=0, keepdim=True)
        x = (x - grey) * (1.0 + (2 * u() - 1) * config.saturation) + grey
    return x.clamp(0.0, 1.0).contiguous()
