"""The trainer's state: seeding and RNG states, the schedule, what a run resolved, and :class:`TrainerState`.

Everything the epoch loop reads and updates lives in one :class:`TrainerState`; ``last.pt`` saves its
progress and RNG states so that a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from torch.utils.tensorboard import SummaryWriter

from schoolvision import CLASSES
from schoolvision.data.dataset import ChipDataset
from schoolvision.errors import UserError
from schoolvision.io.folders import RunFolder
from schoolvision.model.backbones import SchoolClassifier
from schoolvision.model.checkpoint import CheckpointMeta, save_checkpoint
from schoolvision.model.distributed import Distributed
from schoolvision.model.runtime import bf16_native
from schoolvision.train.config import TrainConfig
from schoolvision.train.evaluation import label_array

# --- small helpers -----------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch: data order, augmentation and dropout depend only on (seed, epoch)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def warmup_cosine(warmup_steps: int, total_steps: int):
    """LambdaLR factor: linear warm-up from ~0 to 1, then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def class_weights(labels: np.ndarray) -> torch.Tensor:
    """Inverse-frequency weights n / (k * n_c), so both classes weigh the same in the loss."""
    counts = np.bincount(labels, minlength=len(CLASSES)).astype(np.float64)
    return torch.tensor(len(labels) / (len(CLASSES) * np.maximum(counts, 1)), dtype=torch.float32)


def worker_init(worker_id: int) -> None:
    """Seed numpy and python in a DataLoader worker from its torch seed (torch seeds only itself)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> dict[str, torch.Tensor]:
    """RNG states as tensors (so ``last.pt`` loads with ``weights_only=True``)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": torch.tensor([np_state[2], np_state[3]], dtype=torch.int64),
        "numpy_gauss": torch.tensor([np_state[4]], dtype=torch.float64),
        "python": torch.tensor(py_state[1], dtype=torch.int64),
        "python_version": torch.tensor([py_state[0]], dtype=torch.int64),
    }


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Restore the RNG states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    pos, has_gauss = (int(v) for v in state["numpy_pos"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, pos, has_gauss, float(state["numpy_gauss"][0])))
    random.setstate((int(state["python_version"][0]), tuple(int(v) for v in state["python"]), None))


# --- the trainer state ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    """What :class:`TrainConfig` leaves to the machine (``None`` / "auto"), as this run resolved it."""

    image_size: int  # model input size
    chip_size: int  # stored chip size
    amp: bool
    amp_dtype: torch.dtype
    channels_last: bool
    num_workers: int
    preload: bool  # training and validation chips decoded once into memory
    freeze_stem: bool  # the backbone's stem (layers up to output stride 4) keeps its starting weights

    @property
    def precision_name(self) -> str:
        """``fp32``, ``bf16`` or ``fp16``: what the training steps computed in (metrics.json records it)."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype] if self.amp else "fp32"

    def record(self, device: torch.device, world: int, splits: dict[str, ChipDataset]) -> dict[str, Any]:
        """The ``resolved`` entry of ``config.json``, with the chip counts per split and class."""
        return {
            "device": str(device), "image_size": self.image_size, "chip_size": self.chip_size, "amp": self.amp,
            "amp_dtype": str(self.amp_dtype).replace("torch.", "") if self.amp else None,
            "precision": self.precision_name,
            "channels_last": self.channels_last, "num_workers": self.num_workers, "preload": self.preload,
            "freeze_stem": self.freeze_stem,
            "world_size": world, "imbalance": "cross-entropy weighted by inverse class frequency",
            "counts": {s: dict(zip(CLASSES, np.bincount(label_array(d.frame), minlength=len(CLASSES)).tolist()))
                       for s, d in splits.items()},
        }


@dataclass
class TrainerState:
    """Everything the epoch loop reads and updates, held in one place as torchgeo's ``ClassificationTask`` does.

    The fields from ``epoch`` on are the progress that ``last.pt`` saves and a resumed run restores:
    ``epoch`` counts finished epochs, ``best_score`` is the best validation AUPRC (reached at
    ``best_epoch``), ``stale`` counts epochs since, and ``stopped`` says that early stopping ended the run.
    """

    config: TrainConfig
    ddp: Distributed
    device: torch.device
    settings: Resolved
    model: SchoolClassifier  # the bare model: checkpoints and evaluation
    net: nn.Module  # what trains: the model, or its DistributedDataParallel wrapper
    train_ds: ChipDataset  # augmented
    val_ds: ChipDataset
    sampler: DistributedSampler
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    loss_fn: nn.CrossEntropyLoss
    meta: CheckpointMeta  # written into best.pt / last.pt
    writer: SummaryWriter | None = None  # TensorBoard, on rank 0 only
    epoch: int = 0
    best_score: float = -1.0
    best_epoch: int = -1
    stale: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False

    @property
    def run(self) -> RunFolder:
        """The run folder being written."""
        return RunFolder(self.config.out_dir)

    def restore(self, last: dict[str, Any]) -> None:
        """Continue from ``last.pt``: weights, optimiser, schedule, progress and RNG states."""
        self.model.load_state_dict(last["model"])
        self.optimizer.load_state_dict(last["optimizer"])
        self.scheduler.load_state_dict(last["scheduler"])
        self.scaler.load_state_dict(last["scaler"])
        self.epoch = int(last["epoch"])
        self.best_score, self.best_epoch = float(last["best_score"]), int(last["best_epoch"])
        self.stale = int(last["stale"])
        self.history = list(last["history"])
        self.stopped = bool(last["stopped"])
        set_rng_state(last["rng"])

    def save_last(self) -> None:
        """Write ``last.pt``: everything :meth:`restore` needs, RNG states included."""
        save_checkpoint(
            self.run.last, self.model, self.meta, optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(), epoch=self.epoch,
            best_score=self.best_score, best_epoch=self.best_epoch, stale=self.stale, stopped=self.stopped,
            history=self.history, rng=rng_state(), config=jsonable_config(self.config),
        )


def jsonable_config(config: TrainConfig) -> dict[str, Any]:
    """The config as JSON values (paths as strings): ``config.json`` and the checkpoints record it."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}


def autocast_setting(precision: str, device: torch.device) -> tuple[bool, torch.dtype]:
    """(autocast on, its dtype) for a :data:`PRECISIONS` value on ``device``.

    A CPU trains in float32 unless bf16 is asked for, whatever bfloat16 support it has: the recipe (and so
    the book's numbers and intervals) must not change with the machine. Asked for where the CPU emulates
    bfloat16, it runs, with a warning that it is slow.
    """
    cuda = device.type == "cuda"
    if precision == "fp32" or (precision == "auto" and not cuda):
        return False, torch.float32
    if precision == "fp16":
        if not cuda:
            raise UserError("--precision fp16 needs a CUDA device; on a CPU use fp32 or bf16")
        return True, torch.float16
    if precision == "auto":
        return True, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if not cuda and not bf16_native():
        warnings.warn("--precision bf16: this CPU has no native bfloat16 (emulated, ~10x slower than fp32)",
                      stacklevel=3)
    return True, torch.bfloat16

