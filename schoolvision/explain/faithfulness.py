"""Do explanations point at the school? Localisation and faithfulness against true footprints.

With synthetic towns every school footprint is known, so a heatmap can be scored directly:

* **pointing game**: is the map's peak inside the footprint rasterised onto the chip?
* **energy share** (energy-based pointing game): share of the positive map mass inside it;
* **ROAD drop** (most-relevant-first, as pytorch-grad-cam's ``ROADMostRelevantFirst``): how much
  P(class) falls when the most relevant pixels are removed by noisy linear imputation (higher = the
  map found what the model uses).

Two baselines give the numbers meaning: a random map and a centre-Gaussian map (chips labelled
school are often centred near a school, so "look at the middle" is a strong prior).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from pytorch_grad_cam.metrics.road import neighbors_weights
from scipy import ndimage, sparse
from scipy.sparse.linalg import spsolve

BASELINES = ("random", "centre-gaussian")
"""Names of the baseline maps, rows of every faithfulness table beside the methods."""
ROAD_PERCENTILES = (50, 70, 90)  # remove the top 50 %, 30 %, 10 % of pixels
ROAD_NOISE = 0.01  # the imputer's noise (pytorch-grad-cam's NoisyLinearImputer default)


def pointing_game(heatmap: np.ndarray, mask: np.ndarray, tolerance_px: int = 0) -> float:
    """1.0 if the map's maximum lies inside ``mask`` (or within ``tolerance_px`` of it), else 0.0.

    A map without positive values points nowhere and scores 0. Ties take the first maximum.
    """
    if mask.shape != heatmap.shape:
        raise ValueError(f"heatmap {heatmap.shape} and mask {mask.shape} differ in shape")
    if not np.isfinite(heatmap).any() or np.nanmax(heatmap) <= 0:
        return 0.0
    if tolerance_px > 0:
        mask = ndimage.distance_transform_edt(~mask) <= tolerance_px
    peak = np.unravel_index(np.nanargmax(heatmap), heatmap.shape)
    return float(bool(mask[peak]))


def energy_share(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the positive map mass inside ``mask`` (0 when the map has no positive mass)."""
    pos = np.clip(np.nan_to_num(heatmap), 0, None)
    total = float(pos.sum())
    return float(pos[mask].sum() / total) if total > 0 else 0.0


def random_maps(n: int, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Uniform random maps (n, H, W): the chance level of every metric."""
    return rng.random((n, *shape), dtype=np.float32)


def centre_gaussian(n: int, shape: Sequence[int], sigma: float = 0.25) -> np.ndarray:
    """Isotropic Gaussian maps (n, H, W) centred on the chip, ``sigma`` as a fraction of the side."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    g = np.exp(-(((yy - (h - 1) / 2) / (sigma * h)) ** 2 + ((xx - (w - 1) / 2) / (sigma * w)) ** 2) / 2)
    return np.repeat(g[None].astype(np.float32), n, axis=0)


def baseline_maps(n: int, shape: Sequence[int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The :data:`BASELINES` maps (n, H, W) for a batch: what a method has to beat."""
    return dict(zip(BASELINES, (random_maps(n, shape, rng), centre_gaussian(n, shape))))


def road_drop(model: Callable[[torch.Tensor], torch.Tensor | np.ndarray], x: torch.Tensor, maps: np.ndarray,
              target: int, percentiles: Sequence[int] = ROAD_PERCENTILES) -> np.ndarray:
    """ROAD most-relevant-first: mean fall of P(target) over ``percentiles`` of removed pixels, (B,).

    ``model`` is anything that maps a batch to logits: the torch model, or a runtime's ``logits``
    (:mod:`schoolvision.model.runtime`; forward passes only). ``maps`` are on the model input grid
    (B, H, W). The perturbation is pytorch-grad-cam's ``RemoveMostRelevantFirst`` with its noisy
    linear imputer (as in ``ROADMostRelevantFirst``, which avoids the out-of-distribution artefacts of
    plain deletion; its noise draws from torch's global generator); all perturbed chips go through
    the model in one batch.
    """
    if len(x) == 0:
        return np.zeros(0, dtype=np.float32)
    ranks = _ranks(np.nan_to_num(np.asarray(maps, dtype=np.float32)))
    xs = x.detach().cpu()
    jobs = [(xs[i], ranks[i] >= np.percentile(ranks[i], p)) for p in percentiles for i in range(len(xs))]
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:  # SuperLU releases the GIL
        filled = list(pool.map(lambda job: linear_infill(job[0].numpy(), job[1]), jobs))
    perturbed = []
    for (img, removed), values in zip(jobs, filled, strict=True):  # noise in order: the global stream, as before
        flat = img.reshape(img.shape[0], -1).clone()
        res = torch.tensor(values, dtype=torch.float).t()
        flat[:, np.flatnonzero(removed)] = res + ROAD_NOISE * torch.randn_like(res)
        perturbed.append(flat.reshape_as(img))
    batch = torch.cat([xs, torch.stack(perturbed)]).to(x.device)
    with torch.no_grad():
        prob = torch.softmax(torch.as_tensor(model(batch)).float(), dim=-1)[:, target].cpu().numpy()
    before, after = prob[: len(xs)], prob[len(xs) :].reshape(len(percentiles), len(xs))
    return (before[None] - after).mean(axis=0).astype(np.float32)


def linear_infill(img: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Values of the removed pixels by ROAD's linear imputation, (n_removed, C), in row-major order.

    Each removed pixel is the weighted mean of its 8 neighbours (pytorch-grad-cam's
    ``neighbors_weights``; outside the image they count as nothing), removed neighbours being unknowns
    too: one sparse system for the whole image. The same system and solver as pytorch-grad-cam's
    ``NoisyLinearImputer`` (so the same values), built with array operations instead of a LIL matrix,
    which took twice as long as the solve (a chip at 224 px: 46 ms).
    """
    h, w = removed.shape
    known = ~removed.reshape(-1)
    flat = img.reshape(img.shape[0], -1)
    unknown = np.flatnonzero(~known)
    n = len(unknown)
    var = np.zeros(known.size, dtype=np.int64)
    var[unknown] = np.arange(n)
    row, col = unknown // w, unknown % w
    rhs = np.zeros((n, img.shape[0]))
    diagonal = np.ones(n)
    rows, cols, values = [np.arange(n)], [np.arange(n)], []
    for (dy, dx), weight in neighbors_weights:
        r, c = row + dy, col + dx
        inside = (r >= 0) & (c >= 0) & (r < h) & (c < w)
        ids = np.flatnonzero(inside)
        neighbour = unknown[ids] + dy * w + dx
        has_value = known[neighbour]
        rhs[ids[has_value], :] -= weight * flat[:, neighbour[has_value]].T
        rows.append(ids[~has_value])
        cols.append(var[neighbour[~has_value]])
        values.append(np.full(len(rows[-1]), weight))
        diagonal[~inside] -= weight
    values.insert(0, -diagonal)
    system = sparse.csc_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    return np.asarray(spsolve(system, rhs)).reshape(n, -1)


def _ranks(maps: np.ndarray, seed: int = 0) -> np.ndarray:
    """Per-map pixel ranks in [0, 1], ties broken at random (seeded).

    CAM maps hold many exact zeros; on raw values a percentile threshold would then remove every
    pixel or none, whatever the map says.
    """
    rng = np.random.default_rng(seed)
    flat = maps.reshape(len(maps), -1)
    out = np.empty_like(flat)
    for i, row in enumerate(flat):
        order = np.lexsort((rng.random(row.size), row))
        out[i, order] = np.arange(row.size, dtype=np.float32) / max(row.size - 1, 1)
    return out.reshape(maps.shape)


def summarise(records: list[dict], seconds_per_chip: dict[str, float] | None = None,
              subset: str = "correct_school") -> dict[str, dict[str, float | None]]:
    """The faithfulness table: one row per method (and baseline) over a subset of chips.

    ``subset``: ``correct_school`` (school chips predicted school, the acceptance subset) or
    ``school`` (all school chips); only chips with a footprint count.
    """
    def keep(r: dict) -> bool:
        ok = r.get("has_footprint", False) and r["label"] == 1
        return ok and (r["pred"] == 1 if subset == "correct_school" else True)

    table: dict[str, dict[str, float | None]] = {}
    for method in dict.fromkeys(r["method"] for r in records):
        rows = [r for r in records if r["method"] == method and keep(r)]
        table[method] = {
            "n_chips": len(rows),
            "pointing_game": _mean(r.get("pointing_game") for r in rows),
            "energy_share": _mean(r.get("energy_share") for r in rows),
            "road_drop": _mean(r.get("road_drop") for r in rows),
            "seconds_per_chip": (seconds_per_chip or {}).get(method, 0.0),
        }
    return table


def _mean(values) -> float | None:
    """Mean of the defined values; None (JSON null) when there are none."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def format_table(table: dict[str, dict[str, float | None]]) -> str:
    """A fixed-width text table (for the CLI summary and the book)."""
    cols = ("n_chips", "pointing_game", "energy_share", "road_drop", "seconds_per_chip")
    lines = [f"{'method':<16}" + "".join(f"{c:>18}" for c in cols)]
    for method, row in table.items():
        cells = "".join(
            f"{row[c]:>18d}" if c == "n_chips" else f"{'-' if row[c] is None else format(row[c], '.3f'):>18}"
            for c in cols
        )
        lines.append(f"{method:<16}{cells}")
    return "\n".join(lines)


def beats_baseline(table: dict[str, dict[str, float | None]], baseline: str = "centre-gaussian",
                   metrics: Sequence[str] = ("pointing_game", "road_drop")) -> dict[str, dict[str, bool]]:
    """For each method of a faithfulness table, whether it scores above ``baseline`` on each of ``metrics``.

    Chapter 3's rule: a map is only evidence of what the model uses where it beats the centre-Gaussian
    map (school chips are cut around schools, so "look at the middle" already points well). Pointing
    can be won by a sharp map of edges that the prediction does not depend on; the ROAD drop cannot.
    """
    base = table[baseline]
    return {
        method: {m: (row.get(m) is not None and base.get(m) is not None and row[m] > base[m]) for m in metrics}
        for method, row in table.items() if method not in BASELINES
    }
