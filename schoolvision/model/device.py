"""Pick the compute device."""

from __future__ import annotations

import torch

from schoolvision.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """Return the device for ``name`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``).

    ``auto`` takes CUDA when present so that the same command runs on a laptop and on a GPU box.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but CUDA is not available here; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"unknown device {name!r} (use auto, cpu or cuda)") from exc
