"""Labelled chips from imagery and school footprints, split spatially.

Labelling rule (``ChipConfig``): a chip is ``school`` when it holds at least
``min_school_fraction`` of some school's footprint, or school footprints cover at least
``min_chip_cover`` of the chip (large compounds never fit in one chip); ``not_school`` when it
touches no school at all; anything in between (a sliver of a school) is ambiguous and left out.

Windows come from a regular grid (``stride``); in the splits listed in ``centred_splits`` (train
by default) each school also gives ``centred_views`` jittered windows centred on it, so the model
sees every school several times. Val and test stay grid-only: an unbiased sample of what a scan
sees, so their metrics are not flattered by school-centred views. ``not_school`` chips of the train
split are under-sampled to ``negative_ratio`` per positive; val and test keep every negative
(``eval_negative_ratio`` to change that), so their class balance stays what a scan would see.

Hard negatives (``make_chips(..., negatives=FILE)``): places a mapper rejected (any labels file
:func:`~schoolvision.io.schools.read_schools` reads; polygons stand for their centroid) each give one
``not_school`` chip centred on the place (shifted inside the scene near its edge), in whatever split
the place lies in, never under-sampled, marked ``view = hard_negative`` in ``chips.csv``. A chip
that would touch a school footprint is left out: the school label wins.

Splits are spatial, never per chip: by scene (sorted names: last = test, the one before = val,
unless ``test_scenes`` / ``val_scenes`` say otherwise), or, with one or two scenes, by square
blocks of ``block_size`` metres assigned by ``seed``; chips that straddle blocks of two splits
are dropped, so overlapping chips never leak between splits. A block size and stride left at None
are planned for the data (:mod:`schoolvision.data.plan`): blocks small enough that train, val and
test each hold schools where the labels allow it, a stride that gives a small area enough chips.

No silent zero: a scene that gives no chip is named in a warning with its size in metres and the
reason (smaller than a chip, all masked, every window straddling split blocks or cutting a school,
no school near it); no chip at all is an error.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import shutil
import tempfile
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.windows import Window
from shapely import STRtree, union_all
from shapely.geometry import box
from tqdm.auto import tqdm

from schoolvision import CLASSES
from schoolvision.data.plan import SceneLayout, block_splits, plan_chips, stable_int, window_split
from schoolvision.errors import UserError, check_range
from schoolvision.io import manifest
from schoolvision.io.atomic import write_text
from schoolvision.io.folders import ChipsFolder, check_inputs, prepare_output
from schoolvision.io.imagery import (
    ImageryOptions,
    ImagerySource,
    file_count,
    list_sources,
    open_source,
    parse_scale,
    read_mask,
    read_window,
    scenes_line,
    source_info,
    with_options,
)
from schoolvision.io.rasters import write_geotiff
from schoolvision.io.schools import POINT_BUFFER_M, parse_lonlat_columns, parse_where, read_schools
from schoolvision.io.tiles import TileOptions

SPLITS = ("train", "val", "test")
HARD_NEGATIVE = "hard_negative"
"""``view`` of the chips cut around the places of ``--negatives`` (the others: ``grid``, ``centred``)."""
MIN_CHIP_GROUND_M = 60.0
"""Chips narrower than this on the ground (chip size x GSD) get a warning: a school spans 50-150 m."""
SUGGESTED_CHIP_GROUND_M = 128.0
"""The ground width the warning's suggested ``--gsd`` gives a chip (1 m/px for 128 px chips)."""
OWN_FILES = (ChipsFolder.META, ChipsFolder.INDEX, ChipsFolder.SCHOOLS, *SPLITS)
"""What ``make_chips`` writes into its folder: a file of the user under these names is refused."""
CSV_COLUMNS = [
    "chip_id", "path", "label", "split", "scene", "row_off", "col_off", "minx", "miny", "maxx", "maxy",
    "crs", "school_fraction", "school_cover", "school_name", "view",
]


@dataclass
class ChipConfig:
    """Parameters of chip extraction; all of them are recorded in ``dataset.json``."""

    chip_size: int = 128
    stride: int | None = None  # pixels between grid windows; None = planned: chip_size // 2, less on a small area
    gsd: float | None = None  # metres per pixel; None = native GSD of the first source
    crs: str | None = None  # CRS for rasters without one (e.g. "EPSG:32636")
    bands: tuple[int, int, int] | None = None  # RGB band numbers (1-based) for non-RGB rasters
    scale: tuple[float, float] | None = None  # fixed (min, max) to 8 bits; None = per-scene 2-98 percentile stretch
    min_school_fraction: float = 0.5  # share of a school's footprint inside the chip for `school`
    min_chip_cover: float = 0.25  # or: share of the chip covered by school footprints
    point_buffer_m: float = POINT_BUFFER_M  # radius of the disc that stands for a school point
    schools_layer: str | None = None  # layer of a multi-layer schools file (GeoPackage, KML)
    schools_where: str | None = None  # attribute filter of the schools file, e.g. "amenity=school"
    lonlat_columns: tuple[str, str] | None = None  # (lon, lat) columns of a CSV schools file; None = by name
    centred_views: int = 4  # extra jittered windows centred on each school
    centred_splits: tuple[str, ...] = ("train",)  # splits that get the centred views
    jitter: float = 0.25  # max shift of centred views, as a share of chip_size
    negative_ratio: float | None = 3.0  # not_school per school chip in train; None = keep all
    eval_negative_ratio: float | None = None  # same for val/test; None = keep all
    val_scenes: tuple[str, ...] | None = None
    test_scenes: tuple[str, ...] | None = None
    block_size: float | None = None  # metres a split block's side (one or two scenes); None = planned (data.plan)
    block_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)  # train/val/test share of blocks
    max_nodata_fraction: float = 0.1  # chips with more masked (alpha, mask, nodata) or black pixels are skipped
    tile_scheme: str | None = None  # web-map tiles: "xyz" or "tms"; None = TMS if tilemapresource.xml (io.tiles)
    tile_pattern: str | None = None  # tile names, e.g. "{z}/{x}/{y}" or "OAM-{x}-{y}-{z}"; None = z-x-y or z/x/y
    zoom: int | None = None  # zoom level of a tile folder holding several; None = the finest
    separate_scenes: bool = False  # one scene per GeoTIFF, never a mosaic of adjacent tiles
    seed: int = 0

    def __post_init__(self) -> None:
        check_range("--chip-size", self.chip_size, minimum=32)
        check_range("--stride", self.stride, minimum=1)
        check_range("--gsd", self.gsd, above=0)
        check_range("--point-buffer", self.point_buffer_m, minimum=0)
        check_range("--negative-ratio", self.negative_ratio, above=0)
        check_range("eval_negative_ratio", self.eval_negative_ratio, above=0)
        for name in ("min_school_fraction", "min_chip_cover"):
            check_range(name, getattr(self, name), above=0, maximum=1)
        check_range("max_nodata_fraction", self.max_nodata_fraction, minimum=0, maximum=1)
        check_range("centred_views", self.centred_views, minimum=0)
        check_range("jitter", self.jitter, minimum=0, maximum=0.5)
        check_range("--block-size", self.block_size, above=0)
        if self.crs is not None:
            try:
                self.crs = CRS.from_user_input(self.crs).to_string()
            except CRSError:
                raise UserError(f"--crs {self.crs!r} is not a CRS; use e.g. EPSG:32636") from None
        if self.bands is not None:
            self.bands = tuple(int(b) for b in self.bands)
        self.scale = parse_scale(self.scale)
        self.lonlat_columns = parse_lonlat_columns(self.lonlat_columns)
        parse_where(self.schools_where)
        self.centred_splits = tuple(self.centred_splits)
        TileOptions.of(self)  # validates the tile options before any work
        for name in ("val_scenes", "test_scenes"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, tuple(value))


@dataclass
class ChipSummary:
    """What :func:`make_chips` wrote."""

    out_dir: Path
    counts: dict[str, dict[str, int]]
    skipped: dict[str, int]
    gsd: float
    chip_size: int
    scenes: dict[str, dict] = field(default_factory=dict)
    reused: bool = False
    warnings: list[str] = field(default_factory=list)  # one line each: scenes too small, splits without schools
    plan: dict = field(default_factory=dict)  # stride and split blocks used, and which were planned (data.plan)

    @property
    def n_chips(self) -> int:
        """Chips written, all splits and classes."""
        return sum(sum(c.values()) for c in self.counts.values())

    def __str__(self) -> str:
        lines = [f"{self.n_chips} chips of {self.chip_size} px at {self.gsd:g} m/px in {self.out_dir}"]
        if self.scenes:
            lines.append("  imagery: " + scenes_line([(name, m.get("files", m.get("tiles", 1)), m["width"] * self.gsd,
                                                       m["height"] * self.gsd) for name, m in self.scenes.items()]))
        if self.plan:
            planned = set(self.plan.get("chosen", ()))
            blocks = any(m.get("split") == "blocks" for m in self.scenes.values())
            lines.append(f"  stride {self.plan['stride']} px" + (" (planned)" if "stride" in planned else "")
                         + (f", split blocks of {self.plan['block_size_m']:g} m"
                            + (" (planned)" if "block_size" in planned else "") if blocks else ", split by scene"))
        for split in SPLITS:
            c = self.counts.get(split, {})
            n = sum(c.values())
            share = c.get("school", 0) / n if n else 0.0
            per_class = ", ".join(f"{k} {c.get(k, 0)}" for k in CLASSES)
            lines.append(f"  {split:5s}: {per_class} ({share:.0%} school)")
        lines.append("  skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())))
        scaled = [s["pixels"] for s in self.scenes.values() if s.get("pixels", {}).get("rule", "none") != "none"]
        if scaled:
            how = {"percentile": "per-scene 2-98 percentile stretch", "fixed": "fixed --scale"}
            rules = ", ".join(sorted({f"{p['dtype']} by {how.get(p['rule'], p['rule'])}" for p in scaled}))
            lines.append(f"  8-bit scaling of {len(scaled)} scene(s): {rules} (values in dataset.json)")
        return "\n".join(lines)


def make_chips(
    imagery: list[str | Path] | str | Path,
    schools: str | Path,
    out_dir: str | Path,
    config: ChipConfig | None = None,
    overwrite: bool = False,
    negatives: str | Path | None = None,
    negatives_where: str | None = None,
) -> ChipSummary:
    """Cut labelled, georeferenced chips and write a chips folder (chip GeoTIFFs, ``chips.csv``, ``dataset.json``).

    The folder is built beside ``out_dir`` and renamed at the end, so an interrupted run leaves
    nothing half-written. An ``out_dir`` holding the same dataset (same inputs and config) is
    reused; one holding anything else is refused unless ``overwrite``.

    Args:
        imagery: GeoTIFF files, folders of them, or XYZ tile folders (see :mod:`schoolvision.io.imagery`).
        schools: school Points or Polygons in any vector format and CRS (GeoJSON, GeoPackage ...) or a CSV
            table, read by :func:`~schoolvision.io.schools.read_schools` with the config's ``schools_layer``,
            ``schools_where`` and ``lonlat_columns`` before any imagery is read.
        out_dir: the chips folder to write.
        config: chip size, stride, GSD, labelling rule, sampling and split settings (defaults: ``ChipConfig()``).
        overwrite: replace an ``out_dir`` that holds anything but this very dataset.
        negatives: places known not to be schools (e.g. the rejected decisions of ``review import``), any
            file ``read_schools`` reads: one ``not_school`` chip centred on each (module docstring).
        negatives_where: attribute filter of the negatives file (``KEY=VALUE``, as ``schools_where``), e.g.
            ``label=not_school`` for the labels of ``review import``, whose schools are ``label=school``.

    Returns:
        What was written (or found up to date): chip counts per split and class, skipped windows,
        GSD, chip size and per-scene metadata.

    Raises:
        UserError: an imagery path, the schools or the negatives file is missing or unreadable, no school lies
            inside the imagery, a setting is invalid, or ``out_dir`` holds something else and
            ``overwrite`` is not set.
    """
    config = config or ChipConfig()
    out_dir = Path(out_dir)
    inputs = {"--imagery": [imagery] if isinstance(imagery, (str, Path)) else imagery, "--schools": schools}
    if negatives is not None:
        inputs["--negatives"] = negatives
    check_inputs(out_dir, inputs)  # before listing: an --out inside --imagery must not be read as imagery
    sources = list_sources([imagery] if isinstance(imagery, (str, Path)) else imagery, TileOptions.of(config))
    sources = with_options(sources, config.bands, config.crs, config.scale)  # every read: same bands, CRS, scale
    parse_where(negatives_where)
    fingerprint = _fingerprint(sources, Path(schools), config,
                               None if negatives is None else (Path(negatives), negatives_where))
    existing = ChipsFolder(out_dir)
    if prepare_output(out_dir, overwrite, create=False, clear=False, inputs=inputs, own_files=OWN_FILES,
                      message="output folder already holds a different dataset or other files; "
                              "pass --overwrite to replace it",
                      is_same=lambda _: not overwrite and _read_existing(existing).get("fingerprint") == fingerprint):
        return _summary_from_json(out_dir, _read_existing(existing), reused=True)
    footprints = read_schools(schools, config.point_buffer_m, layer=config.schools_layer, where=config.schools_where,
                              lonlat_columns=config.lonlat_columns)
    places = None if negatives is None else read_schools(negatives, point_buffer_m=None, where=negatives_where)
    infos = {s.name: source_info(s) for s in sources}
    _check_overlap(footprints, infos, schools)
    gsd = float(config.gsd) if config.gsd else float(infos[sources[0].name]["native_gsd"])
    note = small_chip_note(config.chip_size, gsd)
    if note:
        warnings.warn(note, stacklevel=2)  # before the long work: the user may stop and rerun with --gsd
    scene_split = _scene_splits([s.name for s in sources], config)
    plan = plan_chips([_layout(s, footprints, gsd, scene_split[s.name] == "blocks") for s in sources],
                      config.chip_size, gsd, config.stride, config.block_size, config.block_fractions, config.seed)

    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest.start(out_dir)
    # chips are cut into a hidden staging folder inside --out (a killed run's is removed by the next
    # run) and moved into place at the end, chips.csv and dataset.json last
    prefix, suffix = manifest.temporary_affixes(out_dir / "chips")
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=out_dir))
    manifest.start(tmp)
    try:
        rows: list[dict] = []
        skipped: Counter = Counter()
        scenes: dict[str, dict] = {}
        empty: dict[str, str] = {}
        for source in sources:
            scene_rows, scene_meta, why = _chip_scene(source, footprints, scene_split[source.name], gsd, config, plan,
                                                      tmp, skipped, places)
            rows.extend(scene_rows)
            scenes[source.name] = {**scene_meta, "pixels": infos[source.name]["pixels"]}
            if why:
                empty[source.name] = why
        notes = [_empty_note(name, scenes[name], gsd, why) for name, why in empty.items()]
        if not rows:
            raise UserError("no chip cut from the imagery: " + "; ".join(notes))
        counts = {s: {c: sum(1 for r in rows if r["split"] == s and r["label"] == c) for c in CLASSES} for s in SPLITS}
        notes += _split_notes(rows, scene_split, plan)
        folder = ChipsFolder(tmp)
        folder.write_index(_index_csv(rows))
        write_text(tmp / "schools.geojson", footprints.to_json(drop_id=True, to_wgs84=True))
        meta = {
            "chip_size": config.chip_size,
            "gsd": gsd,
            "stride": plan.stride,
            "block_size_m": plan.block_m if "blocks" in scene_split.values() else None,
            "plan": plan.record(),
            "seed": config.seed,
            "classes": list(CLASSES),
            "counts": counts,
            "skipped": dict(sorted(skipped.items())),
            "scenes": scenes,
            "imagery": ImageryOptions(config.bands, config.crs, config.scale).record(),
            "labelling": {
                "rule": "school if >= min_school_fraction of a school footprint is inside the chip or footprints "
                        "cover >= min_chip_cover of the chip; not_school if no footprint touches it; else skipped",
                "min_school_fraction": config.min_school_fraction,
                "min_chip_cover": config.min_chip_cover,
                "point_buffer_m": config.point_buffer_m,
                "max_nodata_fraction": config.max_nodata_fraction,
                "masked": "chips with more than max_nodata_fraction of their pixels under the imagery's mask "
                          "(alpha, internal mask, nodata) are skipped as 'masked', with more masked or black "
                          "pixels together as 'nodata_or_black'; masked pixels of kept chips are written as 0",
                "negative_ratio": config.negative_ratio,
                "eval_negative_ratio": config.eval_negative_ratio,
            },
            "schools": "schools.geojson",
            "schools_source": str(Path(schools).resolve()),
            "schools_read": footprints.attrs.get("source", {}),
            "config": _config_dict(config),
            "fingerprint": fingerprint,
        }
        if places is not None:  # provenance of the hard negatives (absent without --negatives)
            meta["negatives"] = {
                "source": str(Path(negatives).resolve()), "where": negatives_where,
                "read": places.attrs.get("source", {}),
                "places": len(places), "chips": sum(1 for r in rows if r["view"] == HARD_NEGATIVE),
                "rule": "one not_school chip centred on each place (view hard_negative in chips.csv), in the "
                        "split the place lies in; left out when it would touch a school footprint",
            }
        folder.write_meta(meta)
        manifest.move_into(tmp, out_dir, last=(ChipsFolder.INDEX, ChipsFolder.META))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            manifest.discard_if_empty(out_dir)  # a failed run leaves no new folder behind
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    summary = _summary_from_json(out_dir, meta)
    summary.warnings = notes
    return summary


def small_chip_note(chip_size: int, gsd: float) -> str | None:
    """One warning line when chips would cover less than ``MIN_CHIP_GROUND_M``, suggesting a ``--gsd``.

    A school compound spans 50-150 m: a chip much smaller than that (128 px at the 0.13 m of drone
    imagery: 17 m) sees a roof, never a school. The suggested GSD makes the chip ``SUGGESTED_CHIP_GROUND_M`` wide.
    """
    ground = chip_size * gsd
    if ground >= MIN_CHIP_GROUND_M:
        return None
    better = float(f"{SUGGESTED_CHIP_GROUND_M / chip_size:.2g}")
    return (f"chips of {chip_size} px at {gsd:g} m/px cover {ground:.0f} m, less than {MIN_CHIP_GROUND_M:g} m "
            f"(a school compound spans 50-150 m); pass --gsd {better:g} for chips of "
            f"{chip_size * better:.0f} m (or a larger --chip-size)")


def _layout(source: ImagerySource, footprints, gsd: float, by_blocks: bool) -> SceneLayout:
    """What the plan reads of a scene at ``gsd``: its size in pixels and its schools' centres."""
    with open_source(source, gsd=gsd) as ds:
        schools = footprints.to_crs(ds.crs)
        schools = schools[schools.intersects(box(*ds.bounds))]
        inv = ~ds.transform
        centres = np.array([(inv @ (c.x, c.y))[::-1] for c in schools.geometry.centroid], float).reshape(-1, 2)
        return SceneLayout(source.name, ds.height, ds.width, centres, by_blocks)


def _chip_scene(source: ImagerySource, footprints, split_rule: str, gsd: float, config: ChipConfig, plan,
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
        rows = []
        for r in tqdm(chosen, desc=f"chips {source.name}", unit="chip", leave=False, disable=not chosen):
            window = Window(r["col_off"], r["row_off"], cs, cs)
            arr = read_window(ds, window, source.path)
            valid = read_mask(ds, window, source.path)
            reason = _empty_reason(arr, valid, config.max_nodata_fraction)
            if reason:
                mine[reason] += 1
                continue
            arr[:, ~valid] = 0  # what the mask hides is nodata in the chip too
            chip_id = f"{source.name}_r{r['row_off']:05d}_c{r['col_off']:05d}"
            rel = f"{r['split']}/{r['label']}/{chip_id}.tif"
            write_geotiff(out / rel, arr.astype(np.uint8, copy=False), crs,
                          ds.transform @ Affine.translation(r["col_off"], r["row_off"]),
                          tiled=False, overviews=False)
            rows.append({"chip_id": chip_id, "path": rel, "scene": source.name, "crs": crs_text, **r})
        meta = {"path": str(Path(source.path).resolve()), "crs": crs_text, "split": split_rule,
                "width": ds.width, "height": ds.height, "bounds": list(ds.bounds), "kind": source.kind,
                "files": file_count(source)}
        if source.parts:  # a mosaic of GeoTIFF tiles: how many files it joins
            meta["tiles"] = len(source.parts)
        why = None if rows else _no_chip_reason(ds.height, ds.width, cs, len(schools), mine)
    skipped.update(mine)
    return rows, meta, why


def _no_chip_reason(height: int, width: int, cs: int, n_schools: int, skipped: Counter) -> str:
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


def _empty_note(name: str, meta: dict, gsd: float, why: str) -> str:
    """One line naming a scene that gave no chip, its size in metres and why."""
    return f"{name}: scene of {meta['width'] * gsd:,.0f} x {meta['height'] * gsd:,.0f} m gave no chip: {why}"


def _split_notes(rows: list[dict], scene_split: dict[str, str], plan) -> list[str]:
    """One warning line per evaluation split without a school chip.

    A val or test split without schools gives no recall, F1 or threshold: the line says where the
    school chips are and which option moves them.
    """
    where: dict[str, Counter] = {s: Counter() for s in SPLITS}
    for r in rows:
        if r["label"] == "school":
            where[r["split"]][r["scene"]] += 1
    held = "; ".join(f"{s}: " + ", ".join(f"{n} ({k})" for n, k in sorted(c.items())) for s, c in where.items() if c)
    by_blocks = any(rule == "blocks" for rule in scene_split.values())
    fix = plan.fix() if by_blocks else "--val-scenes / --test-scenes choose the scenes"
    notes = []
    for split in ("val", "test"):
        if not where[split]:
            notes.append(f"split {split} holds no school chip, so its metrics are undefined; school chips by split "
                         f"and scene: {held or 'none'}" + (f" ({fix})" if held else ""))
    return notes


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
    seen: dict[tuple[int, int], str] = {}
    for row in range(0, h - cs + 1, stride):
        for col in range(0, w - cs + 1, stride):
            seen[(row, col)] = "grid"
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


def _scene_splits(names: list[str], config: ChipConfig) -> dict[str, str]:
    """Split per scene, or 'blocks' for scenes split by spatial blocks."""
    names = sorted(names)
    for opt in ("val_scenes", "test_scenes"):
        unknown = sorted(set(getattr(config, opt) or ()) - set(names))
        if unknown:
            raise UserError(f"--{opt.replace('_', '-')} names unknown scenes {unknown}; scenes are {names}")
    if config.test_scenes is not None or config.val_scenes is not None:
        test = set(config.test_scenes or ())
        val = set(config.val_scenes or ())
        return {n: "test" if n in test else "val" if n in val else "train" for n in names}
    if len(names) >= 3:
        return {n: "test" if n == names[-1] else "val" if n == names[-2] else "train" for n in names}
    return dict.fromkeys(names, "blocks")


def _check_overlap(footprints, infos: dict[str, dict], schools_path) -> None:
    """Refuse school footprints that lie entirely outside all imagery, naming both extents (EPSG:4326)."""
    boxes = [box(*i["bounds_4326"]) for i in infos.values()]
    if any(footprints.intersects(b).any() for b in boxes):
        return
    lb = footprints.total_bounds
    ib = np.array([i["bounds_4326"] for i in infos.values()])
    img = (ib[:, 0].min(), ib[:, 1].min(), ib[:, 2].max(), ib[:, 3].max())
    fmt = lambda b: "(" + ", ".join(f"{v:.5f}" for v in b) + ")"  # noqa: E731
    raise UserError(f"no school lies inside the imagery: schools cover lon/lat {fmt(lb)}, imagery covers "
                    f"{fmt(img)} (EPSG:4326 west, south, east, north)", schools_path)


def _index_csv(rows: list[dict]) -> str:
    """``chips.csv`` text: one row per chip, sorted by split, label and chip id."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in sorted(rows, key=lambda r: (SPLITS.index(r["split"]), r["label"], r["chip_id"])):
        writer.writerow(r)
    return buf.getvalue()


def _config_dict(config: ChipConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def _fingerprint(sources: list[ImagerySource], schools: Path, config: ChipConfig,
                 negatives: tuple[Path, str | None] | None = None) -> str:
    """Hash of the inputs' contents and the config: same fingerprint = same dataset.

    Content, not modification times, so regenerating identical demo files keeps the chips valid;
    files over 256 MiB are identified by path, size and mtime to keep this cheap.
    """
    settings = {k: v for k, v in _config_dict(config).items() if not (k == "scale" and v is None)}  # as before --scale
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    files = [Path(t[3]) for s in sources for t in s.tiles] + [Path(s.path) for s in sources if s.kind == "raster"]
    files += [Path(p) for s in sources for p in s.parts]  # the GeoTIFF tiles of mosaics
    if negatives is not None:  # (file, filter), marked so that it never reads as one more imagery file
        path, where = negatives
        h.update(f"negatives:{where}:".encode() + (hashlib.sha256(path.read_bytes()).digest() if path.is_file()
                                                   else b""))
    for f in [*files, schools]:
        if not f.is_file():
            continue
        st = f.stat()
        if st.st_size > 256 * 2**20:
            h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        else:
            h.update(f.name.encode() + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def _read_existing(folder: ChipsFolder) -> dict:
    """The ``dataset.json`` of an existing folder; ``{}`` when it has none or an unreadable one (it is replaced)."""
    try:
        return folder.read_meta()
    except UserError:
        return {}


def _summary_from_json(out_dir: Path, meta: dict, reused: bool = False) -> ChipSummary:
    return ChipSummary(out_dir=out_dir, counts=meta["counts"], skipped=meta.get("skipped", {}), gsd=meta["gsd"],
                       chip_size=meta["chip_size"], scenes=meta.get("scenes", {}), reused=reused,
                       plan=meta.get("plan", {}))

