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

import math
import os
import platform
import random
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from schoolvision import CLASSES
from schoolvision.io.atomic import write_json
from schoolvision.model.checkpoint import CheckpointMeta, read_checkpoint, save_checkpoint
from schoolvision.model.device import resolve_device
from schoolvision.errors import UserError
from schoolvision.train.evaluation import label_array, prediction_frame, split_report, write_predictions
from schoolvision.model.inference import predict_logits, school_probability
from schoolvision.train.metrics import auprc, classification_metrics, fit_temperature, tune_threshold
from schoolvision.model.backbones import build_model

RUN_FILES = ("best.pt", "last.pt", "config.json", "metrics.json", "predictions.csv", "history.json", "tensorboard")
# Settings that may differ between an interrupted run and its resumption.
RESUME_FREE = {"resume", "overwrite", "device", "num_workers", "log_every"}


@dataclass
class TrainConfig:
    """Every training parameter; written to ``RUN/config.json``."""

    chips_dir: Path
    out_dir: Path
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0
    freeze_backbone_epochs: int = 0
    image_size: int | None = None  # None: the chips' own size
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    num_workers: int | None = None  # None: 0 on CPU (data is in memory), min(4, cores) on CUDA
    patience: int | None = 5  # epochs without a better validation AUPRC before stopping; None = never
    threshold_beta: float = 1.0  # 1 tunes the threshold for F1, 2 for F2 (favours recall)
    amp: bool | None = None  # None: on for CUDA (bf16 where supported, else fp16 + GradScaler)
    channels_last: bool | None = None  # None: on for CUDA
    preload: bool | None = None  # None: decode the training chips into memory when they fit in 2 GiB
    log_every: int = 10  # batches between progress-bar updates
    overwrite: bool = False
    n_boot: int = 1000  # bootstrap resamples for the F1 / AUPRC intervals

    def __post_init__(self) -> None:
        self.chips_dir = Path(self.chips_dir)
        self.out_dir = Path(self.out_dir)
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise UserError(f"epochs, batch size and learning rate must be positive (got {self.epochs}, {self.batch_size}, {self.lr})")


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


def cached_chips(chips_dir: Path, split: str, augment: bool, image_size: int, seed: int) -> Dataset:
    """A :class:`ChipDataset` whose chips are decoded once and kept in memory (uint8).

    Items (augmentation included) are exactly those of the plain dataset; only the GeoTIFF
    decoding per epoch is saved.
    """
    from schoolvision.data.dataset import ChipDataset

    class CachedChipDataset(ChipDataset):
        def preload(self) -> CachedChipDataset:
            self._cache = [ChipDataset.read_chip(self, i) for i in tqdm(range(len(self)), desc=f"load {split} chips", leave=False)]
            return self

        def read_chip(self, i: int) -> np.ndarray:
            return self._cache[i]

    return CachedChipDataset(chips_dir, split=split, augment=augment, image_size=image_size, seed=seed).preload()


def _worker_init(worker_id: int) -> None:
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
    torch.set_rng_state(state["torch"])
    pos, has_gauss = (int(v) for v in state["numpy_pos"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, float(state["numpy_gauss"][0])))
    random.setstate((int(state["python_version"][0]), tuple(int(v) for v in state["python"]), None))


# --- distributed -------------------------------------------------------------------------------


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_name: str) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(), resolve_device(device_name)
    info = _Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def _gather_logits(model, dataset, ddp: _Dist, batch_size: int, device, num_workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of the whole ``dataset``; under DDP each rank scores a shard, then all gather."""
    if ddp.world == 1:
        return predict_logits(model, dataset, batch_size, device, num_workers, progress=False)
    idx = list(range(ddp.rank, len(dataset), ddp.world))
    part = predict_logits(model, dataset, batch_size, device, num_workers, indices=idx, progress=False)
    parts: list[Any] = [None] * ddp.world
    dist.all_gather_object(parts, (idx, part[0], part[1]))
    order = np.concatenate([p[0] for p in parts]).astype(int)
    logits = np.concatenate([p[1] for p in parts])
    labels = np.concatenate([p[2] for p in parts])
    inv = np.argsort(order)
    return logits[inv], labels[inv]


# --- the run folder ----------------------------------------------------------------------------


def _prepare_run_dir(config: TrainConfig) -> None:
    out = config.out_dir
    if config.resume:
        return
    if out.exists() and any(out.iterdir()):
        if not config.overwrite:
            raise UserError("run folder is not empty; use --overwrite to replace it or --resume to continue it", out)
        for name in RUN_FILES:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def _config_record(config: TrainConfig, resolved: dict[str, Any]) -> dict[str, Any]:
    import sklearn
    import timm
    import torchvision

    record = {f.name: getattr(config, f.name) for f in fields(config)}
    record["chips_dir"] = str(config.chips_dir.resolve())
    record["out_dir"] = str(config.out_dir.resolve())
    record["resolved"] = resolved
    record["chips_index_sha256"] = _sha256(config.chips_dir / "chips.csv")
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
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("schoolvision")
    except PackageNotFoundError:
        return "unknown"


def _chips_meta(chips_dir: Path) -> dict[str, Any]:
    import json

    path = chips_dir / "dataset.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _open_splits(config: TrainConfig, image_size: int | None):
    """train / val / test datasets; ChipDataset raises a one-line error for an empty split or class."""
    from schoolvision.data.dataset import ChipDataset

    return {s: ChipDataset(config.chips_dir, split=s, augment=False, image_size=image_size) for s in ("train", "val", "test")}


def _check_resume(config: TrainConfig, last: dict[str, Any], path: Path) -> None:
    saved = last.get("config", {})
    for f in fields(config):
        if f.name in RESUME_FREE or f.name not in saved:
            continue
        now = getattr(config, f.name)
        now = str(Path(now).resolve()) if isinstance(now, Path) else now
        then = saved[f.name]
        if f.name in ("chips_dir", "out_dir"):
            then = str(Path(then).resolve())
        if now != then:
            raise UserError(f"cannot resume: {f.name} was {then!r} in this run, now {now!r} (start a new run instead)", path)


def _jsonable_config(config: TrainConfig) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}


# --- fit ---------------------------------------------------------------------------------------


def fit(config: TrainConfig) -> dict[str, Any]:
    """Train, select by validation AUPRC, calibrate, score the test split; return the test metrics.

    Writes ``best.pt``, ``last.pt`` (every epoch, atomically), ``config.json``, ``history.json``,
    ``metrics.json``, ``predictions.csv`` and ``tensorboard/`` into ``config.out_dir``.
    """
    ddp, device = _init_distributed(config.device)
    try:
        return _fit(config, ddp, device)
    except torch.cuda.OutOfMemoryError as exc:
        raise UserError(f"CUDA ran out of memory at batch size {config.batch_size}; try a smaller --batch-size (e.g. {max(1, config.batch_size // 2)}) or --image-size") from exc
    finally:
        if ddp.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _fit(config: TrainConfig, ddp: _Dist, device: torch.device) -> dict[str, Any]:
    from schoolvision.train import tblog

    out = config.out_dir
    last_path = out / "last.pt"
    last = None
    if config.resume:
        last = read_checkpoint(last_path)  # UserError if missing / corrupt; nothing written yet
        _check_resume(config, last, last_path)
        if last["meta"]["backbone"] != config.backbone:
            raise UserError(f"cannot resume: checkpoint is a {last['meta']['backbone']} model, --backbone is {config.backbone}", last_path)
    elif ddp.main:
        _prepare_run_dir(config)
    if ddp.world > 1:
        dist.barrier()

    chips_meta = _chips_meta(config.chips_dir)
    chip_size = int(chips_meta.get("chip_size", 0)) or None
    image_size = config.image_size or chip_size
    splits = _open_splits(config, image_size)
    if image_size is None:
        image_size = int(splits["train"][0]["image"].shape[-1])
    chip_size = chip_size or image_size
    cuda = device.type == "cuda"
    amp = cuda if config.amp is None else (config.amp and cuda)
    amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    channels_last = cuda if config.channels_last is None else config.channels_last
    num_workers = config.num_workers if config.num_workers is not None else (min(4, os.cpu_count() or 1) if cuda else 0)
    train_labels = label_array(splits["train"].frame)
    n_bytes = len(train_labels) * 3 * image_size * image_size
    preload = config.preload if config.preload is not None else n_bytes < 2 * 2**30
    resolved = {
        "device": str(device), "image_size": image_size, "chip_size": chip_size, "amp": amp,
        "amp_dtype": str(amp_dtype).replace("torch.", "") if amp else None, "channels_last": channels_last,
        "num_workers": num_workers, "preload": preload, "world_size": ddp.world,
        "imbalance": "cross-entropy weighted by inverse class frequency",
        "counts": {s: {n: int((label_array(d.frame) == k).sum()) for k, n in enumerate(CLASSES)} for s, d in splits.items()},
    }
    if ddp.main and not config.resume:
        write_json(out / "config.json", _config_record(config, resolved))

    seed_everything(config.seed)
    if cuda:
        torch.backends.cudnn.benchmark = True  # speed over bitwise reproducibility on GPU
    model = build_model(config.backbone, pretrained=config.pretrained, num_classes=len(CLASSES))
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if ddp.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)

    from schoolvision.data.dataset import ChipDataset

    if preload:
        train_ds: Dataset = cached_chips(config.chips_dir, "train", True, image_size, config.seed)
        val_ds: Dataset = cached_chips(config.chips_dir, "val", False, image_size, config.seed)
    else:
        train_ds = ChipDataset(config.chips_dir, split="train", augment=True, image_size=image_size, seed=config.seed)
        val_ds = splits["val"]
    sampler = DistributedSampler(train_ds, num_replicas=ddp.world, rank=ddp.rank, shuffle=True, seed=config.seed)
    loader = DataLoader(
        train_ds, batch_size=config.batch_size, sampler=sampler, num_workers=num_workers,
        pin_memory=cuda, persistent_workers=num_workers > 0, worker_init_fn=_worker_init,
        generator=torch.Generator().manual_seed(config.seed), drop_last=False,
    )
    steps_per_epoch = len(loader)
    backbone_ids = {id(p) for p in model.backbone_parameters()}
    head_params = [p for p in model.parameters() if id(p) not in backbone_ids]
    optimizer = torch.optim.AdamW(
        [{"params": model.backbone_parameters()}, {"params": head_params}], lr=config.lr, weight_decay=config.weight_decay
    )
    base = warmup_cosine(max(1, round(config.warmup_epochs * steps_per_epoch)), config.epochs * steps_per_epoch)
    freeze_steps = config.freeze_backbone_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [lambda s: 0.0 if s < freeze_steps else base(s), base]
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(train_labels).to(device))

    start_epoch, best_score, best_epoch, stale, history, stopped = 0, -1.0, -1, 0, [], False
    if last is not None:
        model.load_state_dict(last["model"])
        optimizer.load_state_dict(last["optimizer"])
        scheduler.load_state_dict(last["scheduler"])
        scaler.load_state_dict(last["scaler"])
        start_epoch = int(last["epoch"])
        best_score, best_epoch, stale = float(last["best_score"]), int(last["best_epoch"]), int(last["stale"])
        history = list(last["history"])
        stopped = bool(last["stopped"])
        set_rng_state(last["rng"])

    writer = tblog.open_writer(out / "tensorboard") if ddp.main else None
    try:
        _epochs(config, ddp, device, net, model, loader, sampler, train_ds, val_ds, optimizer, scheduler, scaler, loss_fn,
                amp, amp_dtype, channels_last, writer, start_epoch, best_score, best_epoch, stale, history, stopped,
                CheckpointMeta(config.backbone, image_size, chip_size, chips_meta.get("gsd")))
        return _finish(config, ddp, device, model, splits, history, writer, num_workers)
    finally:
        if writer is not None:
            writer.close()  # idempotent; _finish already closed and checked it on success


def _epochs(config, ddp, device, net, model, loader, sampler, train_ds, val_ds, optimizer, scheduler, scaler, loss_fn,
            amp, amp_dtype, channels_last, writer, start_epoch, best_score, best_epoch, stale, history, stopped, meta) -> None:
    """The epoch loop: train, validate, keep the best by val AUPRC, write best.pt / last.pt / history."""
    from schoolvision.train import tblog

    out = config.out_dir
    for epoch in range(start_epoch, config.epochs):
        if stopped:
            break
        frozen = epoch < config.freeze_backbone_epochs
        seed_everything(epoch_seed(config.seed, epoch))
        sampler.set_epoch(epoch)
        train_ds.set_epoch(epoch)
        t0 = time.perf_counter()
        train_stats = _train_epoch(net, model, loader, optimizer, scheduler, scaler, loss_fn, device, amp, amp_dtype, channels_last, frozen, ddp, config, epoch)
        train_seconds = time.perf_counter() - t0
        val_logits, val_labels = _gather_logits(net if ddp.world == 1 else model, val_ds, ddp, config.batch_size, device, 0)
        val_probs = school_probability(val_logits, 1.0)
        val_thr = tune_threshold(val_labels, val_probs, config.threshold_beta)
        val_m = classification_metrics(val_labels, val_probs, val_thr)
        val_loss = float(nn.functional.cross_entropy(torch.from_numpy(val_logits), torch.from_numpy(val_labels), weight=loss_fn.weight.cpu()))
        row = {
            "epoch": epoch + 1, "lr": optimizer.param_groups[1]["lr"], "train_seconds": train_seconds,
            "train_chips_per_second": train_stats.pop("n") / train_seconds, "train_data_seconds": train_stats.pop("data_seconds"),
            **{f"train_{k}": v for k, v in train_stats.items()},
            "val_loss": val_loss, "val_accuracy": val_m["accuracy"], "val_f1": val_m["f1"], "val_auprc": val_m["auprc"],
        }
        history.append(row)
        improved = val_m["auprc"] > best_score
        if improved:
            best_score, best_epoch, stale = val_m["auprc"], epoch + 1, 0
        else:
            stale += 1
        stopped = config.patience is not None and stale >= config.patience
        if ddp.main:
            if improved:
                meta.threshold, meta.epoch = val_thr, epoch + 1
                meta.metrics = {f"val_{k}": float(val_m[k]) for k in ("auprc", "f1", "accuracy")}
                save_checkpoint(out / "best.pt", model, meta)
            save_checkpoint(
                out / "last.pt", model, meta, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict(), epoch=epoch + 1, best_score=best_score, best_epoch=best_epoch, stale=stale,
                stopped=stopped, history=history, rng=rng_state(), config=_jsonable_config(config),
            )
            write_json(out / "history.json", history)
            tblog.log_epoch(writer, row)
        if ddp.world > 1:
            dist.barrier()


def _train_epoch(net, model, loader, optimizer, scheduler, scaler, loss_fn, device, amp, amp_dtype, channels_last, frozen, ddp, config, epoch) -> dict[str, float]:
    """One pass over the training data; returns mean loss, accuracy, F1 and AUPRC of the epoch."""
    net.train()
    if frozen:
        model.trunk.eval()  # keep pretrained BatchNorm statistics while the backbone is frozen
    loss_sum = torch.zeros((), dtype=torch.float64)
    logits_all, labels_all = [], []
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not ddp.main)
    data_seconds, tick = 0.0, time.perf_counter()
    for step, batch in enumerate(bar):
        data_seconds += time.perf_counter() - tick  # waiting for the loader (and the progress bar)
        x = batch["image"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            logits = net(x)
            loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        loss_sum += loss.detach().double().cpu() * len(y)
        logits_all.append(logits.detach().float().cpu())
        labels_all.append(y.cpu())
        if step % config.log_every == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[1]['lr']:.2e}")
        tick = time.perf_counter()
    logits_t, labels_t = torch.cat(logits_all), torch.cat(labels_all)
    if ddp.world > 1:
        parts: list[Any] = [None] * ddp.world
        dist.all_gather_object(parts, (float(loss_sum), logits_t, labels_t))
        loss_sum = torch.tensor(sum(p[0] for p in parts), dtype=torch.float64)
        logits_t = torch.cat([p[1] for p in parts])
        labels_t = torch.cat([p[2] for p in parts])
    probs = school_probability(logits_t)
    labels = labels_t.numpy()
    m = classification_metrics(labels, probs, 0.5)
    return {"loss": float(loss_sum) / len(labels), "accuracy": m["accuracy"], "f1": m["f1"], "auprc": auprc(labels, probs),
            "n": len(labels), "data_seconds": data_seconds}


def _finish(config, ddp, device, model, splits, history, writer, num_workers) -> dict[str, Any]:
    """Calibrate and tune the best model on validation, score test, write the run's outputs."""
    from schoolvision.train import tblog

    out = config.out_dir
    best = read_checkpoint(out / "best.pt")
    model.load_state_dict(best["model"])
    meta = CheckpointMeta(**best["meta"])
    best_epoch = meta.epoch
    reports, frames, probs_by_split = {}, [], {}
    for split in ("val", "test"):
        logits, labels = _gather_logits(model, splits[split], ddp, config.batch_size, device, num_workers)
        if split == "val":
            meta.temperature = fit_temperature(logits, labels)
            meta.threshold = tune_threshold(labels, school_probability(logits, meta.temperature), config.threshold_beta)
        probs = school_probability(logits, meta.temperature)
        probs_by_split[split] = (labels, probs)
        reports[split] = split_report(labels, probs, meta.threshold, meta.temperature, config.n_boot, config.seed)
        frames.append(prediction_frame(splits[split].frame, split, probs, meta.threshold))
    metrics = dict(reports["test"])
    metrics.update(val=reports["val"], best_epoch=best_epoch, epochs_run=len(history), backbone=config.backbone, pretrained=config.pretrained)
    if not ddp.main:
        return metrics
    meta.metrics = {f"{s}_{k}": float(reports[s][k]) for s in ("val", "test") for k in ("auprc", "f1", "accuracy", "roc_auc", "ece")}
    save_checkpoint(out / "best.pt", model, meta)
    write_predictions(out / "predictions.csv", frames)
    write_json(out / "metrics.json", metrics)
    for split, (labels, probs) in probs_by_split.items():
        tblog.log_split(writer, split, labels, probs, meta.threshold, len(history))
    tblog.log_chip_grid(writer, splits["test"], probs_by_split["test"][1], probs_by_split["test"][0], meta.threshold, len(history))
    hparams = {k: v for k, v in _jsonable_config(config).items() if isinstance(v, (int, float, str, bool))}
    tblog.log_hparams(writer, hparams, {f"hparam/test_{k}": float(metrics[k]) for k in ("auprc", "f1", "f2", "roc_auc", "accuracy", "ece")})
    tblog.close(writer, out / "tensorboard")
    return metrics
