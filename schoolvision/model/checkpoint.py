"""Checkpoints: one format for training, evaluation, explanation, clustering and scanning.

A checkpoint is a plain dict of tensors and primitives, loaded with ``weights_only=True`` (never
full pickle), written atomically. ``meta`` says everything a later step needs to use the model the
way it was trained: backbone, input size, the chips' ground sampling distance, how their imagery
was read (band numbers and 8-bit scaling rule, which ``scan`` applies by default), the tuned
threshold and the calibration temperature.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from schoolvision import CLASSES
from schoolvision.errors import UserError
from schoolvision.io.atomic import write_bytes
from schoolvision.io.folders import RunFolder
from schoolvision.model.backbones import SchoolClassifier, build_model

FORMAT = "schoolvision-checkpoint/1"


@dataclass
class CheckpointMeta:
    """What a trained model needs beside its weights."""

    backbone: str
    image_size: int
    chip_size: int
    gsd: float | None
    threshold: float = 0.5
    temperature: float = 1.0
    classes: list[str] = field(default_factory=lambda: list(CLASSES))
    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    imagery: dict[str, Any] = field(default_factory=dict)  # how the chips read imagery (dataset.json "imagery")


def save_checkpoint(path: str | Path, model: torch.nn.Module, meta: CheckpointMeta, **extra: Any) -> Path:
    """Write ``{"format", "meta", "model", **extra}`` atomically.

    ``extra`` holds resumable state (optimizer, scheduler, RNG states) for ``last.pt``; it must be
    made of tensors and primitives so that ``weights_only=True`` can read it back.
    """
    model = getattr(model, "module", model)  # unwrap DDP
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "meta": asdict(meta), "model": state, **extra}, buf)
    return write_bytes(path, buf.getvalue())


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict safely; a missing, corrupt or foreign file is a :class:`UserError`."""
    path = RunFolder.checkpoint(path)
    if not path.is_file():
        raise UserError("checkpoint not found (train a model first: schoolvision train --chips DIR --out RUN)", path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        raise UserError(f"not a readable checkpoint ({reason})", path) from exc
    except Exception as exc:  # noqa: BLE001 - weights_only refusals come in several types
        raise UserError(f"refused to load checkpoint safely ({type(exc).__name__}); "
                        "it is not a schoolvision checkpoint", path) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"not a schoolvision checkpoint (expected format {FORMAT})", path)
    return ckpt


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> tuple[SchoolClassifier, CheckpointMeta]:
    """Rebuild the model of a checkpoint (or of ``RUN/best.pt``), in eval mode on ``device``."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    meta = CheckpointMeta(**ckpt["meta"])
    model = build_model(meta.backbone, pretrained=False, num_classes=len(meta.classes))
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0][:160]
        raise UserError(f"checkpoint weights do not fit backbone {meta.backbone!r}: {reason}", path) from exc
    return model.to(device).eval(), meta
