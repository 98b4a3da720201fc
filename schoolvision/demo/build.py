"""Writing a demo folder: scenes, school footprints, look-alikes, roofs, the registry and ``demo.json``.

The same parameters regenerate byte-identical files, so the demo can stand in for downloaded
imagery in tests and in the book.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from tqdm.auto import tqdm

from schoolvision.demo.regions import Region, TownConfig, region_style
from schoolvision.demo.registry import STATUSES, RegistryRules, make_registry
from schoolvision.demo.towns import Town, generate_town
from schoolvision.errors import UserError, check_range
from schoolvision.io.atomic import atomic_path, write_text
from schoolvision.io.folders import DemoFolder, prepare_output
from schoolvision.io.rasters import write_geotiff

GENERATOR = "schoolvision.demo"
"""``generator`` in ``demo.json``: the module that wrote the first demos, kept so that the same seed still
writes the same bytes (and an existing demo folder is recognised as the same demo)."""


@dataclass
class DemoInfo:
    """What :func:`make_demo` wrote."""

    out_dir: Path
    scenes: list[Path]
    schools: Path
    landmarks: Path
    meta: Path
    n_schools: dict[str, int]
    n_landmarks: dict[str, int]
    buildings: Path | None = None  # every roof drawn (``kind``, ``scene``): a footprint mask for ``scan --mask``
    registry: Path | None = None  # the imperfect school list (schoolvision.demo.registry)
    registry_truth: Path | None = None  # what each registry row (and each missing school) really is


def _params(towns: int, seed: int, size: int, gsd: float, config: TownConfig) -> dict:
    """Everything that determines the output, as plain JSON values (compared on re-runs)."""
    cfg = json.loads(json.dumps(asdict(config)))
    return {"towns": int(towns), "seed": int(seed), "size": int(size), "gsd": float(gsd), "config": cfg}


def _same_demo(out: Path, params: dict) -> bool:
    """Whether ``out/demo.json`` records these very parameters (then re-running rewrites the same files)."""
    try:
        return DemoFolder(out).read_meta().get("parameters") == params
    except UserError:  # an unreadable demo.json: not this demo
        return False


def make_demo(out_dir, towns: int = 6, seed: int = 0, size: int = 1536, gsd: float = 1.0, overwrite: bool = False,
              config: TownConfig | None = None, region: str = "rural",
              registry_missing: float = RegistryRules.missing, registry_displaced: float = RegistryRules.displaced,
              registry_false: int = RegistryRules.false) -> DemoInfo:
    """Write ``towns`` synthetic scenes, their school footprints and hard negatives to ``out_dir``.

    The same parameters regenerate byte-identical files, so the demo can stand in for downloaded
    imagery in tests and in the book.

    Args:
        out_dir: folder to write ``scenes/town_NN.tif``, ``schools.geojson``, ``landmarks.geojson``,
            ``buildings.geojson`` (the footprint of every roof drawn, with its ``kind``: house, school
            or the hard negative's kind), ``registry.csv``, ``registry_truth.csv`` and ``demo.json``
            (the parameters) into.
        towns: number of towns, one scene each.
        seed: seeds every town (town ``i`` draws from ``(seed, i)``).
        size: scene width and height in pixels (at least 256).
        gsd: ground sampling distance in metres per pixel.
        overwrite: replace a non-empty folder that is not this very demo.
        config: how towns are drawn (defaults: ``TownConfig()``).
        region: the towns' look, a key of :data:`REGIONS` (``rural``: the original demo).
        registry_missing: share of each town's schools left out of ``registry.csv``.
        registry_displaced: share of the listed schools placed 100-500 m off.
        registry_false: look-alikes per town listed as schools. ``registry_truth.csv`` records what
            each row is (rules: :mod:`schoolvision.demo.registry`).

    Returns:
        The written paths and the number of schools and hard negatives per town.

    Raises:
        UserError: a parameter is out of range, or ``out_dir`` holds something else (or is a file)
            and ``overwrite`` is not set.
    """
    out = Path(out_dir)
    check_range("--towns", towns, minimum=1)
    check_range("--size", size, minimum=256)
    check_range("--gsd", gsd, above=0)
    config = config or TownConfig()
    reg = region_style(region)
    rules = RegistryRules(missing=registry_missing, displaced=registry_displaced, false=registry_false)
    params = _params(towns, seed, size, gsd, config)
    params |= json.loads(json.dumps({"region": region, "registry": asdict(rules)}))
    prepare_output(out, overwrite, create=False, own_files=DemoFolder.OWN_FILES,
                   is_same=lambda o: _same_demo(o, params),
                   message="folder already holds something else; pass --overwrite (overwrite=True) or another --out")
    drawn = [_write_town(out, generate_town(seed, size, gsd, index=i, config=config, region=region), reg, size, gsd)
             for i in tqdm(range(towns), desc="towns", leave=False)]
    schools, landmarks = _write_layers(out, drawn)
    registry, truth = make_registry(schools, landmarks, [d.frame for d in drawn], seed=seed, rules=rules,
                                    closest=reg.closest, stream=reg.stream)
    write_text(out / "registry.csv", registry.to_csv(index=False, lineterminator="\n"))
    write_text(out / "registry_truth.csv", truth.to_csv(index=False, lineterminator="\n"))
    per_town = [d.record for d in drawn]
    for t in per_town:
        t["registry"] = {s: int(((truth["scene"] == t["name"]) & (truth["status"] == s)).sum()) for s in STATUSES}
    meta = DemoFolder(out).write_meta({
        "parameters": params,
        "generator": GENERATOR,
        "schools": "schools.geojson",
        "landmarks": "landmarks.geojson",
        "buildings": "buildings.geojson",
        "registry": "registry.csv",
        "registry_truth": "registry_truth.csv",
        "region": region,
        "towns": per_town,
        "total_schools": int(len(schools)),
    })
    return DemoInfo(out, [out / d.record["path"] for d in drawn], out / "schools.geojson", out / "landmarks.geojson",
                    meta, {t["name"]: t["schools"] for t in per_town},
                    {t["name"]: sum(t["landmarks"].values()) for t in per_town}, out / "buildings.geojson",
                    out / "registry.csv", out / "registry_truth.csv")


@dataclass
class _DrawnTown:
    """One town as written: its layers in WGS84, its frame for the registry and its ``demo.json`` record."""

    schools: gpd.GeoDataFrame
    landmarks: gpd.GeoDataFrame
    roofs: gpd.GeoDataFrame
    frame: dict
    record: dict


def _write_town(out: Path, town: Town, reg: Region, size: int, gsd: float) -> _DrawnTown:
    """Write the town's scene; return its schools, look-alikes and roofs in WGS84 and its records."""
    write_geotiff(out / "scenes" / f"{town.name}.tif", town.image, town.crs, town.transform, overviews=True,
                  photometric="RGB")
    schools = gpd.GeoDataFrame(
        {"name": [f"School {town.name} #{k + 1}" for k in range(len(town.schools))], "scene": town.name},
        geometry=town.schools, crs=town.crs,
    ).to_crs("EPSG:4326")
    landmarks = gpd.GeoDataFrame(
        {"kind": [lm.kind for lm in town.landmarks],
         "name": [f"{lm.kind} {town.name} #{k + 1}" for k, lm in enumerate(town.landmarks)], "scene": town.name},
        geometry=[lm.polygon for lm in town.landmarks], crs=town.crs,
    ).to_crs("EPSG:4326")
    roofs = gpd.GeoDataFrame({"kind": [k for k, _ in town.buildings], "scene": town.name},
                             geometry=[g for _, g in town.buildings], crs=town.crs).to_crs("EPSG:4326")
    kinds = {k: sum(lm.kind == k for lm in town.landmarks) for k in reg.negative_kinds}
    left, top = town.transform.c, town.transform.f
    frame = {"name": town.name, "crs": town.crs, "bounds": (left, top - size * gsd, left + size * gsd, top)}
    record = {"name": town.name, "path": f"scenes/{town.name}.tif", "crs": town.crs, "place": town.place,
              "gsd": gsd, "size": size, "schools": len(town.schools), "landmarks": kinds, "style": town.style}
    return _DrawnTown(schools, landmarks, roofs, frame, record)


def _rounded(frames: list[gpd.GeoDataFrame]) -> gpd.GeoDataFrame:
    """The towns' layers as one WGS84 frame, coordinates rounded to 7 decimals (about 1 cm)."""
    gdf = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs="EPSG:4326")
    gdf["geometry"] = shapely.transform(gdf.geometry.values, lambda xy: np.round(xy, 7))
    return gdf


def _write_layers(out: Path, drawn: list[_DrawnTown]) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """Write ``schools``, ``landmarks`` and ``buildings.geojson``; return the schools and landmarks."""
    schools = _rounded([d.schools for d in drawn])
    landmarks = _rounded([d.landmarks for d in drawn])
    buildings = _rounded([d.roofs for d in drawn])
    for gdf, name in ((schools, "schools"), (landmarks, "landmarks"), (buildings, "buildings")):
        # not io.vectors.write_vectors: it lets GDAL name the collection after the random temporary file
        with atomic_path(out / f"{name}.geojson") as tmp:
            gdf.to_file(tmp, driver="GeoJSON", layer=name)
    return schools, landmarks
