"""The chips of one scene: grid and school-centred windows, labels, split, sampling, hard negatives, files.

:func:`chip_scene` is what :func:`schoolvision.data.chips.make_chips` runs per scene; the rules it
applies are those of :mod:`schoolvision.data.chips` (labelling, splits, sampling, hard negatives).
"""


from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.windows import Window
from shapely import STRtree, union_all
from shapely.geometry import box
from tqdm.auto import tqdm

from schoolvision.data.chip_config import HARD_NEGATIVE, SPLITS, ChipConfig
from schoolvision.data.plan import SceneLayout, block_splits, stable_int, window_split
from schoolvision.data.windows import grid_windows
from schoolvision.io.imagery import (
    ImagerySource,
    file_count,
    open_source,
    read_mask,
    read_window,
)
from schoolvision.io.rasters import write_geotiff


def scene_layout(source: ImagerySource, footprints, gsd: float, by_blocks: bool) -> SceneLayout:
    """What the plan reads of a scene at ``gsd``: its size in pixels and its schools' centres."""
    with open_source(source, gsd=gsd) as ds:
        schools = footprints.to_crs(ds.crs)
        schools = schools[schools.intersects(box(*ds.bounds))]
        inv = ~ds.transform
        centres = np.array([(inv @ (c.x, c.y))[::-1] for c in schools.geometry.centroid], float).reshape(-1, 2)
        return SceneLayout(source.name, ds.height, ds.width, centres, by_blocks)


def chip_scene(source: ImagerySource, footprints, split_rule: str, gsd: float, config: ChipConfig, plan,
                out: Path, skipped: Counter, places=None) -> tuple[list[dict], dict, str | None]:
    """Label, split, sample and write the chips of one scene (with the hard negatives among ``places``).

    Returns the chips' rows, the scene's entry of ``dataset.json`` and, when it gave no chip, why.
    """
    cs, rng = config.chip_size, np.random.default_rng([config.seed, stable_int(source.name)])
    block = plan.block_px
    mine: Counter = Counter()  # this scene's skipped windows, for the reason it gave no chip
    with open_source(source, gsd=gsd) as ds:  # bands, CRS and scale: the source's options
        crs = ds.crs
        crs_text = crs.to_string()
        schools = footprints.to_crs(crs)
        scene_box = box(*ds.bounds)
        schools = schools[schools.intersects(scene_box)].reset_index(drop=True)
        tree = STRtree(list(schools.geometry))
        school_areas = schools.geometry.area.to_numpy()
        windows = _candidate_windows(ds, schools, cs, plan.stride, config, rng)
        blocks = (block_splits(ds.height, ds.width, block, config.block_fractions, config.seed, source.name)
                  if split_rule == "blocks" else None)
        labelled: list[dict] = []
        for row, col, view in windows:
            split = split_rule if blocks is None else window_split(blocks, row, col, cs, block)
            if split is None:
                mine["straddles_split_blocks"] += 1
                continue
            if view == "centred" and split not in config.centred_splits:
                continue
            t = ds.transform @ Affine.translation(col, row)
            chip_box = box(t.c, t.f + t.e * cs, t.c + t.a * cs, t.f)
            label, frac, cover, name = _label(chip_box, tree, schools, school_areas, config)
            if label is None:
                mine["ambiguous"] += 1
                continue
            labelled.append({"row_off": row, "col_off": col, "view": view, "split": split, "label": label,
                             "school_fraction": round(frac, 4), "school_cover": round(cover, 4), "school_name": name,
                             "minx": chip_box.bounds[0], "miny": chip_box.bounds[1], "maxx": chip_box.bounds[2],
                             "maxy": chip_box.bounds[3]})
        chosen = _undersample(labelled, config, rng, mine)
        if places is not None:
            hard = _hard_negatives(ds, places, tree, blocks, split_rule, config, block, mine)
            taken = {(r["row_off"], r["col_off"]) for r in hard}  # same window: the hard negative stands for it
            chosen = sorted([r for r in chosen if (r["row_off"], r["col_off"]) not in taken] + hard,
                            key=lambda r: (r["row_off"], r["col_off"]))
        rows = _write_chips(ds, source, chosen, config, out, mine)
        meta = {"path": str(Path(source.path).resolve()), "crs": crs_text, "split": split_rule,
                "width": ds.width, "height": ds.height, "bounds": list(ds.bounds), "kind": source.kind,
                "files": file_count(source)}
        if source.parts:  # a mosaic of GeoTIFF tiles: how many files it joins
            meta["tiles"] = len(source.parts)
        why = None if rows else no_chip_reason(ds.height, ds.width, cs, len(schools), mine)
    skipped.update(mine)
    return rows, meta, why


def _write_chips(ds, source: ImagerySource, chosen: list[dict], config: ChipConfig, out: Path,
                 skipped: Counter) -> list[dict]:
    """Read and write the ``chosen`` windows as chip GeoTIFFs under ``out``; their rows for ``chips.csv``.

    A window masked or black beyond ``max_nodata_fraction`` is counted in ``skipped`` and left out.
    """
    cs, crs = config.chip_size, ds.crs
    rows = []
    for r in tqdm(chosen, desc=f"chips {source.name}", unit="chip", leave=False, disable=not chosen):
        window = Window(r["col_off"], r["row_off"], cs, cs)
        arr = read_window(ds, window, source.path)
        valid = read_mask(ds, window, source.path)
        reason = _empty_reason(arr, valid, config.max_nodata_fraction)
        if reason:
            skipped[reason] += 1
            continue
        arr[:, ~valid] = 0  # what the mask hides is nodata in the chip too
        chip_id = f"{source.name}_r{r['row_off']:05d}_c{r['col_off']:05d}"
        rel = f"{r['split']}/{r['label']}/{chip_id}.tif"
        write_geotiff(out / rel, arr.astype(np.uint8, copy=False), crs,
                      ds.transform @ Affine.translation(r["col_off"], r["row_off"]),
                      tiled=False, overviews=False)
        rows.append({"chip_id": chip_id, "path": rel, "scene": source.name, "crs": crs.to_string(), **r})
    return rows


def no_chip_reason(height: int, width: int, cs: int, n_schools: int, skipped: Counter) -> str:
    """Why a scene gave no chip, from what its windows were skipped for (the most common reason)."""
    if height < cs or width < cs:
        return f"smaller than one {cs} px chip; use a smaller --chip-size or --gsd"
    if not skipped:
        return "no window"
    reason = skipped.most_common(1)[0][0]
    return {
        "masked": "all masked (its alpha, mask or nodata value hides the windows)",
        "nodata_or_black": "all masked or black (no data under the windows)",
        "straddles_split_blocks": "every window straddles two split blocks; pass a larger --block-size",
        "ambiguous": "every window cuts a school without holding enough of it (ambiguous); pass a larger --chip-size",
        "undersampled_not_school": ("no label near it: no school in the scene, and its not_school chips were "
                                    "under-sampled away (--negative-ratio 0 keeps them all)" if n_schools == 0 else
                                    "its not_school chips were under-sampled away (--negative-ratio 0 keeps them all)"),
    }.get(reason, reason.replace("_", " "))


def _hard_negatives(ds, places, tree, blocks, split_rule: str, config: ChipConfig, block: int,
                    skipped: Counter) -> list[dict]:
    """One not_school window centred on each place inside the scene, labelled and split like the others.

    The window's origin is the place's pixel position minus half a chip, rounded: its centre is
    within half a pixel of the place (unless the scene's edge shifts it inside).
    """
    cs, h, w = config.chip_size, ds.height, ds.width
    if h < cs or w < cs:
        return []
    points = places.to_crs(ds.crs).geometry.centroid  # a polygon stands for its centroid
    inside = points.within(box(*ds.bounds))
    inv = ~ds.transform
    found: dict[tuple[int, int], dict] = {}
    for point in points[inside]:
        cx, cy = inv @ (point.x, point.y)
        row = int(np.clip(round(cy - cs / 2), 0, h - cs))
        col = int(np.clip(round(cx - cs / 2), 0, w - cs))
        split = split_rule if blocks is None else window_split(blocks, row, col, cs, block)
        if split is None:
            skipped["hard_negative_straddles_split_blocks"] += 1
            continue
        t = ds.transform @ Affine.translation(col, row)
        chip_box = box(t.c, t.f + t.e * cs, t.c + t.a * cs, t.f)
        if tree.query(chip_box, predicate="intersects").size:
            skipped["hard_negative_touches_school"] += 1
            continue
        found.setdefault((row, col), {
            "row_off": row, "col_off": col, "view": HARD_NEGATIVE, "split": split, "label": "not_school",
            "school_fraction": 0.0, "school_cover": 0.0, "school_name": "", "minx": chip_box.bounds[0],
            "miny": chip_box.bounds[1], "maxx": chip_box.bounds[2], "maxy": chip_box.bounds[3]})
    return list(found.values())


def _candidate_windows(ds, schools, cs: int, stride: int, config: ChipConfig, rng) -> list[tuple[int, int, str]]:
    """Grid windows plus jittered windows centred on each school; unique by origin, in a stable order."""
    h, w = ds.height, ds.width
    if h < cs or w < cs:
        return []
    seen: dict[tuple[int, int], str] = dict.fromkeys(grid_windows(h, w, cs, stride), "grid")
    inv = ~ds.transform
    max_shift = config.jitter * cs
    for geom in schools.geometry:
        c = geom.centroid
        cx, cy = inv @ (c.x, c.y)
        for k in range(config.centred_views):
            dx, dy = (0.0, 0.0) if k == 0 else rng.uniform(-max_shift, max_shift, 2)
            row = int(np.clip(round(cy + dy - cs / 2), 0, h - cs))
            col = int(np.clip(round(cx + dx - cs / 2), 0, w - cs))
            seen.setdefault((row, col), "centred")
    return [(r, c, v) for (r, c), v in sorted(seen.items())]


def _label(chip_box, tree, schools, areas, config: ChipConfig) -> tuple[str | None, float, float, str]:
    """Apply the labelling rule (module docstring) to one chip footprint."""
    hits = tree.query(chip_box, predicate="intersects")
    if len(hits) == 0:
        return "not_school", 0.0, 0.0, ""
    best, best_frac, covered = "", 0.0, []
    for i in hits:
        inter = schools.geometry.iloc[i].intersection(chip_box)
        frac = inter.area / areas[i] if areas[i] > 0 else 0.0
        covered.append(inter)
        if frac > best_frac:
            best, best_frac = schools["name"].iloc[i], frac
    cover = union_all(covered).area / chip_box.area
    if best_frac == 0.0 and cover == 0.0:
        return "not_school", 0.0, 0.0, ""  # touches a school boundary only
    if best_frac >= config.min_school_fraction or cover >= config.min_chip_cover:
        return "school", best_frac, cover, best
    return None, best_frac, cover, best


def _undersample(rows: list[dict], config: ChipConfig, rng, skipped: Counter) -> list[dict]:
    """Keep at most ratio x positives of not_school chips per split (seeded), in a stable order."""
    keep = []
    for split in SPLITS:
        these = [r for r in rows if r["split"] == split]
        pos = [r for r in these if r["label"] == "school"]
        neg = [r for r in these if r["label"] == "not_school"]
        ratio = config.negative_ratio if split == "train" else config.eval_negative_ratio
        if ratio is not None and pos and len(neg) > math.ceil(ratio * len(pos)):
            n = math.ceil(ratio * len(pos))
            idx = np.sort(rng.choice(len(neg), size=n, replace=False))
            skipped["undersampled_not_school"] += len(neg) - n
            neg = [neg[i] for i in idx]
        keep.extend(pos + neg)
    return sorted(keep, key=lambda r: (r["row_off"], r["col_off"]))


def _empty_reason(arr: np.ndarray, valid: np.ndarray, max_fraction: float) -> str | None:
    """Why a chip is skipped: "masked" (its dataset mask hides too much), "nodata_or_black", or None (kept).

    ``valid`` is the dataset mask (alpha, internal mask, nodata); pure black pixels (outside a warped
    scene, or black borders without a declared nodata) count as empty too.
    """
    masked = ~valid
    if masked.mean() > max_fraction:
        return "masked"
    if (masked | np.all(arr == 0, axis=0)).mean() > max_fraction:
        return "nodata_or_black"
    return None


