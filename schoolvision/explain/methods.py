"""Why does the model call a chip a school? CAM methods, guided backprop and SHAP, as heatmaps.

Every explainer is a context manager (hooks are released on exit, so explaining thousands of chips
does not leak) that yields a callable ``maps = explain(x)``: ``x`` is a batch of RGB chips in
[0, 1], shape (B, 3, H, W), ``maps`` a float32 array (B, H, W) in which positive values are
evidence *for* the target class. CAM maps are in [0, 1]; SHAP maps are signed.

The layer is the model's own ``target_layer`` (never chosen from labels; for inputs so small that
its map would be under 4 x 4 cells, the deepest block that keeps 4 x 4), or one the user names.
CAM methods and guided backprop explain the class logit (pytorch-grad-cam's
``ClassifierOutputTarget``); SHAP explains the class log-odds (one output, see ``shap_explain``).

:func:`explain_chips` runs a method over a chips folder and writes georeferenced heatmaps, PNG
overlays, galleries and the faithfulness table (see :mod:`schoolvision.explain.faithfulness`).
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from schoolvision import CLASSES, SCHOOL
from schoolvision.errors import UserError
from schoolvision.model.backbones import conv_layer_names

Explain = Callable[[torch.Tensor], np.ndarray]

METHODS: dict[str, str] = {
    "gradcam": "Grad-CAM: channel weights from the mean gradient at the last conv block",
    "gradcam++": "Grad-CAM++: second-order channel weights, better for several objects",
    "eigencam": "EigenCAM: first principal component of the activations (gradient-free)",
    "guided-backprop": "guided backpropagation: positive gradients to the input pixels",
    "guided-gradcam": "guided backprop times Grad-CAM: fine detail, class-discriminative",
    "shap": "SHAP GradientExplainer (expected gradients) against a training background",
}
CAM_METHODS = ("gradcam", "gradcam++", "eigencam")
# Activations whose backward pass guided backprop rectifies.
GUIDED_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.SiLU, nn.GELU)


def check_method(name: str) -> str:
    """Return ``name`` if it is a known method, else a :class:`UserError` listing them."""
    if name not in METHODS:
        raise UserError(f"unknown explanation method {name!r}; available: {', '.join(METHODS)}")
    return name


def class_index(target_class: str | int) -> int:
    """Index of a class given by name (``school``) or number."""
    if isinstance(target_class, int) or str(target_class).isdigit():
        idx = int(target_class)
        if 0 <= idx < len(CLASSES):
            return idx
    elif target_class in CLASSES:
        return CLASSES.index(target_class)
    raise UserError(f"unknown target class {target_class!r}; available: {', '.join(CLASSES)}")


MIN_CAM_CELLS = 4


def resolve_layer(model: nn.Module, name: str | None = None, image_size: int | None = None) -> tuple[str, nn.Module]:
    """The layer to explain: ``name`` if given, else the model's ``target_layer``.

    With ``image_size``, a ``target_layer`` whose map would be coarser than 4 x 4 cells (a 64 px input
    gives 2 x 2 at stride 32, too coarse to point at anything) is replaced by the deepest block of the
    trunk that still gives 4 x 4: see :func:`auto_layer`. The choice depends on the model and the input
    size only, never on labels. ``name="target"`` forces ``target_layer``.
    """
    if name is None and image_size is not None:
        name = auto_layer(model, image_size)
    if name is None or name == "target":
        return model.target_layer_name, model.target_layer
    modules = dict(model.named_modules())
    if not name or name not in modules:
        raise UserError(f"layer {name!r} is not in the model; convolutional layers: {', '.join(conv_layer_names(model))}")
    return name, modules[name]


def auto_layer(model: nn.Module, image_size: int, min_cells: int = MIN_CAM_CELLS) -> str:
    """``target_layer`` if its map has at least ``min_cells`` per side at ``image_size``, else the last
    trunk block holding a convolution (``trunk.X`` or ``trunk.X.Y``, in execution order) whose map does."""
    sizes: dict[str, tuple[int, int]] = {}

    def record(name: str):
        def hook(module, inputs, output):
            if torch.is_tensor(output) and output.ndim == 4:
                sizes.setdefault(name, tuple(output.shape[-2:]))

        return hook

    handles = [
        module.register_forward_hook(record(name))
        for name, module in model.named_modules()
        if name == model.target_layer_name
        or (name.startswith("trunk.") and name.count(".") <= 2 and any(isinstance(m, nn.Conv2d) for m in module.modules()))
    ]
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for h in handles:
            h.remove()
    if min(sizes.get(model.target_layer_name, (0, 0))) >= min_cells:
        return model.target_layer_name
    fine = [n for n, hw in sizes.items() if min(hw) >= min_cells]  # dict order = execution order
    return fine[-1] if fine else model.target_layer_name


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients (explanations need input or activation gradients only)."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


@contextlib.contextmanager
def graph_from(model: nn.Module, layer: nn.Module) -> Iterator[None]:
    """Start the autograd graph at ``layer``'s output: CAM gradients then cost a head's backward only.

    Must be entered before the CAM object registers its own hooks (they see the new leaf tensor).
    Passes that need gradients down to the input (:func:`guided_backprop`) run inside
    :func:`full_graph`, which switches every such cut off.
    """

    def hook(module, inputs, output):
        if getattr(model, "_explain_full_graph", False) or (output.requires_grad and output.grad_fn is None):
            return None  # a full-graph pass, or already a leaf (another explainer cut here)
        return output.detach().requires_grad_(True)

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def full_graph(model: nn.Module) -> Iterator[None]:
    """Disable :func:`graph_from` cuts on ``model`` for the duration (gradients reach the input)."""
    previous = getattr(model, "_explain_full_graph", False)
    model._explain_full_graph = True
    try:
        yield
    finally:
        model._explain_full_graph = previous


@contextlib.contextmanager
def guided_activations(model: nn.Module) -> Iterator[None]:
    """Guided backprop: only positive gradients pass back through each activation.

    A forward hook clamps the gradient arriving at every activation's output; the activation's own
    derivative then masks negative inputs. In-place activations are switched off while active
    (their outputs cannot carry hooks) and restored on exit.
    """
    handles, inplace = [], []
    for m in model.modules():
        if isinstance(m, GUIDED_ACTIVATIONS):
            if getattr(m, "inplace", False):
                inplace.append(m)
                m.inplace = False
            handles.append(m.register_forward_hook(_clamp_gradient))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for m in inplace:
            m.inplace = True


def _clamp_gradient(module, inputs, output):
    if output.requires_grad:
        output.register_hook(lambda g: g.clamp(min=0))


def _normalise(maps: np.ndarray) -> np.ndarray:
    """Scale each map to [0, 1] by its maximum (negative values clipped)."""
    maps = np.clip(maps, 0, None)
    peak = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    return (maps / np.where(peak > 0, peak, 1.0)).astype(np.float32)


def guided_backprop(model: nn.Module, x: torch.Tensor, target: int = SCHOOL) -> np.ndarray:
    """Guided-backprop gradients of the class logit w.r.t. the input, (B, 3, H, W)."""
    device = next(model.parameters()).device
    with frozen(model), guided_activations(model), full_graph(model):
        x = x.to(device).clone().requires_grad_(True)
        score = model(x)[:, target].sum()
        (grad,) = torch.autograd.grad(score, x)
    return grad.detach().cpu().numpy().astype(np.float32)


def saliency_from_gradients(grad: np.ndarray) -> np.ndarray:
    """A (B, H, W) map in [0, 1] from input gradients: the largest positive channel gradient."""
    return _normalise(grad.max(axis=1))


@contextlib.contextmanager
def explainer(
    model: nn.Module,
    method: str,
    *,
    layer: str | None = None,
    target: int = SCHOOL,
    background: torch.Tensor | None = None,
    shap_nsamples: int = 64,
    seed: int = 0,
    image_size: int | None = None,
) -> Iterator[Explain]:
    """Context manager yielding ``explain(x) -> maps (B, H, W) float32`` for ``method``.

    ``background`` (chips from the training split) is needed by ``shap`` only. ``image_size`` lets
    the default layer adapt to small inputs (see :func:`resolve_layer`).
    """
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    check_method(method)
    _, module = resolve_layer(model, layer, image_size)
    device = next(model.parameters()).device
    cam_class = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM, "guided-gradcam": GradCAM}.get(method)

    if method == "shap":
        from schoolvision.explain.shap_values import gradient_shap

        if background is None:
            raise UserError("the shap method needs background chips (from the training split)")

        def explain_shap(x: torch.Tensor) -> np.ndarray:
            values = gradient_shap(model, x, background, nsamples=shap_nsamples, seed=seed, target=target, layer=layer)
            return values.sum(axis=1).astype(np.float32) if values.ndim == 4 else values

        with frozen(model):
            yield explain_shap
        return

    if method == "guided-backprop":
        yield lambda x: saliency_from_gradients(guided_backprop(model, x, target))
        return

    with frozen(model), graph_from(model, module), cam_class(model=model, target_layers=[module]) as cam:

        def explain_cam(x: torch.Tensor) -> np.ndarray:
            x = x.to(device)
            maps = cam(x, targets=[ClassifierOutputTarget(target)] * len(x)).astype(np.float32)
            cam.activations_and_grads.clear()  # drop the batch's activations now, not at the next call
            if method == "guided-gradcam":
                maps = _normalise(saliency_from_gradients(guided_backprop(model, x, target)) * maps)
                cam.activations_and_grads.clear()
            return maps

        yield explain_cam


def explain_batch(model: nn.Module, x: torch.Tensor, method: str, **kwargs) -> np.ndarray:
    """One-shot convenience: maps (B, H, W) for ``x`` (opens and closes the explainer)."""
    kwargs.setdefault("image_size", int(x.shape[-1]))
    with explainer(model, method, **kwargs) as explain:
        return explain(x)


def resize_maps(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of (B, h, w) maps to the chips' native grid."""
    if maps.shape[-2:] == (height, width):
        return maps.astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
    return F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[:, 0].numpy()


# --- running over a chips folder ---------------------------------------------------------------

NODATA = -9999.0


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


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise UserError("output folder is not empty; use --overwrite or another --out", out_dir)


def _load_schools(chips_dir: Path):
    """School footprints of a chips folder (``dataset.json`` -> ``schools``), or None."""
    import geopandas as gpd

    meta_path = chips_dir / "dataset.json"
    name = "schools.geojson"
    if meta_path.is_file():
        name = json.loads(meta_path.read_text()).get("schools") or name
    path = chips_dir / name
    return gpd.read_file(path) if path.is_file() else None


def _select(n: int, limit: int | None, seed: int) -> list[int]:
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=limit, replace=False).tolist())


def explain_chips(config: ExplainConfig) -> ExplainSummary:
    """Explain every chip of a split with each method; write maps, galleries and faithfulness.json."""
    from tqdm.auto import tqdm

    from schoolvision.explain import faithfulness as fm
    from schoolvision.io.atomic import write_json
    from schoolvision.model.checkpoint import load_classifier
    from schoolvision.data.dataset import ChipDataset
    from schoolvision.model.device import resolve_device

    for m in config.methods:
        check_method(m)
    if config.limit is not None and config.limit <= 0:
        raise UserError(f"--limit must be a positive number of chips (got {config.limit})")
    target = class_index(config.target_class)
    out_dir = Path(config.out_dir)
    chips_dir = Path(config.chips_dir)
    device = resolve_device(config.device)
    model, meta = load_classifier(config.run, device)
    layer_name, _ = resolve_layer(model, config.layer, meta.image_size)
    ds = ChipDataset(chips_dir, split=config.split, image_size=meta.image_size, require_classes=False)
    _check_out_dir(out_dir, config.overwrite)
    if config.chip_ids is not None:
        wanted = set(map(str, config.chip_ids))
        indices = [i for i, c in enumerate(ds.frame["chip_id"].astype(str)) if c in wanted]
        if not indices:
            raise UserError(f"none of the requested chip ids are in split {config.split!r}", chips_dir)
        indices = indices[: config.limit] if config.limit else indices
    else:
        indices = _select(len(ds), config.limit, config.seed)
    schools = _load_schools(chips_dir)
    if schools is None:
        warnings.warn(f"{chips_dir}: no schools.geojson, so no footprint metrics (pointing game, energy share)", stacklevel=2)
    background = None
    if "shap" in config.methods:
        from schoolvision.explain.shap_values import background_from_split

        background = background_from_split(chips_dir, meta.image_size, config.background_size, config.seed).to(device)

    rng = np.random.default_rng(config.seed)
    records: list[dict] = []
    gallery: dict[str, dict[str, list]] = {m: {"TP": [], "FP": [], "FN": []} for m in config.methods}
    seconds: dict[str, float] = {m: 0.0 for m in config.methods}
    warned_crs = False
    schools_in: dict[str, object] = {}
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, indices), batch_size=config.batch_size, shuffle=False)
    for batch in tqdm(loader, desc="explain", unit="batch", leave=False):
        x = batch["image"].to(device)
        with torch.no_grad():
            prob = torch.softmax(model(x) / meta.temperature, dim=1)[:, SCHOOL].cpu().numpy()
        maps_by_method = {}
        for m in config.methods:  # one method's hooks at a time
            with explainer(model, m, layer=layer_name if m != "shap" else config.layer, target=target, background=background,
                           shap_nsamples=config.shap_nsamples, seed=config.seed) as explain:
                start = time.perf_counter()
                maps_by_method[m] = explain(x)
                seconds[m] += time.perf_counter() - start
        chips = [ds.read_chip(int(i)) for i in batch["index"]]
        georefs = [ds.georef(int(i)) or (None, None) for i in batch["index"]]
        baselines_in = {"random": fm.random_maps(x.shape[0], x.shape[-2:], rng), "centre-gaussian": fm.centre_gaussian(x.shape[0], x.shape[-2:])}
        for b, idx in enumerate(batch["index"].tolist()):
            row = ds.frame.iloc[idx]
            label = int(batch["label"][b])
            pred = int(prob[b] >= meta.threshold)
            outcome = {(1, 1): "TP", (0, 1): "FP", (1, 0): "FN", (0, 0): "TN"}[(label, pred)]
            chip = chips[b]
            crs, transform = georefs[b]
            mask = None
            if schools is not None and crs is not None and label == 1:
                from schoolvision.io.schools import footprint_mask

                if str(crs) not in schools_in:  # reproject the footprints once per CRS, not per chip
                    schools_in[str(crs)] = schools.to_crs(crs)
                mask = footprint_mask(schools_in[str(crs)], crs, transform, chip.shape[-2:])
                mask = mask if mask.any() else None
            for name, maps in {**maps_by_method, **baselines_in}.items():
                is_method = name in maps_by_method
                heat = resize_maps(maps[b : b + 1], *chip.shape[-2:])[0]
                rec = {"chip_id": str(row["chip_id"]), "method": name, "label": label, "prob": float(prob[b]),
                       "pred": pred, "outcome": outcome, "has_footprint": mask is not None}
                if mask is not None:
                    rec["pointing_game"] = fm.pointing_game(heat, mask)
                    rec["energy_share"] = fm.energy_share(heat, mask)
                if is_method and config.write_maps:
                    if not warned_crs and crs is None:
                        warnings.warn(f"{chips_dir}: chips have no CRS; heatmaps written as plain PNG, not georeferenced", stacklevel=2)
                        warned_crs = True
                    rec["heatmap"] = _write_heatmap(out_dir / name, str(row["chip_id"]), heat, crs, transform)
                    rec["overlay"] = _write_overlay(out_dir / name, str(row["chip_id"]), chip, heat, name)
                if is_method and outcome in gallery[name] and len(gallery[name][outcome]) < config.gallery_size:
                    gallery[name][outcome].append((str(row["chip_id"]), chip, heat, mask, float(prob[b])))
                records.append(rec)
        # ROAD on the school chips of the batch (model input grid)
        school = np.flatnonzero(batch["label"].numpy() == 1)
        if len(school):
            for name, maps in {**maps_by_method, **baselines_in}.items():
                drops = fm.road_drop(model, x[school], maps[school], target)
                for k, b in enumerate(school):
                    rec = _find(records, name, str(ds.frame.iloc[int(batch["index"][b])]["chip_id"]))
                    rec["road_drop"] = float(drops[k])
    n = len(indices)
    spc = {m: seconds[m] / n for m in config.methods}
    table = fm.summarise(records, spc, subset="correct_school")
    table_all = fm.summarise(records, spc, subset="school")
    outcomes = {k: sum(1 for r in records if r["method"] == config.methods[0] and r["outcome"] == k) for k in ("TP", "FP", "FN", "TN")}
    if config.write_maps:
        from schoolvision.plotting.explain import save_gallery

        for m in config.methods:
            for outcome, items in gallery[m].items():
                if items:
                    save_gallery(out_dir / m / f"gallery_{outcome.lower()}.png", items, title=f"{m}: {outcome} ({config.split} split)")
    write_json(out_dir / "faithfulness.json", {
        "run": str(config.run), "chips_dir": str(chips_dir), "split": config.split, "n_chips": n,
        "layer": layer_name, "target_class": CLASSES[target], "threshold": meta.threshold,
        "outcomes": outcomes, "subset": "correctly classified school chips with a footprint",
        "table": table, "table_all_school_chips": table_all,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
    })
    _write_records(out_dir / "explanations.csv", records)
    return ExplainSummary(out_dir, n, list(config.methods), table, table_all, outcomes, layer_name, records)


def _find(records: list[dict], method: str, chip_id: str) -> dict:
    for rec in reversed(records):
        if rec["method"] == method and rec["chip_id"] == chip_id:
            return rec
    raise KeyError((method, chip_id))  # pragma: no cover


def _write_heatmap(folder: Path, chip_id: str, heat: np.ndarray, crs, transform) -> str:
    """A float32 single-band GeoTIFF on the chip's grid, or a plain 8-bit PNG without a CRS."""
    if crs is None:
        from PIL import Image

        from schoolvision.io.atomic import atomic_path

        path = folder / "heatmaps" / f"{chip_id}.png"
        scale = max(float(np.abs(heat).max()), 1e-12)
        img = np.clip(heat / scale * 127.5 + 127.5 if heat.min() < 0 else heat / scale * 255, 0, 255).astype(np.uint8)
        with atomic_path(path) as tmp:
            Image.fromarray(img).save(tmp)
        return f"heatmaps/{chip_id}.png"
    from schoolvision.io.gis import write_geotiff

    write_geotiff(folder / "heatmaps" / f"{chip_id}.tif", heat.astype(np.float32), crs, transform, nodata=NODATA,
                  band_names=["evidence for class"])
    return f"heatmaps/{chip_id}.tif"


def _write_overlay(folder: Path, chip_id: str, chip: np.ndarray, heat: np.ndarray, method: str) -> str:
    from PIL import Image

    from schoolvision.io.atomic import atomic_path
    from schoolvision.plotting.explain import overlay_rgb

    with atomic_path(folder / "overlays" / f"{chip_id}.png") as tmp:
        Image.fromarray(overlay_rgb(chip, heat, signed=method == "shap")).save(tmp)
    return f"overlays/{chip_id}.png"


def _write_records(path: Path, records: list[dict]) -> None:
    import pandas as pd

    from schoolvision.io.atomic import write_text

    write_text(path, pd.DataFrame(records).to_csv(index=False))


# --- a few chips for figures -------------------------------------------------------------------


@dataclass
class ChipSample:
    """A handful of chips to show side by side: model inputs, native pixels, footprints, predictions."""

    chip_ids: list[str]
    images: torch.Tensor  # (N, 3, H, W) model input in [0, 1]
    chips: list[np.ndarray]  # uint8 (3, h, w) as stored
    masks: list[np.ndarray | None]  # school footprint on the chip grid
    probs: list[float]
    outcomes: list[str]


def pick_chips(predictions: str | Path, chips_dir: str | Path, image_size: int | None, *, outcome: str | None = None,
               label: int | None = None, pred: int | None = None, n: int = 4, by: str = "chip_id", split: str = "test") -> ChipSample:
    """``n`` chips of ``split`` chosen from a predictions table, with their pixels and footprints.

    ``predictions``: a run's ``predictions.csv`` or an :func:`explain_chips` ``explanations.csv``
    (columns chip_id, label, prob, pred). Filter by ``outcome`` (TP, FP, FN, TN) or ``label``/``pred``;
    order by ``chip_id`` or by ``prob`` (highest first: e.g. the not_school chips the model likes most).
    """
    import pandas as pd

    from schoolvision.data.dataset import ChipDataset

    predictions, chips_dir = Path(predictions), Path(chips_dir)
    rec = pd.read_csv(predictions, dtype={"chip_id": str})
    if "method" in rec:
        rec = rec[rec["method"] == rec["method"].iloc[0]]
    if "split" in rec:
        rec = rec[rec["split"] == split]
    rec = rec.assign(outcome=[{(1, 1): "TP", (0, 1): "FP", (1, 0): "FN", (0, 0): "TN"}[(int(a), int(b))]
                              for a, b in zip(rec["label"], rec["pred"])])
    for col, value in (("outcome", outcome), ("label", label), ("pred", pred)):
        if value is not None:
            rec = rec[rec[col] == value]
    rec = rec.sort_values(["prob", "chip_id"], ascending=[False, True]) if by == "prob" else rec.sort_values("chip_id")
    rec = rec.head(n)
    if rec.empty:
        raise UserError(f"no chips match outcome={outcome} label={label} pred={pred} in split {split!r}", predictions)
    ds = ChipDataset(chips_dir, split=split, image_size=image_size, require_classes=False)
    pos = {cid: i for i, cid in enumerate(ds.frame["chip_id"].astype(str))}
    schools = _load_schools(chips_dir)
    idx = [pos[c] for c in rec["chip_id"]]
    chips = [ds.read_chip(i) for i in idx]
    masks: list[np.ndarray | None] = []
    for i, chip in zip(idx, chips):
        georef = ds.georef(i)
        if schools is None or georef is None:
            masks.append(None)
            continue
        from schoolvision.io.schools import footprint_mask

        masks.append(footprint_mask(schools, georef[0], georef[1], chip.shape[-2:]))
    return ChipSample(list(rec["chip_id"]), torch.stack([ds[i]["image"] for i in idx]), chips, masks,
                      rec["prob"].astype(float).tolist(), rec["outcome"].tolist())


def focus_chip_ids(predictions: str | Path, split: str = "test", negatives: int = 16) -> list[str]:
    """Every school chip of ``split`` plus the ``negatives`` not-school chips with the highest P(school).

    What a chapter explains on CPU: the faithfulness subset, every false positive (they have the
    highest P among negatives) and the closest calls, without the hundreds of easy negatives.
    """
    import pandas as pd

    rec = pd.read_csv(predictions, dtype={"chip_id": str})
    rec = rec[rec["split"] == split] if "split" in rec else rec
    neg = rec[rec["label"] == 0].sort_values(["prob", "chip_id"], ascending=[False, True]).head(negatives)
    return sorted(rec.loc[rec["label"] == 1, "chip_id"].tolist() + neg["chip_id"].tolist())


def check_alignment(explain_dir: str | Path, chips_dir: str | Path, method: str = "gradcam", split: str = "test", n: int = 10) -> dict:
    """Do the first ``n`` heatmap GeoTIFFs share their chip's CRS, transform and size? (for the book)"""
    import rasterio

    from schoolvision.data.dataset import ChipDataset

    ds = ChipDataset(Path(chips_dir), split=split, require_classes=False)
    paths = dict(zip(ds.frame["chip_id"].astype(str), ds.frame["path"]))
    tifs = sorted((Path(explain_dir) / method / "heatmaps").glob("*.tif"))[:n]
    same = {"crs": True, "transform": True, "size": True}
    dtype, nodata = None, None
    for tif in tifs:
        with rasterio.open(tif) as h, rasterio.open(Path(chips_dir) / paths[tif.stem]) as c:
            same["crs"] &= h.crs == c.crs
            same["transform"] &= h.transform == c.transform
            same["size"] &= (h.width, h.height) == (c.width, c.height)
            dtype, nodata = h.dtypes[0], h.nodata
    return {"heatmaps_checked": len(tifs), **{f"same_{k}": v for k, v in same.items()}, "dtype": dtype, "nodata": nodata}


def compare_methods(model: nn.Module, sample: ChipSample, methods: list[str], **kwargs) -> dict[str, np.ndarray]:
    """Maps of each method for the same chips, on the chips' native grid: {method: (N, h, w)}."""
    device = next(model.parameters()).device
    h, w = sample.chips[0].shape[-2:]
    return {m: resize_maps(explain_batch(model, sample.images.to(device), m, **kwargs), h, w) for m in methods}
