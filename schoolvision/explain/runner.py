"""``schoolvision explain``'s work: run methods over a chips split, write heatmaps and score them.

For every chip and method the runner writes a heatmap on the chip's own grid (a float32 GeoTIFF with
the chip's CRS and transform, or a plain PNG for chips without one) and a PNG overlay, scores the map
against the school footprint (pointing game, energy share, ROAD; see
:mod:`schoolvision.explain.faithfulness`) beside two baseline maps, and writes ``explanations.csv``
and ``faithfulness.json``. Forward passes (P(school), ROAD's perturbed chips) run on the configured
:mod:`runtime <schoolvision.model.runtime>` (ONNX Runtime on CPU by default); the gradient methods
run in torch, on channels_last weights and inputs (faster on CPU and GPU, same maps within float
noise). The gallery figures are drawn by the caller from :attr:`ExplainSummary.galleries`.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from schoolvision import CLASSES, SCHOOL
from schoolvision.data.dataset import ChipDataset
from schoolvision.data.places import distinct_places
from schoolvision.errors import UserError, check_ranges
from schoolvision.explain.faithfulness import baseline_maps, energy_share, pointing_game, road_drop, summarise
from schoolvision.explain.layers import resolve_layer
from schoolvision.explain.maps import overlay_rgb, resize_maps
from schoolvision.explain.methods import check_method, class_index, explainer
from schoolvision.explain.shap_values import background_from_split
from schoolvision.io.atomic import atomic_path, write_text
from schoolvision.io.folders import ChipsFolder, ExplainFolder, prepare_output
from schoolvision.io.rasters import write_geotiff
from schoolvision.io.schools import footprint_mask
from schoolvision.model.checkpoint import CheckpointMeta, load_classifier
from schoolvision.model.device import kept_heap, resolve_device
from schoolvision.model.runtime import Runtime, make_runtime
from schoolvision.train.novelty import optional_summary

NODATA = -9999.0
"""Nodata value of the heatmap GeoTIFFs."""

OUTCOMES = {(1, 1): "TP", (0, 1): "FP", (1, 0): "FN", (0, 0): "TN"}
"""(label, prediction) -> outcome, for the school class."""

GALLERY_OUTCOMES = ("TP", "FP", "FN")


@dataclass
class ExplainConfig:
    """Parameters of ``schoolvision explain`` (one folder per method under ``out_dir``)."""

    run: Path
    chips_dir: Path
    out_dir: Path
    methods: list[str] = field(default_factory=lambda: ["gradcam"])
    split: str = "test"
    limit: int | None = None
    layer: str | None = None
    target_class: str = "school"
    batch_size: int = 16
    device: str = "auto"
    seed: int = 0
    background_size: int = 16
    shap_nsamples: int = 64
    gallery_size: int = 6
    write_maps: bool = True
    chip_ids: list[str] | None = None  # explain only these chips of the split
    overwrite: bool = False
    runtime: str = "auto"  # forward passes (P(school), ROAD); gradients always run in torch

    def __post_init__(self) -> None:
        check_ranges(self, "--limit >= 1", "--batch-size >= 1", "--shap-nsamples >= 1", "background_size >= 1",
                     "gallery_size >= 0")


class GalleryItem(NamedTuple):
    """One chip of a gallery: its pixels (as stored), its map on the same grid, footprint and P(school)."""

    chip_id: str
    chip: np.ndarray
    heat: np.ndarray
    mask: np.ndarray | None
    prob: float


@dataclass
class ExplainSummary:
    """What :func:`explain_chips` did: the faithfulness table and where the files are."""

    out_dir: Path
    n_chips: int
    methods: list[str]
    table: dict[str, dict[str, float]]
    table_all_school_chips: dict[str, dict[str, float]]
    outcomes: dict[str, int]
    layer: str = ""
    records: list[dict] = field(repr=False, default_factory=list)
    split: str | None = None
    galleries: dict[str, dict[str, list[GalleryItem]]] = field(repr=False, default_factory=dict)
    """Method -> outcome (TP, FP, FN) -> the first ``gallery_size`` chips; empty without ``write_maps``."""


@dataclass
class _Run:
    """What every batch of one :func:`explain_chips` call shares, and what it gathers."""

    config: ExplainConfig
    model: torch.nn.Module
    meta: CheckpointMeta
    runtime: Runtime  # forward passes only
    device: torch.device
    target: int
    layer_name: str
    ds: ChipDataset
    schools: Any  # GeoDataFrame of footprints, or None
    background: torch.Tensor | None
    rng: np.random.Generator
    records: list[dict] = field(default_factory=list)
    galleries: dict[str, dict[str, list[GalleryItem]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    schools_in: dict[str, Any] = field(default_factory=dict)  # footprints reprojected once per CRS
    warned_crs: bool = False
    novelty: Any = None  # the run's NoveltySummary (train.novelty): each chip's novelty in explanations.csv


def explain_chips(config: ExplainConfig) -> ExplainSummary:
    """Explain every chip of a split with each method; write heatmaps, overlays and the faithfulness table.

    Writes ``<method>/heatmaps/<chip_id>.tif`` (``.png`` for chips without a CRS),
    ``<method>/overlays/<chip_id>.png``, ``explanations.csv`` (one row per chip and method or
    baseline) and ``faithfulness.json`` into ``config.out_dir``.

    Args:
        config: the run, chips, split, methods and output folder.

    Returns:
        The faithfulness tables, outcome counts, per-chip records and the gallery chips.

    Raises:
        UserError: unknown method, layer, target class or runtime (``onnx`` without the extra); a
            non-positive ``limit``; an output folder that is not empty without ``overwrite``; none of
            ``chip_ids`` in the split; a missing or unreadable run or chips folder.
    """
    run, indices = _start(config)
    loader = DataLoader(Subset(run.ds, indices), batch_size=config.batch_size, shuffle=False,
                        pin_memory=run.device.type == "cuda")
    with kept_heap():  # gradients of large batches: see kept_heap
        for batch in tqdm(loader, desc="explain", unit="batch", leave=False):
            _explain_batch(run, batch)
    return _finish(run, len(indices))


def _start(config: ExplainConfig) -> tuple[_Run, list[int]]:
    """Check the config, load model, chips, footprints and background; the chips to explain."""
    for m in config.methods:
        check_method(m)
    target = class_index(config.target_class)
    chips_dir = Path(config.chips_dir)
    device = resolve_device(config.device)
    model, meta = load_classifier(config.run, device)
    model = model.to(memory_format=torch.channels_last)  # the gradient methods' layout (see Explainer)
    runtime = make_runtime(config.runtime, model, meta, device, checkpoint=config.run)
    layer_name, _ = resolve_layer(model, config.layer, meta.image_size)
    ds = ChipDataset(chips_dir, split=config.split, image_size=meta.image_size, require_classes=False)
    prepare_output(config.out_dir, config.overwrite, create=False, inputs={"--run": config.run, "--chips": chips_dir},
                   message="output folder is not empty; use --overwrite or another --out")
    indices = _indices(ds, config)
    schools = ChipsFolder(chips_dir).read_schools()
    if schools is None:
        warnings.warn(f"{chips_dir}: no schools.geojson, so no footprint metrics (pointing game, energy share)",
                      stacklevel=3)  # the caller of explain_chips
    background = None
    if "shap" in config.methods:
        background = background_from_split(chips_dir, meta.image_size, config.background_size, config.seed).to(device)
    run = _Run(config, model, meta, runtime, device, target, layer_name, ds, schools, background,
               rng=np.random.default_rng(config.seed), seconds=dict.fromkeys(config.methods, 0.0),
               novelty=optional_summary(config.run))
    if config.write_maps:
        run.galleries = {m: {k: [] for k in GALLERY_OUTCOMES} for m in config.methods}
    return run, indices


def _indices(ds: ChipDataset, config: ExplainConfig) -> list[int]:
    """Positions of the chips to explain: ``chip_ids`` if given, else a seeded sample of ``limit``."""
    if config.chip_ids is None:
        n, limit = len(ds), config.limit
        if limit is None or limit >= n:
            return list(range(n))
        return sorted(np.random.default_rng(config.seed).choice(n, size=limit, replace=False).tolist())
    wanted = set(map(str, config.chip_ids))
    indices = [i for i, c in enumerate(ds.frame["chip_id"].astype(str)) if c in wanted]
    if not indices:
        raise UserError(f"none of the requested chip ids are in split {config.split!r}", Path(config.chips_dir))
    return indices[: config.limit] if config.limit else indices


def _explain_batch(run: _Run, batch: dict) -> None:
    """Maps of every method and baseline for one batch, their records, files and ROAD drops."""
    x = batch["image"].to(run.device).contiguous(memory_format=torch.channels_last)
    if run.novelty is None:
        logits, novelty = torch.as_tensor(run.runtime.logits(x)), [None] * len(x)
    else:  # the embedding comes with the logits: how unlike the training chips each chip is
        emb, logits = run.runtime.features(x)
        logits, novelty = torch.as_tensor(logits), [round(float(v), 2) for v in run.novelty.percentile(emb)]
    prob = torch.softmax(logits / run.meta.temperature, dim=1)[:, SCHOOL].numpy()
    maps = _method_maps(run, x) | baseline_maps(x.shape[0], x.shape[-2:], run.rng)
    batch_records = []  # a loop, not a comprehension: the warnings' stacklevel counts frames
    for b, idx in enumerate(batch["index"].tolist()):
        chip_maps = {name: m[b] for name, m in maps.items()}
        batch_records.append(_chip_records(run, idx, int(batch["label"][b]), float(prob[b]), chip_maps, novelty[b]))
    _add_road_drops(run, x, batch["label"].numpy(), maps, batch_records)


def _method_maps(run: _Run, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Maps (B, H, W) of each method on the model input grid, timed; one method's hooks at a time."""
    config, maps = run.config, {}
    for m in config.methods:
        layer = run.layer_name if m != "shap" else config.layer  # SHAP explains the pixels unless a layer is named
        with explainer(run.model, m, layer=layer, target=run.target, background=run.background,
                       shap_nsamples=config.shap_nsamples, seed=config.seed) as explain:
            start = time.perf_counter()
            maps[m] = explain(x)
            run.seconds[m] += time.perf_counter() - start
    return maps


def _chip_records(run: _Run, idx: int, label: int, prob: float, maps: dict[str, np.ndarray],
                  novelty: float | None = None) -> dict[str, dict]:
    """One record per method and baseline for chip ``idx`` (its novelty too, with a run's summary); writes its maps."""
    chip_id = str(run.ds.frame.iloc[idx]["chip_id"])
    pred = int(prob >= run.meta.threshold)
    outcome = OUTCOMES[(label, pred)]
    chip = run.ds.read_chip(idx)
    crs, transform = run.ds.georef(idx) or (None, None)
    mask = _footprint(run, label, crs, transform, chip.shape[-2:])
    records = {}
    for name, m in maps.items():
        heat = resize_maps(m[None], *chip.shape[-2:])[0]
        rec = {"chip_id": chip_id, "method": name, "label": label, "prob": prob, "pred": pred, "outcome": outcome,
               "has_footprint": mask is not None, **({} if novelty is None else {"novelty": novelty})}
        if mask is not None:
            rec["pointing_game"] = pointing_game(heat, mask)
            rec["energy_share"] = energy_share(heat, mask)
        if name in run.config.methods and run.config.write_maps:
            folder = Path(run.config.out_dir) / name
            rec |= _write_maps(run, folder, chip_id, chip, heat, crs, transform, signed=name == "shap")
            gallery = run.galleries[name].get(outcome)
            if gallery is not None and len(gallery) < run.config.gallery_size and _new_place(run, gallery, idx):
                gallery.append(GalleryItem(chip_id, chip, heat, mask, prob))
        records[name] = rec
        run.records.append(rec)
    return records


def _new_place(run: _Run, gallery: list[GalleryItem], idx: int) -> bool:
    """Whether chip ``idx`` shows a place that ``gallery`` does not show yet (one chip per school)."""
    frame = run.ds.frame.set_index(run.ds.frame["chip_id"].astype(str))
    order = [item.chip_id for item in gallery] + [str(run.ds.frame.iloc[idx]["chip_id"])]
    return len(distinct_places(frame, order)) == len(order)


def _footprint(run: _Run, label: int, crs, transform, shape: tuple[int, int]) -> np.ndarray | None:
    """The school footprint on a school chip's grid, or None (no footprints, no CRS, none inside)."""
    if run.schools is None or crs is None or label != 1:
        return None
    if str(crs) not in run.schools_in:
        run.schools_in[str(crs)] = run.schools.to_crs(crs)
    mask = footprint_mask(run.schools_in[str(crs)], crs, transform, shape)
    return mask if mask.any() else None


def _write_maps(run: _Run, folder: Path, chip_id: str, chip: np.ndarray, heat: np.ndarray, crs, transform,
                signed: bool) -> dict[str, str]:
    """Write a chip's heatmap and overlay under ``folder``; their paths relative to it."""
    if crs is None and not run.warned_crs:
        warnings.warn(f"{Path(run.config.chips_dir)}: chips have no CRS; heatmaps written as plain PNG, "
                      "not georeferenced", stacklevel=5)  # the caller of explain_chips
        run.warned_crs = True
    heatmap = _write_heatmap(folder, chip_id, heat, crs, transform)
    with atomic_path(folder / "overlays" / f"{chip_id}.png") as tmp:
        Image.fromarray(overlay_rgb(chip, heat, signed=signed)).save(tmp)
    return {"heatmap": heatmap, "overlay": f"overlays/{chip_id}.png"}


def _write_heatmap(folder: Path, chip_id: str, heat: np.ndarray, crs, transform) -> str:
    """A float32 single-band GeoTIFF on the chip's grid, or a plain 8-bit PNG without a CRS."""
    if crs is None:
        scale = max(float(np.abs(heat).max()), 1e-12)
        img = np.clip(heat / scale * 127.5 + 127.5 if heat.min() < 0 else heat / scale * 255, 0, 255).astype(np.uint8)
        with atomic_path(folder / "heatmaps" / f"{chip_id}.png") as tmp:
            Image.fromarray(img).save(tmp)
        return f"heatmaps/{chip_id}.png"
    write_geotiff(folder / "heatmaps" / f"{chip_id}.tif", heat.astype(np.float32), crs, transform, nodata=NODATA,
                  band_names=["evidence for class"])
    return f"heatmaps/{chip_id}.tif"


def _add_road_drops(run: _Run, x: torch.Tensor, labels: np.ndarray, maps: dict[str, np.ndarray],
                    batch_records: list[dict[str, dict]]) -> None:
    """ROAD drop of every map on the batch's school chips (model input grid), into their records."""
    school = np.flatnonzero(labels == 1)
    if not len(school):
        return
    for name, m in maps.items():
        drops = road_drop(run.runtime.logits, x[school], m[school], run.target)
        for k, b in enumerate(school):
            batch_records[b][name]["road_drop"] = float(drops[k])


def _finish(run: _Run, n: int) -> ExplainSummary:
    """Summarise the records; write ``faithfulness.json`` and ``explanations.csv``."""
    config, records = run.config, run.records
    per_chip = {m: run.seconds[m] / n for m in config.methods}
    table = summarise(records, per_chip, subset="correct_school")
    table_all = summarise(records, per_chip, subset="school")
    first = [r for r in records if r["method"] == config.methods[0]]
    outcomes = {k: sum(1 for r in first if r["outcome"] == k) for k in ("TP", "FP", "FN", "TN")}
    out_dir = Path(config.out_dir)
    ExplainFolder(out_dir).write_faithfulness({
        "run": str(config.run), "chips_dir": str(Path(config.chips_dir)), "split": config.split, "n_chips": n,
        "layer": run.layer_name, "target_class": CLASSES[run.target], "threshold": run.meta.threshold,
        "runtime": run.runtime.describe(),
        **({} if run.novelty is None else {"novelty_median": float(np.median([r["novelty"] for r in first]))}),
        "outcomes": outcomes, "subset": "correctly classified school chips with a footprint",
        "table": table, "table_all_school_chips": table_all,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
    })
    write_text(out_dir / "explanations.csv", pd.DataFrame(records).to_csv(index=False))
    return ExplainSummary(out_dir, n, list(config.methods), table, table_all, outcomes, run.layer_name, records,
                          split=config.split, galleries=run.galleries)
