"""``schoolvision cluster`` as a library call: features -> clusters -> tables, vectors and projector.

:func:`cluster_chips` reads (or extracts) the features, clusters them with
:mod:`schoolvision.cluster.algorithms` and writes every output that is data. Figures are the
caller's: the command (or the chapter) draws them from the returned :class:`ClusterReport`, which
also carries what they need from disk (the gallery chips and their heatmaps); the readers for the
rest (scene previews, heatmap folders) are here too, so the figures read no files themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import torch
from PIL import Image
from rasterio.coords import BoundingBox
from rasterio.crs import CRS
from shapely.geometry import box

from schoolvision.cluster.algorithms import ClusterConfig, Clustering, cluster_features, nearest_to_centre
from schoolvision.cluster.embeddings import VIEWS, FeatureConfig, load_features, view_mask
from schoolvision.cluster.projector import write_projector
from schoolvision.data.dataset import ChipDataset
from schoolvision.data.sources import chips_scenes
from schoolvision.errors import UserError, check_range
from schoolvision.explain.methods import explain_batch
from schoolvision.io.atomic import atomic_path
from schoolvision.io.folders import ChipsFolder, ClusterFolder, prepare_output
from schoolvision.io.imagery import ImagerySource, open_source
from schoolvision.io.vectors import write_vectors
from schoolvision.model.checkpoint import load_classifier
from schoolvision.model.device import resolve_device
from schoolvision.train.novelty import optional_summary


@dataclass
class ClusterRunConfig:
    """``schoolvision cluster``: which run and chips, which subset, how to cluster, where to write."""

    run: Path
    chips_dir: Path
    out_dir: Path
    subset: str = "predicted-school"
    split: str = "all"
    view: str = "all"  # chips.csv view: all, grid, or centred (schools mid-chip: framing cannot drive clusters)
    clustering: ClusterConfig = field(default_factory=ClusterConfig)
    device: str = "auto"
    batch_size: int = 64
    cache_dir: Path | None = None
    cams_dir: Path | None = None  # heatmap GeoTIFFs <chip_id>.tif for the gallery (e.g. explain output)
    gradcam: bool = True  # without cams_dir: Grad-CAM of the gallery chips, computed here
    gallery_size: int = 8
    overwrite: bool = False
    gallery: bool = True  # read the gallery chips and their heatmaps into the report (for the gallery figure)
    projector: bool = True
    runtime: str = "auto"  # feature extraction (see schoolvision.model.runtime); Grad-CAM stays in torch

    def __post_init__(self) -> None:
        check_range("--batch-size", self.batch_size, minimum=1)
        check_range("gallery_size", self.gallery_size, minimum=1)
        if self.view not in VIEWS:
            raise UserError(f"unknown --view {self.view!r}; use one of {', '.join(VIEWS)}")


@dataclass
class ClusterReport:
    """What ``cluster_chips`` computed and wrote."""

    table: pd.DataFrame  # clusters.csv
    result: Clustering
    summary: dict
    out_dir: Path
    thumbnails: np.ndarray
    vectors: np.ndarray
    cams: dict[str, np.ndarray] = field(default_factory=dict)  # gallery heatmaps by chip id
    gallery: dict[str, np.ndarray] = field(default_factory=dict)  # gallery chips (H, W, 3) uint8 by chip id


CLUSTER_COLUMNS = ["chip_id", "path", "cluster", "distance", "label", "prediction", "prob", "scene", "split"]


def cluster_chips(
    config: ClusterRunConfig,
    *,
    progress: bool = True,
    save_figures: Callable[[ClusterReport], Iterable[Path]] | None = None,
) -> ClusterReport:
    """Extract (or load cached) features, cluster them and write the outputs into ``config.out_dir``.

    Writes ``clusters.csv``, ``k_selection.csv``, ``clusters.gpkg``, ``clusters.geojson``,
    ``projector/`` and ``summary.json``. Figures are drawn by the caller: ``save_figures`` is called
    with the report before ``summary.json`` is written, so the summary lists the files it saved.
    Optional outputs of an earlier run into the folder (figures, projector) that this run did not
    write again are removed.

    Args:
        config: the run, chips, subset, clustering settings and output folder.
        progress: show a progress bar while features are extracted.
        save_figures: draws and saves the figures into ``report.out_dir``; returns their paths.

    Returns:
        The clusters table, the clustering result, the summary and the features, plus the gallery
        chips and their heatmaps when ``config.gallery``.

    Raises:
        UserError: the output folder is not empty without ``config.overwrite``; the checkpoint or
            ``chips.csv`` is missing; fewer than 3 chips are in the subset; the features cannot be
            clustered (identical, not finite, a ``k`` that does not fit).
    """
    out = Path(config.out_dir)
    prepare_output(out, config.overwrite, create=False,
                   inputs={"--run": config.run, "--chips": config.chips_dir, "--cams": config.cams_dir},
                   message="output folder is not empty; pass --overwrite (overwrite=True) or choose another --out")
    feats = load_features(
        FeatureConfig(config.run, config.chips_dir, config.split, config.subset, config.batch_size, config.device,
                      config.cache_dir, runtime=config.runtime),
        progress=progress,
    )
    feats = feats.select(view_mask(feats.frame, config.view))
    if len(feats.frame) < 3:
        view = "" if config.view == "all" else f" (view {config.view})"
        raise UserError(
            f"only {len(feats.frame)} chips in subset {config.subset!r} of split {config.split!r}{view}; "
            "use --split all or --subset all", Path(config.chips_dir) / "chips.csv",
        )
    result = cluster_features(feats.vectors, config.clustering)
    table = feats.frame.copy()
    table["cluster"] = result.labels
    table["distance"] = np.round(result.distances, 6)
    novelty = chip_novelty(config.run, feats.vectors)
    if novelty is not None:  # how unlike the training chips each chip is (train.novelty): 0-100
        table["novelty"] = novelty
    table = table[CLUSTER_COLUMNS + [c for c in table.columns if c not in CLUSTER_COLUMNS]]
    _write_tables(out, table, result)
    summary = {
        **result.summary(),
        "subset": config.subset,
        "split": config.split,
        "view": config.view,
        "run": str(config.run),
        "chips_dir": str(config.chips_dir),
        "features_key": feats.key,
        "feature_dim": int(feats.vectors.shape[1]),
        "config": asdict(config.clustering),
    }
    if novelty is not None:
        summary["novelty_median_by_cluster"] = {str(k): round(float(v), 1)
                                                for k, v in table.groupby("cluster")["novelty"].median().items()}
    if config.projector:
        columns = ["chip_id", "cluster", "label", "prediction", "scene", "split"]
        meta = table[columns].assign(prob=table["prob"].round(3))
        write_projector(out / "projector", feats.vectors, meta, feats.thumbnails)
    report = ClusterReport(table, result, summary, out, feats.thumbnails, feats.vectors)
    if config.gallery and result.k > 0:
        _add_gallery(report, config)
        summary["gallery_cams"] = len(report.cams)
    if save_figures is not None:
        summary["figures"] = [Path(p).name for p in save_figures(report)]
    ClusterFolder(out).write_summary(summary)  # an earlier run's maps and projector: removed by prepare_output
    return report


def _write_tables(out: Path, table, result: Clustering) -> None:
    """``clusters.csv``, ``k_selection.csv`` and the clusters as vectors (``clusters.gpkg``, ``.geojson``)."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "clusters.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out / "k_selection.csv") as tmp:
        result.k_selection.round(6).to_csv(tmp, index=False)
    write_cluster_vectors(table, out / "clusters.gpkg", out / "clusters.geojson")


def _add_gallery(report: ClusterReport, config: ClusterRunConfig) -> None:
    """The chips nearest each cluster's centre, and their heat maps (read from ``cams_dir`` or grad-CAM)."""
    table = report.table
    rows = table.iloc[np.concatenate(list(nearest_to_centre(report.result, config.gallery_size, table).values()))]
    ids = rows["chip_id"].astype(str)
    report.gallery = {cid: read_chip_rgb(Path(config.chips_dir) / p) for cid, p in zip(ids, rows["path"])}
    if config.cams_dir:
        report.cams = read_cams(config.cams_dir, ids)
    elif config.gradcam:
        report.cams = gallery_cams(config.run, config.chips_dir, ids, config.device)


def chip_novelty(run, vectors: np.ndarray) -> np.ndarray | None:
    """The novelty percentile of chip embeddings under the run's summary; None when it has none (or a stale one)."""
    summary = optional_summary(run)
    return None if summary is None else np.round(summary.percentile(vectors), 2)


def recluster_view(report: ClusterReport, view: str,
                   clustering: ClusterConfig) -> tuple[pd.DataFrame, Clustering, dict[str, np.ndarray]]:
    """Cluster the report's chips of one ``view`` again, from its features in memory; nothing is written.

    Cheap (no model pass): the way to check whether the clusters of every chip follow chip framing, by
    clustering the centred views alone (``view="centred"``, see :data:`~schoolvision.cluster.embeddings.VIEWS`).

    Returns:
        (the view's rows of ``report.table`` with their new ``cluster``, the clustering, chip id -> thumbnail
        for :func:`schoolvision.plotting.cluster.cluster_gallery`).

    Raises:
        UserError: fewer than 3 chips of that view (e.g. centred views of a split that has none).
    """
    mask = view_mask(report.table, view)
    if mask.sum() < 3:
        raise UserError(f"only {int(mask.sum())} chips of view {view!r} among the clustered chips")
    result = cluster_features(report.vectors[mask], clustering, warn=False)
    table = report.table[mask].reset_index(drop=True).assign(cluster=result.labels)
    thumbs = dict(zip(table["chip_id"].astype(str), report.thumbnails[mask]))
    return table, result, thumbs


def gallery_cams(
    run: Path, chips_dir: Path, chip_ids: Iterable, device: str = "auto", method: str = "gradcam"
) -> dict[str, np.ndarray]:
    """Grad-CAM maps (chip id -> (h, w) in [0, 1]) of a few chips, computed with the run's model."""
    ids = [str(c) for c in chip_ids]
    if not ids:
        return {}
    model, meta = load_classifier(run, resolve_device(device))
    ds = ChipDataset(chips_dir, image_size=meta.image_size, require_classes=False)
    row_of = {cid: i for i, cid in enumerate(ds.frame["chip_id"].astype(str))}
    maps = []
    for start in range(0, len(ids), 32):
        x = torch.stack([ds[row_of[c]]["image"] for c in ids[start : start + 32]])
        maps.append(explain_batch(model, x.to(next(model.parameters()).device), method))
    return dict(zip(ids, np.concatenate(maps)))


def footprints(table: pd.DataFrame) -> dict[str, gpd.GeoDataFrame]:
    """Chip footprint polygons grouped by CRS: ``{crs: GeoDataFrame}`` (chips.csv bounds are in ``crs``)."""
    cols = [c for c in table.columns if c not in ("minx", "miny", "maxx", "maxy", "crs")]
    out = {}
    for crs, part in table.groupby("crs", sort=True):
        geom = [box(*b) for b in part[["minx", "miny", "maxx", "maxy"]].to_numpy(float)]
        out[str(crs)] = gpd.GeoDataFrame(part[cols].reset_index(drop=True), geometry=geom, crs=str(crs))
    return out


def write_cluster_vectors(table: pd.DataFrame, gpkg: Path, geojson: Path) -> None:
    """Chip footprints with their cluster to a GeoPackage and a GeoJSON.

    A GeoPackage layer has one CRS. Layer ``clusters`` is in the chips' CRS when they share one
    (exact squares); when scenes lie in several CRSs it is in EPSG:4326 and each CRS also gets an
    exact layer ``clusters_<authority>_<code>``. The GeoJSON is always EPSG:4326.
    """
    parts = footprints(table)
    if len(parts) == 1:
        main, extra = next(iter(parts.values())), {}
    else:
        wgs84 = pd.concat([p.to_crs("EPSG:4326") for p in parts.values()], ignore_index=True)
        main = gpd.GeoDataFrame(wgs84, crs="EPSG:4326")
        extra = {"clusters_" + crs.replace(":", "_").lower(): p for crs, p in parts.items()}
    write_vectors(main, gpkg=gpkg, geojson=geojson, layer="clusters", extra_layers=extra)


class ScenePreview(NamedTuple):
    """A scene's RGB decimated for display, with its bounds and CRS (the map's axes)."""

    image: np.ndarray  # (H, W, 3)
    bounds: BoundingBox
    crs: CRS | None


def read_scene_preview(path: str | Path | ImagerySource, max_pixels: int = 1024) -> ScenePreview:
    """The scene at the largest integer decimation that fits ``max_pixels`` a side.

    An :class:`~schoolvision.io.imagery.ImagerySource` (a tile folder, a mosaic, 16-bit or EPSG:4326
    imagery: :func:`~schoolvision.data.sources.chips_scenes`) is read as its chips were, in their CRS.
    """
    opened = open_source(path) if isinstance(path, ImagerySource) else rasterio.open(path)
    with opened as src:
        scale = max(1, int(np.ceil(max(src.width, src.height) / max_pixels)))
        img = src.read([1, 2, 3], out_shape=(3, src.height // scale, src.width // scale))
        return ScenePreview(np.moveaxis(img, 0, -1), src.bounds, src.crs)


def read_scene_previews(
    chips_dir: Path, scenes: Iterable[str], max_pixels: int = 1024
) -> Iterator[tuple[str, ScenePreview]]:
    """``(scene, preview)`` of those ``scenes`` whose image ``dataset.json`` names and that exist on disk.

    Read one at a time: drawing a map per town need not hold every town in memory.
    """
    sources = chips_scenes(chips_dir) if ChipsFolder(chips_dir).meta_path.is_file() else {}
    for scene in scenes:
        if scene in sources:
            yield scene, read_scene_preview(sources[scene], max_pixels)


def read_chip_rgb(path: str | Path) -> np.ndarray:
    """A chip GeoTIFF (or PNG/JPEG) as an (H, W, 3) uint8 array."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        with rasterio.open(path) as src:
            return np.moveaxis(src.read([1, 2, 3]), 0, -1)
    return np.asarray(Image.open(path).convert("RGB"))


def read_cams(cams_dir: str | Path, chip_ids: Iterable) -> dict[str, np.ndarray]:
    """Heatmap GeoTIFFs named ``<chip_id>.tif`` anywhere under ``cams_dir`` (e.g. ``schoolvision explain`` output).

    Each is scaled to [0, 1] with nodata as 0; the first match in sorted path order wins.
    """
    wanted = set(map(str, chip_ids))
    found: dict[str, np.ndarray] = {}
    for p in sorted(Path(cams_dir).rglob("*.tif")):
        if p.stem in wanted and p.stem not in found:
            with rasterio.open(p) as src:
                cam = src.read(1, masked=True).astype(float).filled(0.0)
            span = cam.max() - cam.min()
            found[p.stem] = (cam - cam.min()) / span if span > 0 else np.zeros_like(cam)
    return found
