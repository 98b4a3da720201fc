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
import os
import platform
import warnings
from dataclasses import fields
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

from schoolvision import CLASSES
from schoolvision.data.dataset import CachedChipDataset, ChipDataset
from schoolvision.errors import UserError
from schoolvision.io import manifest
from schoolvision.io.folders import ChipsFolder, RunFolder, check_inputs, prepare_output, sha256
from schoolvision.model.backbones import SchoolClassifier, build_model, pretraining_size, stem_modules
from schoolvision.model.checkpoint import CheckpointMeta, read_checkpoint, save_checkpoint
from schoolvision.model.device import kept_heap
from schoolvision.model.distributed import Distributed, init_distributed
from schoolvision.model.inference import school_probability
from schoolvision.train import tblog
from schoolvision.train.config import MIN_EVAL_SCHOOL_CHIPS, PRECISIONS, RESUME_FREE, SPLITS, TrainConfig
from schoolvision.train.evaluation import bootstrap_groups, label_array, prediction_frame, split_report
from schoolvision.train.loop import gather_logits, run_epochs
from schoolvision.train.metrics import fit_temperature, tune_threshold
from schoolvision.train.novelty import summarise_run
from schoolvision.train.state import (
    Resolved,
    TrainerState,
    autocast_setting,
    class_weights,
    jsonable_config,
    seed_everything,
    warmup_cosine,
    worker_init,
)

__all__ = ["MIN_EVAL_SCHOOL_CHIPS", "PRECISIONS", "RESUME_FREE", "SPLITS", "TrainConfig", "few_school_notes", "fit",
           "initial_model", "read_init"]

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
        run_epochs(state)
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
    amp, amp_dtype = autocast_setting(config.precision, device)
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
        pin_memory=cuda, persistent_workers=settings.num_workers > 0, worker_init_fn=worker_init,
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
        logits, labels = gather_logits(model, splits[split], state.ddp, config.batch_size, state.device,
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
    hparams = {k: v for k, v in jsonable_config(config).items() if isinstance(v, (int, float, str, bool))}
    final = {f"hparam/test_{k}": float(metrics[k]) for k in ("auprc", "f1", "f2", "roc_auc", "accuracy", "ece")}
    tblog.log_hparams(state.writer, hparams, final)
    tblog.close(state.writer, run.tensorboard)
    return metrics
