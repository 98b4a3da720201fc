"""What the model saw: a summary of the training chips' embeddings, to say where a scan is out of its depth.

At the end of training (or later, with ``schoolvision novelty``), the pooled embeddings of the
training chips (the classifier's features before its head) are summarised in the run folder, and
the same novelty score is computed on the held-out chips (validation and test splits): home imagery
the model never trained on. A window's novelty is then expressed as a percentile of that home distribution: 50 is a
typical home window, above :data:`FLAG_PERCENTILE` (99) it looks less like the training data than
99% of held-out home chips. A scene where far more than 1% of the windows are flagged is imagery
the model does not know; its probabilities there are not to be trusted until reviewed.

Two summaries, one small class each (:data:`SCORERS`):

* ``knn``: distance (1 - cosine similarity) to the k-th nearest training embedding, after an L2
  normalisation (Sun et al. 2022, "Out-of-distribution detection with deep nearest neighbors").
  The bank is the training embeddings in float16: 1,300 chips of 1,280 features are 3 MB.
* ``gaussian``: the smallest Mahalanobis distance to a class mean under one shared covariance,
  shrunk towards a scaled identity by Ledoit-Wolf (Lee et al. 2018), so it stays invertible with
  fewer chips than feature dimensions.

Which one separates home from other regions better is measured by ``benchmarks/novelty.py``: with the
book's run, the scan's own scene shares (kNN, k=1) gave AUROC 1.00; on windows one chip apart kNN gave
0.78 (k=1) and 0.92 (k=5), the Gaussians 0.64. kNN is the default, k=1 so that a training chip is its
own neighbour and scores at the bottom.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from schoolvision.data.dataset import ChipDataset
from schoolvision.errors import UserError
from schoolvision.io.folders import ChipsFolder, RunFolder, sha256
from schoolvision.model.checkpoint import load_classifier
from schoolvision.model.device import resolve_device
from schoolvision.model.runtime import Runtime, make_runtime

FLAG_PERCENTILE = 99.0
"""A window whose novelty is above this percentile of the held-out home chips is flagged."""

WARN_SHARE = 0.10
"""A scene with more than this share of flagged windows gets a warning line.

At home about 1% of the windows are flagged by construction (the 99th percentile); with the book's run,
new rural demo towns flagged 0.19%, urban towns 17-43%, arid towns 0.4-3.2% (``benchmarks/novelty.py``).
A tenth is far above home, so a warning means a real shift of the imagery, not chance.
"""


@dataclass(frozen=True)
class NoveltyConfig:
    """How the training embeddings are summarised.

    ``method``: ``knn`` or ``gaussian`` (:data:`SCORERS`). ``k``: the neighbour whose distance is the
    score (``knn``). ``max_train``: training chips kept in the ``knn`` bank (a seeded sample beyond
    it; the file holds ``max_train x features`` float16 at most). ``reference_splits``: the held-out
    home chips whose scores are the reference (those of the chips folder that exist). Both held-out
    splits, not validation alone: in the demo each split is one town, and one town is too narrow a
    picture of home (with the validation town alone, up to 16% of a new home town's windows were
    flagged; with both, at most 1%: ``benchmarks/novelty.py``). Neither split trains the model.
    """

    method: str = "knn"
    k: int = 1
    max_train: int = 8192
    reference_splits: tuple[str, ...] = ("val", "test")
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.method not in SCORERS:
            raise UserError(f"unknown novelty method {self.method!r}; use one of {', '.join(SCORERS)}")
        if self.k < 1 or self.max_train < 1:
            raise UserError("novelty k and max_train must be at least 1")


class Scorer:
    """A novelty score of embeddings (higher: less like the training chips), fitted once, stored as arrays."""

    name: ClassVar[str] = ""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    @classmethod
    def fit(cls, embeddings: np.ndarray, labels: np.ndarray, config: NoveltyConfig) -> Scorer:
        """Summarise the training ``embeddings`` (N, D) with their class ids (N,)."""
        raise NotImplementedError

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """Novelty (N,) float32 of embeddings (N, D)."""
        raise NotImplementedError


SCORERS: dict[str, type[Scorer]] = {}


def register(cls: type[Scorer]) -> type[Scorer]:
    """Class decorator: make a :class:`Scorer` available under its ``name``."""
    SCORERS[cls.name] = cls
    return cls


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@register
class KnnScorer(Scorer):
    """1 - cosine similarity to the k-th nearest training embedding.

    The whole embedding is kept: a projection on the training data's principal axes would drop
    the directions in which unfamiliar imagery differs most, those the training chips never vary in.
    """

    name = "knn"

    @classmethod
    def fit(cls, embeddings, labels, config):
        """A bank of the L2-normalised training embeddings (float16; a seeded sample beyond ``max_train``)."""
        x = _unit(embeddings)
        if len(x) > config.max_train:
            x = x[np.sort(np.random.default_rng(config.seed).choice(len(x), config.max_train, replace=False))]
        return cls({"bank": x.astype(np.float16), "k": np.array(min(config.k, len(x)))})

    def __init__(self, arrays):
        super().__init__(arrays)
        self._bank = np.asarray(arrays["bank"], np.float32)  # float32 once: matmul in float16 is slow on CPUs
        self._k = int(arrays["k"])

    def score(self, embeddings):
        """1 - cosine similarity to the k-th nearest bank embedding."""
        sim = _unit(embeddings) @ self._bank.T
        if self._k == 1:  # a max is cheaper than a partition, and the default
            return (1.0 - sim.max(axis=1)).astype(np.float32)
        kth = np.partition(-sim, self._k - 1, axis=1)[:, self._k - 1]
        return (1.0 + kth).astype(np.float32)  # 1 - (k-th largest similarity)


@register
class GaussianScorer(Scorer):
    """Smallest squared Mahalanobis distance to a class mean, one Ledoit-Wolf-shrunk covariance for all classes."""

    name = "gaussian"

    @classmethod
    def fit(cls, embeddings, labels, config):
        """Class means and the shrunk precision matrix of the embeddings centred on their class mean."""
        from sklearn.covariance import LedoitWolf

        x = np.asarray(embeddings, np.float64)
        classes = np.unique(labels)
        means = np.stack([x[labels == c].mean(0) for c in classes])
        centred = x - means[np.searchsorted(classes, labels)]
        precision = LedoitWolf(assume_centered=True).fit(centred).get_precision()
        return cls({"means": means.astype(np.float32), "precision": precision.astype(np.float32)})

    def score(self, embeddings):
        """Squared Mahalanobis distance to the nearest class mean."""
        x = np.asarray(embeddings, np.float32)
        p, means = self.arrays["precision"], self.arrays["means"]
        out = np.full(len(x), np.inf, np.float32)
        for mu in means:
            d = x - mu
            out = np.minimum(out, np.einsum("nd,nd->n", d @ p, d))
        return out


@dataclass
class NoveltySummary:
    """A fitted scorer and the home reference: the sorted novelty scores of the held-out home chips.

    ``record`` says how it was built (method, chip counts, the checkpoint's SHA-256); it is stored
    in the run's ``novelty.npz`` (:meth:`schoolvision.io.folders.RunFolder.write_novelty`).
    """

    scorer: Scorer
    reference: np.ndarray  # (M,) float32, sorted
    record: dict[str, Any]

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """Raw novelty scores (N,) of embeddings (N, D)."""
        return self.scorer.score(embeddings)

    def percentile(self, embeddings: np.ndarray) -> np.ndarray:
        """Novelty (N,) float32 as the percentile (0-100) of the held-out home chips it exceeds."""
        raw = self.score(embeddings)
        return (np.searchsorted(self.reference, raw, side="left") * (100.0 / len(self.reference))).astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything to store, as named arrays (the scorer's prefixed ``scorer_``)."""
        return {"reference": self.reference, **{f"scorer_{k}": v for k, v in self.scorer.arrays.items()}}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], record: dict[str, Any]) -> NoveltySummary:
        """The summary :meth:`arrays` and ``record`` describe."""
        method = record.get("method")
        if method not in SCORERS:
            raise ValueError(f"unknown novelty method {method!r}")
        scorer = SCORERS[method]({k.removeprefix("scorer_"): v for k, v in arrays.items() if k.startswith("scorer_")})
        return cls(scorer, np.asarray(arrays["reference"], np.float32), record)


def flagged_share(percentiles: np.ndarray) -> float:
    """Share of windows whose novelty percentile is above :data:`FLAG_PERCENTILE`."""
    p = np.asarray(percentiles)
    return float((p > FLAG_PERCENTILE).mean()) if p.size else 0.0


def scene_warning(scene: str, share: float) -> str | None:
    """The one warning line of a scene whose flagged share is above :data:`WARN_SHARE`, else None."""
    if share <= WARN_SHARE:
        return None
    return (f"scene {scene}: {share:.0%} of its windows look unlike the training data; "
            "scores there are unreliable until reviewed")


@torch.no_grad()
def chip_embeddings(runtime: Runtime, dataset: ChipDataset, batch_size: int = 64,
                    progress: bool = True) -> np.ndarray:
    """Embeddings (N, D) float32 of every chip of ``dataset`` (unaugmented), in order."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    out = [runtime.features(batch["image"])[0]
           for batch in tqdm(loader, desc="novelty", unit="batch", disable=not progress)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def fit_summary(train: np.ndarray, labels: np.ndarray, reference: np.ndarray,
                config: NoveltyConfig = NoveltyConfig(), record: dict[str, Any] | None = None) -> NoveltySummary:
    """Fit the summary on training embeddings (with class ids) and score the home reference embeddings.

    Raises:
        UserError: no training or no reference embeddings.
    """
    if len(train) == 0 or len(reference) == 0:
        raise UserError("the novelty summary needs chips in the train split and in a held-out split")
    scorer = SCORERS[config.method].fit(train, np.asarray(labels), config)
    ref = np.sort(scorer.score(reference)).astype(np.float32)
    info = {"method": config.method, "config": asdict(config), "train_chips": int(len(train)),
            "reference_chips": int(len(reference)), "flag_percentile": FLAG_PERCENTILE,
            "flag_score": float(np.percentile(ref, FLAG_PERCENTILE)), **(record or {})}
    return NoveltySummary(scorer, ref, info)


def summarise_chips(runtime: Runtime, chips_dir, image_size: int, config: NoveltyConfig = NoveltyConfig(),
                    record: dict[str, Any] | None = None, progress: bool = True) -> NoveltySummary:
    """The novelty summary of a chips folder: fitted on its ``train`` split, referenced on its held-out splits.

    Args:
        runtime: runs the classifier's forward passes (its ``features`` give the embeddings).
        chips_dir: the chips folder the run was trained on.
        image_size: the model's input size (chips are resized to it, as in training and scan).
        config: which summary.
        record: extra facts stored with it (e.g. the checkpoint's SHA-256).
        progress: a bar over the batches.

    Raises:
        UserError: the chips folder lacks a train split or every reference split.
    """
    train = ChipDataset(chips_dir, split="train", augment=False, image_size=image_size, require_classes=False)
    splits = set(ChipsFolder(chips_dir).read_index()["split"]) if ChipsFolder(chips_dir).has_index() else set()
    held_out = [s for s in config.reference_splits if s in splits]
    if not held_out:
        raise UserError(f"the novelty reference needs chips in split {' or '.join(config.reference_splits)}",
                        chips_dir)
    emb_train = chip_embeddings(runtime, train, config.batch_size, progress)
    emb_ref = np.concatenate([chip_embeddings(runtime, ChipDataset(chips_dir, split=s, image_size=image_size,
                                                                   require_classes=False), config.batch_size, progress)
                              for s in held_out])
    return fit_summary(emb_train, train.class_ids, emb_ref, config, {"reference_splits": held_out, **(record or {})})


NO_SUMMARY = ("run {run} has no novelty summary (novelty.npz): no trust map is written; build one with "
              "schoolvision novelty --run {run} --chips DIR")


def read_summary(run) -> NoveltySummary | None:
    """The run's novelty summary, or None when it has none (a run trained before summaries existed).

    Raises:
        UserError: ``novelty.npz`` is unreadable, or was built for another checkpoint than the run's.
    """
    folder = RunFolder(RunFolder.checkpoint(run).parent)
    stored = folder.read_novelty()
    if stored is None:
        return None
    arrays, record = stored
    recorded = record.get("checkpoint_sha256")
    if recorded and recorded != sha256(RunFolder.checkpoint(run)):
        raise UserError(f"{folder.NOVELTY} was built for another checkpoint; rebuild it: schoolvision novelty "
                        f"--run {folder.root} --chips DIR --overwrite", folder.novelty_path)
    try:
        return NoveltySummary.from_arrays(arrays, record)
    except (KeyError, ValueError) as exc:
        raise UserError(f"{folder.NOVELTY} is not a novelty summary ({exc}); rebuild it: schoolvision novelty "
                        f"--run {folder.root} --chips DIR --overwrite", folder.novelty_path) from None


def optional_summary(run) -> NoveltySummary | None:
    """The run's summary where it only adds a column (explain, cluster): None, with a warning, when unusable."""
    try:
        return read_summary(run)
    except UserError as exc:
        warnings.warn(f"no novelty: {exc}", stacklevel=3)
        return None


def write_summary(run, summary: NoveltySummary) -> Path:
    """Write ``summary`` into the run folder of ``run`` (``novelty.npz``, atomically)."""
    return RunFolder(RunFolder.checkpoint(run).parent).write_novelty(summary.arrays(), summary.record)


def summarise_run(model: torch.nn.Module, meta, run, chips_dir, device="cpu",
                  config: NoveltyConfig = NoveltyConfig(), progress: bool = False) -> NoveltySummary:
    """Summarise the chips ``model`` (the run's checkpoint, already written) was trained on into the run folder."""
    checkpoint = RunFolder.checkpoint(run)
    runtime = make_runtime("torch", model, meta, device)
    summary = summarise_chips(runtime, chips_dir, meta.image_size, config,
                              record={"checkpoint_sha256": sha256(checkpoint), "backbone": meta.backbone},
                              progress=progress)
    write_summary(checkpoint, summary)
    return summary


def build_run_summary(run, chips_dir=None, config: NoveltyConfig = NoveltyConfig(), *, device: str = "auto",
                      runtime: str = "auto", overwrite: bool = False, progress: bool = True) -> Path:
    """``schoolvision novelty``: the novelty summary of an existing run, from its chips, without training.

    Args:
        run: the run folder (or its checkpoint file).
        chips_dir: the chips it was trained on (default: the ``chips_dir`` its ``config.json`` records).
        config: which summary.
        device: where the forward passes run.
        runtime: what runs them (:mod:`schoolvision.model.runtime`).
        overwrite: replace the run's summary.
        progress: a bar over the batches.

    Returns:
        The path of ``novelty.npz``.

    Raises:
        UserError: no checkpoint, no chips folder given or recorded, a summary already there
            without ``overwrite``, or chips without a train split or any held-out split.
    """
    checkpoint = RunFolder.checkpoint(run)
    folder = RunFolder(checkpoint.parent)
    if not checkpoint.is_file():
        raise UserError("checkpoint not found (train a model first: schoolvision train --chips DIR --out RUN)",
                        checkpoint)
    if folder.novelty_path.exists() and not overwrite:
        raise UserError("the run has a novelty summary already; pass --overwrite to rebuild it", folder.novelty_path)
    chips_dir = chips_dir or folder.read_config().get("chips_dir")
    if not chips_dir:
        raise UserError("the run records no chips folder; pass --chips DIR (the chips it was trained on)", run)
    device = resolve_device(device)
    model, meta = load_classifier(checkpoint, device)
    engine = make_runtime(runtime, model, meta, device, checkpoint=checkpoint)
    summary = summarise_chips(engine, Path(chips_dir), meta.image_size, config,
                              record={"checkpoint_sha256": sha256(checkpoint), "backbone": meta.backbone},
                              progress=progress)
    return write_summary(checkpoint, summary)
