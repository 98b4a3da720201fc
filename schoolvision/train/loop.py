"""The epoch loop: train an epoch, validate, keep the best model, stop early; DDP-aware scoring."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from schoolvision.model.backbones import stem_modules
from schoolvision.model.checkpoint import save_checkpoint
from schoolvision.model.distributed import Distributed
from schoolvision.model.inference import predict_logits, school_probability
from schoolvision.train import tblog
from schoolvision.train.metrics import auprc, classification_metrics, tune_threshold
from schoolvision.train.state import TrainerState, epoch_seed, seed_everything

# --- distributed -------------------------------------------------------------------------------


def gather_logits(model, dataset, ddp: Distributed, batch_size: int, device,
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


# --- epochs ------------------------------------------------------------------------------------


def run_epochs(state: TrainerState) -> None:
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
    logits, labels = gather_logits(net, state.val_ds, state.ddp, state.config.batch_size, state.device, 0)
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

