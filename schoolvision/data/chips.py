"""Labelled chips from imagery and school footprints, split spatially.

Labelling rule (``ChipConfig``): a chip is ``school`` when it holds at least
``min_school_fraction`` of some school's footprint, or school footprints cover at least
``min_chip_cover`` of the chip (large compounds never fit in one chip); ``not_school`` when it
touches no school at all; anything in between (a sliver of a school) is ambiguous and left out.

Windows come from the regular grid a scan uses (``stride``, the last window shifted in to end on the
border: :mod:`schoolvision.data.windows`); in the splits listed in ``centred_splits`` (train
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
import shutil
import tempfile
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from shapely.geometry import box

from schoolvision import CLASSES
from schoolvision.data.chip_config import HARD_NEGATIVE, SPLITS, ChipConfig
from schoolvision.data.plan import ChipPlan, plan_chips
from schoolvision.data.scenes import chip_scene, scene_layout
from schoolvision.errors import UserError
from schoolvision.io import manifest
from schoolvision.io.atomic import write_text
from schoolvision.io.folders import ChipsFolder, check_inputs, prepare_output
from schoolvision.io.imagery import (
    ImageryOptions,
    ImagerySource,
    list_sources,
    scenes_line,
    source_info,
    with_options,
)
from schoolvision.io.schools import parse_where, read_schools
from schoolvision.io.tiles import TileOptions

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


__all__ = ["CSV_COLUMNS", "HARD_NEGATIVE", "MIN_CHIP_GROUND_M", "OWN_FILES", "SPLITS", "SUGGESTED_CHIP_GROUND_M",
           "ChipConfig", "ChipSummary", "make_chips", "small_chip_note"]


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
    if places is not None and negatives_where is None and _has_school_labels(negatives):
        raise UserError("the negatives file has places labelled 'school' (review import's labels?): every one would be "
                        "a not_school chip; run schoolvision chips with --negatives-where label=not_school", negatives)
    infos = {s.name: source_info(s) for s in sources}
    _check_overlap(footprints, infos, schools)
    gsd = float(config.gsd) if config.gsd else float(infos[sources[0].name]["native_gsd"])
    note = small_chip_note(config.chip_size, gsd)
    if note:
        warnings.warn(note, stacklevel=2)  # before the long work: the user may stop and rerun with --gsd
    scene_split = _scene_splits([s.name for s in sources], config)
    plan = plan_chips([scene_layout(s, footprints, gsd, scene_split[s.name] == "blocks") for s in sources],
                      config.chip_size, gsd, config.stride, config.block_size, config.block_fractions, config.seed)

    job = _ChipJob(sources, infos, footprints, places, scene_split, plan, gsd, config)
    meta, notes = _write_folder(out_dir, job, lambda cut: _dataset_meta(job, cut, schools, fingerprint,
                                                                         negatives, negatives_where))
    for note in notes:
        warnings.warn(note, stacklevel=2)
    summary = _summary_from_json(out_dir, meta)
    summary.warnings = notes
    return summary


@dataclass
class _ChipJob:
    """What every scene of one ``make_chips`` call shares: the inputs as read, the splits and the plan."""

    sources: list[ImagerySource]
    infos: dict[str, dict]
    footprints: Any  # school footprints (GeoDataFrame)
    places: Any  # hard-negative places (GeoDataFrame) or None
    scene_split: dict[str, str]
    plan: ChipPlan
    gsd: float
    config: ChipConfig


def _cut_scenes(job: _ChipJob, tmp: Path) -> tuple[list[dict], Counter, dict[str, dict], list[str]]:
    """Cut every scene into ``tmp``: the chips' rows, skipped windows, per-scene metadata and notes.

    Raises:
        UserError: no scene gave a chip (the notes say why for each).
    """
    rows: list[dict] = []
    skipped: Counter = Counter()
    scenes: dict[str, dict] = {}
    empty: dict[str, str] = {}
    for source in job.sources:
        scene_rows, scene_meta, why = chip_scene(source, job.footprints, job.scene_split[source.name], job.gsd,
                                                 job.config, job.plan, tmp, skipped, job.places)
        rows.extend(scene_rows)
        scenes[source.name] = {**scene_meta, "pixels": job.infos[source.name]["pixels"]}
        if why:
            empty[source.name] = why
    notes = [_empty_note(name, scenes[name], job.gsd, why) for name, why in empty.items()]
    if not rows:
        raise UserError("no chip cut from the imagery: " + "; ".join(notes))
    return rows, skipped, scenes, notes + _split_notes(rows, job.scene_split, job.plan)


def _write_folder(out_dir: Path, job: _ChipJob, make_meta) -> tuple[dict, list[str]]:
    """Cut the chips into a staging folder inside ``out_dir``, then move them into place, index and meta last.

    ``make_meta(cut)`` gives ``dataset.json`` from what :func:`_cut_scenes` returned. A killed run's
    staging folder is removed by the next run; a failed run leaves no new folder behind.
    """
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest.start(out_dir)
    prefix, suffix = manifest.temporary_affixes(out_dir / "chips")
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=out_dir))
    manifest.start(tmp)
    try:
        cut = _cut_scenes(job, tmp)
        folder = ChipsFolder(tmp)
        folder.write_index(_index_csv(cut[0]))
        write_text(tmp / "schools.geojson", job.footprints.to_json(drop_id=True, to_wgs84=True))
        meta = make_meta(cut)
        folder.write_meta(meta)
        manifest.move_into(tmp, out_dir, last=(ChipsFolder.INDEX, ChipsFolder.META))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            manifest.discard_if_empty(out_dir)
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return meta, cut[3]


def _dataset_meta(job: _ChipJob, cut: tuple, schools: str | Path, fingerprint: str, negatives: str | Path | None,
                  negatives_where: str | None) -> dict:
    """``dataset.json``: sizes, plan, counts, scenes, the labelling rule, provenance and the fingerprint."""
    rows, skipped, scenes, _ = cut
    config, plan, footprints, places, gsd = job.config, job.plan, job.footprints, job.places, job.gsd
    counts = {s: {c: sum(1 for r in rows if r["split"] == s and r["label"] == c) for c in CLASSES} for s in SPLITS}
    meta = {
        "chip_size": config.chip_size,
        "gsd": gsd,
        "stride": plan.stride,
        "block_size_m": plan.block_m if "blocks" in job.scene_split.values() else None,
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
    return meta


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


def _has_school_labels(path: str | Path) -> bool:
    """Whether a negatives file holds places labelled ``label=school`` (``review import``'s labels file)."""
    try:
        return len(read_schools(path, point_buffer_m=None, where="label=school")) > 0
    except UserError:  # no label column, or no such place
        return False


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

