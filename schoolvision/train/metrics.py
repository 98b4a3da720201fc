"""Classification metrics for school / not_school, computed on P(school) with school as positive.

Every metric takes the probability of the *school* class (never the max-class probability, which
would score the wrong positive), the threshold is tuned on validation for F-beta, probabilities are
calibrated by temperature scaling, and AUPRC, not accuracy (high for a model that calls nothing a
school on an imbalanced set), is the model-selection score.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score, confusion_matrix, precision_recall_curve, roc_auc_score

from schoolvision import CLASSES

METRIC_KEYS = (
    "accuracy", "precision", "recall", "f1", "f2", "roc_auc", "auprc",
    "confusion_matrix", "threshold", "ece", "n_chips",
)


def fbeta(precision: float, recall: float, beta: float) -> float:
    """F-beta from precision and recall (0 when both are 0); beta > 1 favours recall."""
    b2 = beta * beta
    denom = b2 * precision + recall
    return float((1 + b2) * precision * recall / denom) if denom > 0 else 0.0


def auprc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Area under the precision-recall curve (average precision) with school as positive."""
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return float("nan")
    return float(average_precision_score(labels, probs))


def roc_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Area under the ROC curve of P(school); NaN when only one class is present."""
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, probs))


def tune_threshold(labels: np.ndarray, probs: np.ndarray, beta: float = 1.0) -> float:
    """Threshold on P(school) that maximises F-beta on (validation) ``labels``.

    Among ties the highest optimum wins (fewest false alarms at the same score); the threshold is
    then placed midway between it and the next lower validation score, so it makes exactly the same
    validation decisions without sitting on a validation chip's probability. With a single class
    the neutral 0.5 is returned.
    """
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.sum() == 0 or labels.sum() == len(labels):
        return 0.5
    precision, recall, thresholds = precision_recall_curve(labels, probs)
    b2 = beta * beta
    p, r = precision[:-1], recall[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(b2 * p + r > 0, (1 + b2) * p * r / (b2 * p + r), 0.0)
    best = float(thresholds[np.flatnonzero(score == score.max())[-1]])
    below = probs[probs < best]
    # Midway to the next lower score: the same decisions on validation, a margin for unseen data.
    return (best + float(below.max())) / 2 if below.size else best


def reliability(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> dict[str, np.ndarray]:
    """Per-bin mean P(school), observed school frequency and count (equal-width bins on [0, 1])."""
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    idx = np.clip((probs * bins).astype(int), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        conf = np.bincount(idx, weights=probs, minlength=bins) / count
        freq = np.bincount(idx, weights=labels, minlength=bins) / count
    edges = np.linspace(0.0, 1.0, bins + 1)
    return {"edges": edges, "confidence": conf, "frequency": freq, "count": count}


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """ECE of P(school): count-weighted mean |frequency of schools - mean P(school)| over bins."""
    rel = reliability(labels, probs, bins)
    used = rel["count"] > 0
    if not used.any():
        return float("nan")
    gap = np.abs(rel["frequency"][used] - rel["confidence"][used])
    return float(np.sum(gap * rel["count"][used]) / rel["count"].sum())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> float:
    """Temperature T minimising the NLL of softmax(logits / T) on (validation) data.

    Optimises log T with L-BFGS in float64 (deterministic); T is clamped to [0.05, 20] so a
    degenerate validation split cannot produce an absurd scale.
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return float(np.clip(t, 0.05, 20.0)) if np.isfinite(t) else 1.0


def classification_metrics(labels: np.ndarray, probs: np.ndarray,
                           threshold: float | np.ndarray = 0.5) -> dict[str, Any]:
    """Every metric of ``metrics.json`` for P(school) ``probs`` at ``threshold`` (school = 1).

    ``threshold`` may be one per chip (out-of-fold predictions, each at its model's threshold); the
    report's ``threshold`` is then None.
    """
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    pred = (probs >= threshold).astype(int)
    cm = confusion_matrix(labels, pred, labels=[0, 1])
    tn, fp, fn, tp = (int(v) for v in cm.ravel())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": float((tp + tn) / max(len(labels), 1)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": fbeta(precision, recall, 1.0),
        "f2": fbeta(precision, recall, 2.0),
        "roc_auc": roc_auc(labels, probs),
        "auprc": auprc(labels, probs),
        "confusion_matrix": cm.tolist(),  # rows = true (not_school, school), columns = predicted
        "threshold": float(threshold) if np.ndim(threshold) == 0 else None,
        "ece": expected_calibration_error(labels, probs),
        "n_chips": {CLASSES[0]: int((labels == 0).sum()), CLASSES[1]: int((labels == 1).sum())},
    }


def bootstrap_ci(
    labels: np.ndarray,
    probs: np.ndarray,
    threshold: float | np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """Percentile bootstrap interval for F1 and AUPRC, resampling groups of chips with replacement.

    Chips of one school overlap and share its buildings: resampling them one by one treats them as
    independent evidence and gives intervals that are too narrow. With ``groups`` (one id per chip,
    e.g. from :func:`schoolvision.train.evaluation.bootstrap_groups`) a draw takes whole groups (a
    cluster bootstrap); without, every chip is its own group. Resamples without a positive or without
    a negative are skipped for AUPRC (undefined there).

    Args:
        labels: 0/1 per chip (1 = school).
        probs: P(school) per chip.
        threshold: the F1 decision threshold, or one per chip.
        n_boot: number of resamples.
        seed: seed of the resampling.
        level: coverage of the interval.
        groups: group id per chip (chips with the same id are drawn together); None = per chip.

    Returns:
        ``{"f1": [lo, hi], "auprc": [lo, hi], "f2", "precision", "recall", "roc_auc" (the same), "level",
        "n_boot", "groups"}`` (``groups``: the number of units resampled).
    """
    draws, n_groups = bootstrap_draws(labels, probs, threshold, n_boot, seed, groups)
    return {**percentile_intervals(draws, level), "level": level, "n_boot": n_boot, "groups": n_groups}


def percentile_intervals(draws: dict[str, np.ndarray], level: float = 0.95) -> dict[str, list[float]]:
    """The central ``level`` interval of each metric's resampled values (NaN where there are none)."""
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {k: [float(v) for v in np.percentile(d, [lo, hi])] if len(d) else [float("nan")] * 2
            for k, d in draws.items()}


def bootstrap_draws(labels: np.ndarray, probs: np.ndarray, threshold: float | np.ndarray, n_boot: int = 1000,
                    seed: int = 0, groups: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], int]:
    """Each metric's values over ``n_boot`` group resamples (:func:`bootstrap_ci`), and the number of groups.

    The values themselves, so that resamples of several runs can be pooled into one interval (the test
    sample's variation and the training runs' at once: ``benchmarks/training_spread.py``).
    """
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    thresholds = np.broadcast_to(np.asarray(threshold, dtype=np.float64), probs.shape)
    if groups is None:
        members = [np.array([i]) for i in range(len(labels))]
    else:
        _, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        members = np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in ("f1", "auprc", "f2", "precision", "recall", "roc_auc")}
    for _ in range(n_boot):
        picks = rng.integers(0, len(members), len(members))
        i = np.concatenate([members[k] for k in picks]) if len(members) else np.zeros(0, int)
        y, p = labels[i], probs[i]
        pred = p >= thresholds[i]
        tp = int(np.sum(pred & (y == 1)))
        fp = int(np.sum(pred & (y == 0)))
        fn = int(np.sum(~pred & (y == 1)))
        draws["f1"].append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
        precision, recall = tp / (tp + fp) if tp + fp else 0.0, tp / (tp + fn) if tp + fn else 0.0
        draws["precision"].append(precision)
        draws["recall"].append(recall)
        draws["f2"].append(fbeta(precision, recall, 2.0))
        if 0 < y.sum() < len(y):
            draws["auprc"].append(average_precision_score(y, p))
            draws["roc_auc"].append(roc_auc_score(y, p))
    return {k: np.asarray(v, float) for k, v in draws.items()}, len(members)
