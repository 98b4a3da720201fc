"""Train a school / not_school classifier: ``fit(TrainConfig) -> test metrics``.

One code path for CPU, CUDA and ``torchrun`` (DistributedDataParallel):

* AdamW, linear warm-up then cosine decay, stepped per batch; optional frozen backbone for the
  first epochs (its learning rate is 0 and its BatchNorm statistics are kept).
* Class imbalance: cross-entropy weighted by inverse class frequency of the training split (a
  weighted loss keeps every chip once per epoch, so epochs and resumption stay simple).
* Data order and augmentation depend only on ``(seed, epoch)``: an interrupted run resumed from
  ``last.pt`` reaches exactly the metrics of an uninterrupted one on CPU.
* Model selection and early stopping on validation AUPRC; at the end the best model's temperature
  is fitted and its threshold tuned (F-beta) on validation, then the test split is scored.

Augmentation is ``ChipDataset(augment=True)`` (flips, right-angle rotations, mild zoom and colour),
seeded by (seed, epoch, index). Small splits are decoded once into memory (uint8) so that GeoTIFF
decoding does not slow every epoch.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import random
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import timm
import torch
import torch.distributed as dist
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from schoolvision import CLASSES
from schoolvision.data.dataset import CachedChipDataset, ChipDataset
from schoolvision.errors import UserError, check_range
from schoolvision.io import manifest
from schoolvision.io.folders import ChipsFolder, RunFolder, check_inputs, prepare_output, sha256
from schoolvision.model.backbones import SchoolClassifier, build_model, pretraining_size, stem_modules
from schoolvision.model.checkpoint import CheckpointMeta, read_checkpoint, save_checkpoint
from schoolvision.model.device import kept_heap
from schoolvision.model.distributed import Distributed, init_distributed
from schoolvision.model.inference import predict_logits, school_probability
from schoolvision.model.runtime import bf16_native
from schoolvision.train import tblog
from schoolvision.train.evaluation import bootstrap_groups, label_array, prediction_frame, split_report
from schoolvision.train.metrics import auprc, classification_metrics, fit_temperature, tune_threshold
from schoolvision.train.novelty import summarise_run

MIN_EVAL_SCHOOL_CHIPS = 20
"""``train`` warns when the validation or test split holds fewer school chips: the model is chosen, its threshold
tuned and its metrics measured on them, and a handful of schools gives a perfect score by luck."""

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""Training precisions. ``bf16`` on a CPU is opt-in: on CPUs with AMX it trained 1.6x faster at 224 px, but it
changes the recipe's numbers (benchmarks/train_precision.py; README), and where the CPU lacks native bfloat16
it is emulated and ~10x slower than float32."""

# Settings that may differ between an interrupted run and its resumption.
RESUME_FREE = {"resume", "overwrite", "device", "num_workers", "log_every"}
SPLITS = ("train", "val", "test")


@dataclass
class TrainConfig:
    """Every training parameter; written to ``RUN/config.json``."""

    chips_dir: Path
    out_dir: Path
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    epochs: int = 6  # with early stopping (patience) on the validation AUPRC
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0
    freeze_backbone_epochs: int = 0
    freeze_stem: bool | None = None  # None: keep the layers up to output stride 4 at their starting weights when
    # those are learnt (ImageNet or --init-from), train them from random weights: see backbones.stem_modules
    image_size: int | None = None  # None: the backbone's pretraining size (224) if pretrained, else the chip size
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    num_workers: int | None = None  # None: 0 on CPU (data is in memory), min(4, cores) on CUDA
    patience: int | None = 5  # epochs without a better validation AUPRC before stopping; None = never
    threshold_beta: float = 1.0  # 1 tunes the threshold for F1, 2 for F2 (favours recall)
    precision: str = "auto"  # one of PRECISIONS. auto: bf16 autocast on CUDA (fp16 + GradScaler where bf16 is
    # not supported), float32 on every CPU, so that the same command trains the same recipe on any CPU
    channels_last: bool | None = None  # None: on for CUDA and CPU (2-3x faster training steps on CPU, measured)
    preload: bool | None = None  # None: decode the training chips into memory when they fit in 2 GiB
    log_every: int = 10  # batches between progress-bar updates
    overwrite: bool = False
    n_boot: int = 1000  # bootstrap resamples for the F1 / AUPRC intervals
    init_from: Path | None = None  # fine-tune: start from this earlier run's best.pt (or a checkpoint file)

    def __post_init__(self) -> None:
        self.chips_dir = Path(self.chips_dir)
        self.out_dir = Path(self.out_dir)
        if self.init_from is not None:
            self.init_from = Path(self.init_from)
        for option, value, rule in (
            ("--epochs", self.epochs, {"minimum": 1}),
            ("--batch-size", self.batch_size, {"minimum": 1}),
            ("--lr", self.lr, {"above": 0}),
            ("--image-size", self.image_size, {"minimum": 32}),
            ("--freeze-epochs", self.freeze_backbone_epochs, {"minimum": 0}),
            ("--beta", self.threshold_beta, {"above": 0}),
            ("--patience", self.patience, {"minimum": 1}),
            ("--num-workers", self.num_workers, {"minimum": 0}),
            ("weight_decay", self.weight_decay, {"minimum": 0}),
            ("warmup_epochs", self.warmup_epochs, {"minimum": 0}),
            ("log_every", self.log_every, {"minimum": 1}),
            ("n_boot", self.n_boot, {"minimum": 1}),
        ):
            check_range(option, value, **rule)
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")


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


def _worker_init(worker_id: int) -> None:
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
            history=self.history, rng=rng_state(), config=_jsonable_config(self.config),
        )


# --- distributed -------------------------------------------------------------------------------


def _gather_logits(model, dataset, ddp: Distributed, batch_size: int, device,
                   num_workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of the whole ``dataset``; under DDP each rank scores a shard, then all gather."""
    if ddp.world == 1:
        return predict_logits(model, dataset, batch_size, device, num_workers, progress=False)
    idx = list(range(ddp.rank, len(dataset), ddp.world))
    part = predict_logits(model, dataset, batch_size, device, num_workers, indices=idx, progress=False)
    parts = ddp.gather((idx, part[0], part[1]))
    order = np.concatenate([p[0] for p in parts]).astype(int)
    logits = np.concatenate([p[1] for p in parts])
    labels = np.concatenate([p[2] for p in parts])
    inv = np.argsort(order)
    return logits[inv], labels[inv]


# --- the run folder ----------------------------------------------------------------------------


def _prepare_run_dir(config: TrainConfig) -> None:
    inputs = {"--chips": config.chips_dir}
    if not config.resume:
        prepare_output(config.out_dir, config.overwrite, own_files=RunFolder.FILES, inputs=inputs,
                       message="run folder is not empty; use --overwrite to replace it or --resume to continue it")
    else:  # the folder of a run that was stopped: its last.pt stays, its temporaries go
        check_inputs(config.out_dir, inputs)
        manifest.remove_temporaries(config.out_dir)


def _config_record(config: TrainConfig, resolved: dict[str, Any]) -> dict[str, Any]:
    """``config.json``: the config, what was resolved at run time, the chips index hash and versions."""
    record = {f.name: getattr(config, f.name) for f in fields(config)}
    record["chips_dir"] = str(config.chips_dir.resolve())
    record["out_dir"] = str(config.out_dir.resolve())
    if config.init_from is None:
        del record["init_from"]  # config.json of a run from scratch stays as it was
    else:
        record["init_from"] = str(RunFolder.checkpoint(config.init_from).resolve())
        record["init_from_sha256"] = sha256(RunFolder.checkpoint(config.init_from))
    record["resolved"] = resolved
    record["chips_index_sha256"] = ChipsFolder(config.chips_dir).index_sha256()
    record["imagery"] = ChipsFolder(config.chips_dir).read_meta().get("imagery") or {}  # what scan applies
    record["versions"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "schoolvision": _package_version(),
    }
    return record


def _package_version() -> str:
    try:
        return version("schoolvision")
    except PackageNotFoundError:
        return "unknown"


def _read_last(config: TrainConfig) -> dict[str, Any]:
    """``last.pt`` of the run to resume, checked against ``config``; nothing is written before this."""
    path = RunFolder(config.out_dir).last
    last = read_checkpoint(path)  # UserError if missing / corrupt
    saved = last.get("config", {})
    for f in fields(config):
        if f.name in RESUME_FREE or f.name not in saved:
            continue
        now = getattr(config, f.name)
        now = str(Path(now).resolve()) if isinstance(now, Path) else now
        then = saved[f.name]
        if f.name in ("chips_dir", "out_dir", "init_from") and then is not None:
            then = str(Path(then).resolve())
        if now != then:
            raise UserError(f"cannot resume: {f.name} was {then!r} in this run, now {now!r} "
                            "(start a new run instead)", path)
    if last["meta"]["backbone"] != config.backbone:
        raise UserError(f"cannot resume: checkpoint is a {last['meta']['backbone']} model, "
                        f"--backbone is {config.backbone}", path)
    return last


def read_init(config: TrainConfig, chips_meta: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The checkpoint ``config.init_from`` names, checked against this run; ``None`` without ``init_from``.

    Fine-tuning keeps the earlier model's head, so its backbone and class list (in order) must be
    this run's: a mismatch is refused before anything is written.

    Raises:
        UserError: the checkpoint is missing or unreadable, or its backbone or classes differ.
    """
    if config.init_from is None:
        return None
    path = RunFolder.checkpoint(config.init_from)
    ckpt = read_checkpoint(path)
    meta = ckpt["meta"]
    if meta["backbone"] != config.backbone:
        raise UserError(f"cannot fine-tune: --init-from is a {meta['backbone']} model, --backbone is "
                        f"{config.backbone}", path)
    classes = list((chips_meta or {}).get("classes") or CLASSES)
    if list(meta.get("classes", CLASSES)) != classes:
        raise UserError(f"cannot fine-tune: --init-from has classes {list(meta['classes'])}, the chips "
                        f"have {classes}", path)
    return ckpt


def initial_model(config: TrainConfig, init: dict[str, Any] | None = None) -> SchoolClassifier:
    """The model before the first step: ``init``'s weights (see :func:`read_init`), else a new one.

    A new model has ImageNet weights (``pretrained``) or random ones; call after seeding.
    """
    if init is None:
        return build_model(config.backbone, pretrained=config.pretrained, num_classes=len(CLASSES))
    model = build_model(config.backbone, pretrained=False, num_classes=len(CLASSES))
    model.load_state_dict(init["model"], strict=True)
    return model


def _jsonable_config(config: TrainConfig) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}


# --- fit ---------------------------------------------------------------------------------------


def fit(config: TrainConfig, figures: tblog.FigureMaker | None = None) -> dict[str, Any]:
    """Train, select by validation AUPRC, calibrate, score the test split; return the test metrics.

    Writes ``best.pt``, ``last.pt`` (every epoch, atomically), ``config.json``, ``history.json``,
    ``metrics.json``, ``predictions.csv`` and ``tensorboard/`` into ``config.out_dir``. Under
    ``torchrun`` every process calls ``fit`` and rank 0 writes the files.

    Args:
        config: every training parameter; recorded in ``config.json`` and ``last.pt``.
        figures: draws the end-of-run TensorBoard figures (tag -> Figure) from the best model's
            :class:`~schoolvision.train.tblog.RunScores`, e.g.
            :func:`schoolvision.plotting.training.tensorboard_figures`. ``None`` logs scalars, PR
            curves and hyper-parameters only (training does not draw figures itself).

    Returns:
        The test metrics written to ``metrics.json``: those of
        :func:`~schoolvision.train.metrics.classification_metrics` with ``temperature``, ``bootstrap``
        intervals, the validation report under ``val``, ``best_epoch``, ``epochs_run``, ``backbone``
        and ``pretrained``.

    Raises:
        UserError: the chips folder is missing or lacks a split or class; the run folder is not
            empty (without ``overwrite`` or ``resume``); ``last.pt`` is missing, corrupt or from
            other settings on ``resume``; CUDA ran out of memory (the message suggests a smaller batch).
    """
    ddp, device = init_distributed(config.device)
    try:
        with kept_heap() if device.type == "cpu" else contextlib.nullcontext():
            return _fit(config, ddp, device, figures)
    except torch.cuda.OutOfMemoryError as exc:
        raise UserError(f"CUDA ran out of memory at batch size {config.batch_size}; try a smaller --batch-size "
                        f"(e.g. {max(1, config.batch_size // 2)}) or --image-size") from exc
    finally:
        if ddp.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _fit(config: TrainConfig, ddp: Distributed, device: torch.device,
         figures: tblog.FigureMaker | None) -> dict[str, Any]:
    chips_meta = ChipsFolder(config.chips_dir).read_meta()
    init = read_init(config, chips_meta)  # a refused --init-from costs nothing
    if ddp.main:
        _prepare_run_dir(config)
    ddp.barrier()
    last = _read_last(config) if config.resume else None

    splits, settings = _resolve(config, device, chips_meta, init)
    if ddp.main and not config.resume:
        for note in few_school_notes(splits):
            warnings.warn(note, stacklevel=2)  # before the long work
    if ddp.main and not config.resume:
        RunFolder(config.out_dir).write_config(_config_record(config, settings.record(device, ddp.world, splits)))

    meta = CheckpointMeta(config.backbone, settings.image_size, settings.chip_size, chips_meta.get("gsd"),
                          imagery=chips_meta.get("imagery") or {})
    state = _build_state(config, ddp, device, settings, splits, meta, init)
    if last is not None:
        state.restore(last)
    state.writer = tblog.open_writer(state.run.tensorboard) if ddp.main else None
    try:
        _epochs(state)
        return _finish(state, splits, figures)
    finally:
        if state.writer is not None:
            state.writer.close()  # idempotent; _finish already closed and checked it on success


def few_school_notes(splits: dict[str, ChipDataset], minimum: int = MIN_EVAL_SCHOOL_CHIPS) -> list[str]:
    """One line per evaluation split holding fewer than ``minimum`` school chips (see :data:`MIN_EVAL_SCHOOL_CHIPS`)."""
    notes = []
    for split, role in (("val", "chooses the model and tunes its threshold"), ("test", "measures it")):
        n = splits[split].class_counts()["school"]
        if n < minimum:
            notes.append(f"the {split} split holds {n} school chip(s), fewer than {minimum}, and {role}: expect "
                         "wide intervals and a lucky or unlucky score (more scenes, or --val-scenes / --test-scenes)")
    return notes


def _resolve(config: TrainConfig, device: torch.device, chips_meta: dict[str, Any],
             init: dict[str, Any] | None = None) -> tuple[dict[str, ChipDataset], Resolved]:
    """Open the train / val / test splits and settle every "auto" setting for this machine.

    ChipDataset raises a one-line error for an empty split or class. A fine-tuned model keeps the
    input size of the run it starts from unless ``image_size`` says otherwise.
    """
    chip_size = int(chips_meta.get("chip_size", 0)) or None
    image_size = config.image_size or (int(init["meta"]["image_size"]) if init is not None else None)
    image_size = image_size or (pretraining_size(config.backbone) if config.pretrained else chip_size)
    splits = {s: ChipDataset(config.chips_dir, split=s, augment=False, image_size=image_size) for s in SPLITS}
    if image_size is None:
        image_size = int(splits["train"][0]["image"].shape[-1])
    cuda = device.type == "cuda"
    amp, amp_dtype = _autocast_setting(config.precision, device)
    n_bytes = len(splits["train"]) * 3 * image_size * image_size
    learnt_start = config.pretrained or init is not None  # random stem filters must train
    default_workers = min(4, os.cpu_count() or 1) if cuda else 0
    settings = Resolved(
        image_size=image_size,
        chip_size=chip_size or image_size,
        amp=amp,
        amp_dtype=amp_dtype,
        # channels_last: oneDNN (CPU) and cuDNN (tensor cores) both run NHWC convolutions faster; the
        # same function, so only float noise differs and a resumed run stays bit-identical
        channels_last=device.type in ("cuda", "cpu") if config.channels_last is None else config.channels_last,
        num_workers=config.num_workers if config.num_workers is not None else default_workers,
        preload=config.preload if config.preload is not None else n_bytes < 2 * 2**30,
        freeze_stem=learnt_start if config.freeze_stem is None else config.freeze_stem,
    )
    return splits, settings


def _autocast_setting(precision: str, device: torch.device) -> tuple[bool, torch.dtype]:
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


def _build_state(config: TrainConfig, ddp: Distributed, device: torch.device, settings: Resolved,
                 splits: dict[str, ChipDataset], meta: CheckpointMeta,
                 init: dict[str, Any] | None = None) -> TrainerState:
    """Seed, then build a fresh run's model (``init``'s weights when fine-tuning), loader, optimiser and loss."""
    seed_everything(config.seed)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # speed over bitwise reproducibility on GPU
    model = initial_model(config, init).to(device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if settings.freeze_stem:
        for layer in stem_modules(model):
            layer.requires_grad_(False)
    net: nn.Module = model
    if ddp.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)

    size, seed = settings.image_size, config.seed
    if settings.preload:
        train_ds: ChipDataset = CachedChipDataset(config.chips_dir, "train", augment=True, image_size=size, seed=seed)
        val_ds: ChipDataset = CachedChipDataset(config.chips_dir, "val", augment=False, image_size=size, seed=seed)
    else:
        train_ds = ChipDataset(config.chips_dir, split="train", augment=True, image_size=size, seed=seed)
        val_ds = splits["val"]
    sampler = DistributedSampler(train_ds, num_replicas=ddp.world, rank=ddp.rank, shuffle=True, seed=config.seed)
    loader = DataLoader(
        train_ds, batch_size=config.batch_size, sampler=sampler, num_workers=settings.num_workers,
        pin_memory=cuda, persistent_workers=settings.num_workers > 0, worker_init_fn=_worker_init,
        generator=torch.Generator().manual_seed(config.seed), drop_last=False,
    )
    steps_per_epoch = len(loader)
    backbone_ids = {id(p) for p in model.backbone_parameters()}
    head_params = [p for p in model.parameters() if id(p) not in backbone_ids]
    trained = [p for p in model.backbone_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": trained}, {"params": head_params}],
        lr=config.lr, weight_decay=config.weight_decay,
    )
    base = warmup_cosine(max(1, round(config.warmup_epochs * steps_per_epoch)), config.epochs * steps_per_epoch)
    freeze_steps = config.freeze_backbone_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [lambda s: 0.0 if s < freeze_steps else base(s), base]
    )
    scaler = torch.amp.GradScaler("cuda", enabled=settings.amp and settings.amp_dtype == torch.float16)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(label_array(splits["train"].frame)).to(device))
    return TrainerState(config, ddp, device, settings, model, net, train_ds, val_ds, sampler, loader, optimizer,
                        scheduler, scaler, loss_fn, meta)


def _epochs(state: TrainerState) -> None:
    """The epoch loop: train, validate, keep the best by val AUPRC, write best.pt / last.pt / history."""
    config = state.config
    for epoch in range(state.epoch, config.epochs):
        if state.stopped:
            break
        seed_everything(epoch_seed(config.seed, epoch))
        state.sampler.set_epoch(epoch)
        state.train_ds.set_epoch(epoch)
        t0 = time.perf_counter()
        train_stats = _train_epoch(state, epoch)
        train_seconds = time.perf_counter() - t0
        val_threshold, val_m, val_loss = _validate(state)
        row = {
            "epoch": epoch + 1, "lr": state.optimizer.param_groups[1]["lr"], "train_seconds": train_seconds,
            "train_chips_per_second": train_stats.pop("n") / train_seconds,
            "train_data_seconds": train_stats.pop("data_seconds"),
            **{f"train_{k}": v for k, v in train_stats.items()},
            "val_loss": val_loss, "val_accuracy": val_m["accuracy"], "val_f1": val_m["f1"], "val_auprc": val_m["auprc"],
        }
        _end_epoch(state, row, val_threshold, val_m)


def _train_epoch(state: TrainerState, epoch: int) -> dict[str, float]:
    """One pass over the training data; returns mean loss, accuracy, F1 and AUPRC of the epoch."""
    config, device, settings = state.config, state.device, state.settings
    state.net.train()
    if epoch < config.freeze_backbone_epochs:
        state.model.trunk.eval()  # keep pretrained BatchNorm statistics while the backbone is frozen
    if settings.freeze_stem:
        for layer in stem_modules(state.model):
            layer.eval()  # a frozen stem keeps its BatchNorm statistics too
    loss_sum = torch.zeros((), dtype=torch.float64)
    logits_all, labels_all = [], []
    bar = tqdm(state.loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not state.ddp.main)
    data_seconds, tick = 0.0, time.perf_counter()
    for step, batch in enumerate(bar):
        data_seconds += time.perf_counter() - tick  # waiting for the loader (and the progress bar)
        x = batch["image"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        if settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=settings.amp_dtype, enabled=settings.amp):
            logits = state.net(x)
            loss = state.loss_fn(logits.float(), y)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        loss_sum += loss.detach().double().cpu() * len(y)
        logits_all.append(logits.detach().float().cpu())
        labels_all.append(y.cpu())
        if step % config.log_every == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{state.optimizer.param_groups[1]['lr']:.2e}")
        tick = time.perf_counter()
    logits_t, labels_t = torch.cat(logits_all), torch.cat(labels_all)
    if state.ddp.world > 1:
        parts = state.ddp.gather((float(loss_sum), logits_t, labels_t))
        loss_sum = torch.tensor(sum(p[0] for p in parts), dtype=torch.float64)
        logits_t = torch.cat([p[1] for p in parts])
        labels_t = torch.cat([p[2] for p in parts])
    probs = school_probability(logits_t)
    labels = labels_t.numpy()
    m = classification_metrics(labels, probs, 0.5)
    return {"loss": float(loss_sum) / len(labels), "accuracy": m["accuracy"], "f1": m["f1"],
            "auprc": auprc(labels, probs), "n": len(labels), "data_seconds": data_seconds}


def _validate(state: TrainerState) -> tuple[float, dict[str, Any], float]:
    """(tuned threshold, metrics at it, weighted loss) of the current model on the validation split."""
    net = state.net if state.ddp.world == 1 else state.model
    logits, labels = _gather_logits(net, state.val_ds, state.ddp, state.config.batch_size, state.device, 0)
    probs = school_probability(logits, 1.0)
    threshold = tune_threshold(labels, probs, state.config.threshold_beta)
    metrics = classification_metrics(labels, probs, threshold)
    weight = state.loss_fn.weight.cpu()
    loss = float(nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels), weight=weight))
    return threshold, metrics, loss


def _end_epoch(state: TrainerState, row: dict[str, Any], val_threshold: float, val_m: dict[str, Any]) -> None:
    """Record the epoch; on rank 0 write best.pt (when validation AUPRC improved), last.pt, history, TensorBoard."""
    state.history.append(row)
    state.epoch = int(row["epoch"])
    improved = val_m["auprc"] > state.best_score
    if improved:
        state.best_score, state.best_epoch, state.stale = val_m["auprc"], state.epoch, 0
    else:
        state.stale += 1
    state.stopped = state.config.patience is not None and state.stale >= state.config.patience
    if state.ddp.main:
        if improved:
            state.meta.threshold, state.meta.epoch = val_threshold, state.epoch
            state.meta.metrics = {f"val_{k}": float(val_m[k]) for k in ("auprc", "f1", "accuracy")}
            save_checkpoint(state.run.best, state.model, state.meta)
        state.save_last()
        state.run.write_history(state.history)
        tblog.log_epoch(state.writer, row)
    state.ddp.barrier()


def _finish(state: TrainerState, splits: dict[str, ChipDataset], figures: tblog.FigureMaker | None) -> dict[str, Any]:
    """Calibrate and tune the best model on validation, score test, write the run's outputs."""
    config, model, run = state.config, state.model, state.run
    best = read_checkpoint(run.best)
    model.load_state_dict(best["model"])
    if state.device.type == "cpu":  # score in the layout load_classifier gives: evaluate reproduces it bit for bit
        model = model.to(memory_format=torch.contiguous_format)
    meta = CheckpointMeta(**best["meta"])
    reports, frames, scores = {}, [], {}
    for split in ("val", "test"):
        logits, labels = _gather_logits(model, splits[split], state.ddp, config.batch_size, state.device,
                                        state.settings.num_workers)
        if split == "val":
            meta.temperature = fit_temperature(logits, labels)
            meta.threshold = tune_threshold(labels, school_probability(logits, meta.temperature), config.threshold_beta)
        probs = school_probability(logits, meta.temperature)
        scores[split] = (labels, probs)
        reports[split] = split_report(labels, probs, meta.threshold, meta.temperature, config.n_boot, config.seed,
                                      groups=bootstrap_groups(splits[split].frame))
        frames.append(prediction_frame(splits[split].frame, split, probs, meta.threshold))
    metrics = dict(reports["test"])
    metrics.update(val=reports["val"], best_epoch=meta.epoch, epochs_run=len(state.history), backbone=config.backbone,
                   pretrained=config.pretrained, training_precision=state.settings.precision_name)
    if not state.ddp.main:
        return metrics
    meta.metrics = {f"{s}_{k}": float(reports[s][k]) for s in ("val", "test")
                    for k in ("auprc", "f1", "accuracy", "roc_auc", "ece")}
    save_checkpoint(run.best, model, meta)
    summarise_run(model, meta, run.best, config.chips_dir, state.device)  # what the scans' trust maps compare with
    run.write_predictions(frames)
    run.write_metrics(metrics)
    step = len(state.history)
    tblog.log_scores(state.writer, tblog.run_scores(meta.threshold, scores, splits["test"]), step, figures)
    hparams = {k: v for k, v in _jsonable_config(config).items() if isinstance(v, (int, float, str, bool))}
    final = {f"hparam/test_{k}": float(metrics[k]) for k in ("auprc", "f1", "f2", "roc_auc", "accuracy", "ece")}
    tblog.log_hparams(state.writer, hparams, final)
    tblog.close(state.writer, run.tensorboard)
    return metrics
