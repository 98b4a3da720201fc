"""Interactive map of a scan: scene image, probability layer, candidates, known schools (folium/Leaflet).

Works offline. folium links Leaflet (and jQuery, Bootstrap, Font Awesome) from CDNs; a map for
field teams must render without internet, so :func:`offline_map` drops those links and inlines
Leaflet 1.9.4's JS and CSS (with its icons as data URIs) from the ``django-js-lib-leaflet`` wheel,
a dependency-free PyPI package that only ships the Leaflet dist files (BSD-2, like Leaflet).
Markers are ``CircleMarker`` s (SVG), so no icon font is needed; there is no basemap tile layer.
The scene and the probability raster are warped to Web Mercator (what Leaflet displays) and
embedded as downsampled PNG overlays, so the HTML file is self-contained.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import folium
import geopandas as gpd
import numpy as np
from affine import Affine
from branca.element import Element, MacroElement
from jinja2 import Template
from matplotlib import colormaps
from PIL import Image
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import array_bounds
from rasterio.warp import calculate_default_transform, reproject, transform_bounds
from rasterio.warp import transform as warp_points
from rasterio.windows import from_bounds

from schoolvision.io.atomic import write_text
from schoolvision.io.folders import ScanFolder, open_probability
from schoolvision.io.imagery import ImageryOptions, list_sources
from schoolvision.io.scans import STRIDE_TAG
from schoolvision.io.schools import read_schools
from schoolvision.scan.candidates import FIELD_PER_STRIDE
from schoolvision.scan.novelty import novelty_rgba
from schoolvision.scan.scene import SceneScan, scene_grid

MERCATOR = "EPSG:3857"


def leaflet_assets() -> tuple[str, str] | None:
    """(leaflet.js, leaflet.css with images inlined) from the installed wheel, or None when it is missing."""
    try:
        root = resources.files("js_lib_leaflet") / "static" / "js_lib_leaflet"
        js = (root / "leaflet.js").read_text(encoding="utf-8")
        css = (root / "leaflet.css").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        return None

    def data_uri(match: re.Match) -> str:
        name = match.group(1)
        data = (root / "images" / name).read_bytes()
        return f"url(data:image/png;base64,{base64.b64encode(data).decode()})"

    return js, re.sub(r"url\(images/([\w\-]+\.png)\)", data_uri, css)


class RawText(Element):
    """Text put into the page as it is, with no template of its own to compile.

    ``Element(text)`` compiles ``text`` as a Jinja template on every map: for the inlined Leaflet
    (160 kB of JavaScript and CSS) that tokenising was a quarter of a scan map's time.
    """

    _template = Template("{{ this.text }}")

    def __init__(self, text: str):
        super().__init__()
        self.text = text


def offline_map(**kwargs) -> folium.Map:
    """A ``folium.Map`` without CDN links, Leaflet inlined (falls back to the CDN with a warning)."""
    m = folium.Map(tiles=None, control_scale=True, **kwargs)
    assets = leaflet_assets()
    if assets is None:
        warnings.warn("django-js-lib-leaflet is not installed: map.html loads Leaflet from a CDN (needs internet)",
                      stacklevel=2)
        return m
    js, css = assets
    m.default_js = []
    m.default_css = []
    m.get_root().header.add_child(RawText(f"<style>{css}</style>\n<script>{js}</script>"), name="leaflet_inline")
    return m


def png_data_uri(rgba: np.ndarray) -> str:
    """(H, W, 3|4) uint8 -> ``data:image/png;base64,...``.

    Fast zlib level 1: on a 1024 px scene overlay it is ~6x faster than ``optimize=True`` for ~10% more bytes.
    """
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def webp_data_uri(rgba: np.ndarray, quality: int = 80) -> str:
    """(H, W, 3|4) uint8 -> ``data:image/webp;base64,...``: a scene photo with its transparent edges.

    A lossy WebP keeps the alpha mask at a tenth of the PNG's bytes for imagery (a 1024 px scene
    overlay: megabytes as PNG), and every current browser shows it. Encoder effort 2 of 6: on a 1024 px
    demo scene half the time of the default 4 for 4% more bytes at the same quality.
    """
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="WEBP", quality=quality, method=2)
    return "data:image/webp;base64," + base64.b64encode(buf.getvalue()).decode()


def mercator_overlay(ds, max_side: int = 1024, bands: Sequence[int] = (1, 2, 3)):
    """Read ``ds`` warped to Web Mercator, at most ``max_side`` px: (array (b, h, w), mask (h, w), [[s, w], [n, e]]).

    The grid is GDAL's default Mercator grid of ``ds`` (what a ``WarpedVRT`` of it has) shrunk to
    ``max_side``. ``ds`` is first read averaged down to about that size in its own CRS (from its
    overviews where they fit), and only that small array is warped (bilinear; the mask nearest,
    transparent outside the data): warping the full-resolution raster and then averaging it down took
    2-3x longer for the same picture.
    """
    full, width, height = calculate_default_transform(ds.crs, MERCATOR, ds.width, ds.height, *ds.bounds)
    f = max(1.0, max(width, height) / max_side)
    shape = (max(1, round(height / f)), max(1, round(width / f)))
    dst = {"dst_transform": full @ Affine.scale(width / shape[1], height / shape[0]), "dst_crs": MERCATOR}
    small = (max(1, round(ds.height / f)), max(1, round(ds.width / f)))
    src = {"src_transform": ds.transform @ Affine.scale(ds.width / small[1], ds.height / small[0]),
           "src_crs": ds.crs}
    arr = np.zeros((len(bands), *shape), np.dtype(ds.dtypes[bands[0] - 1]))
    reproject(ds.read(list(bands), out_shape=(len(bands), *small), resampling=Resampling.average), arr,
              src_nodata=ds.nodata, dst_nodata=ds.nodata, resampling=Resampling.bilinear, **src, **dst)
    mask = np.zeros(shape, np.uint8)
    reproject(ds.dataset_mask(out_shape=small), mask, src_nodata=None, dst_nodata=0, resampling=Resampling.nearest,
              **src, **dst)
    w, s, e, n = transform_bounds(MERCATOR, "EPSG:4326", *array_bounds(*shape, dst["dst_transform"]))
    return arr, mask > 0, [[s, w], [n, e]]


def scene_png(ds, max_side: int = 1024) -> tuple[str, list]:
    """RGB overlay of a scene (transparent outside its data)."""
    arr, mask, bounds = mercator_overlay(ds, max_side, bands=(1, 2, 3)[: min(3, ds.count)])
    rgb = np.moveaxis(arr, 0, -1).astype(np.uint8)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, -1)
    return webp_data_uri(np.dstack([rgb, (mask * 255).astype(np.uint8)])), bounds


def field_side(ds, max_side: int) -> int:
    """Side of a scan raster's overlay: ``max_side``, or less where the window stride leaves less detail.

    A probability (or novelty) raster holds nothing finer than a sixteenth of the window stride
    (``FIELD_PER_STRIDE``); drawn finer, its overlay only costs bytes and encoding time.
    """
    stride = ds.tags().get(STRIDE_TAG)
    if not stride:
        return max_side
    return int(min(max_side, max(64, math.ceil(max(ds.width, ds.height) * FIELD_PER_STRIDE / float(stride)))))


def probability_png(path: str | Path, max_side: int = 1024, cmap: str = "inferno") -> tuple[str, list]:
    """Probability overlay: colour map, transparent where P is low or nodata."""
    with open_probability(path) as ds:
        arr, mask, bounds = mercator_overlay(ds, field_side(ds, max_side), bands=(1,))
    p = np.clip(arr[0], 0, 1)
    rgba = (colormaps[cmap](p) * 255).astype(np.uint8)
    rgba[..., 3] = np.where(mask, (np.clip(p * 1.5, 0, 1) * 255), 0).astype(np.uint8)
    return png_data_uri(rgba), bounds


def novelty_png(path: str | Path, max_side: int = 1024) -> tuple[str, list]:
    """Novelty overlay (trust map): red where windows look unlike the training data, transparent elsewhere."""
    with open_probability(path) as ds:
        arr, mask, bounds = mercator_overlay(ds, field_side(ds, max_side), bands=(1,))
    return png_data_uri(novelty_rgba(arr[0], mask)), bounds


def thumbnail(ds, x: float, y: float, crs, size_m: float = 128.0, px: int = 96) -> str:
    """PNG data URI of the scene around (x, y) in ``crs``: what a mapper checks in the popup."""
    xs, ys = warp_points(crs, ds.crs, [x], [y])
    if ds.crs.is_geographic:  # half-size in degrees, roughly
        half = size_m / 2 / 111_320.0
        halfx = half / max(np.cos(np.radians(ys[0])), 1e-6)
    else:
        half = halfx = size_m / 2
    win = from_bounds(xs[0] - halfx, ys[0] - half, xs[0] + halfx, ys[0] + half, ds.transform)
    bands = (1, 2, 3)[: min(3, ds.count)]
    arr = ds.read(bands, window=win, out_shape=(len(bands), px, px), boundless=True, fill_value=0)
    rgb = np.moveaxis(arr, 0, -1).astype(np.uint8)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, -1)
    return png_data_uri(rgb)


class _OpenGrids:
    """The scenes' grids for the thumbnails, each opened once: opening one probes it and sets up its 8-bit scaling.

    The ``keep`` last used stay open: candidates come by rank, scenes mixed, and a country has thousands.
    """

    def __init__(self, sources: Mapping, keep: int = 16):
        self.sources, self.keep, self.open = sources, keep, {}

    def get(self, scene: str):
        """The open grid of ``scene``, or None when it has no source."""
        if scene in self.open:
            self.open[scene] = self.open.pop(scene)  # most recently used last
            return self.open[scene][1]
        src = self.sources.get(scene)
        if src is None:
            return None
        if len(self.open) >= self.keep:
            self.open.pop(next(iter(self.open)))[0].__exit__(None, None, None)
        grid = scene_grid(src)
        self.open[scene] = (grid, grid.__enter__())
        return self.open[scene][1]

    def close(self) -> None:
        for grid, _ in self.open.values():
            grid.__exit__(None, None, None)
        self.open = {}


class HtmlPopup(MacroElement):
    """``layer.bindPopup(html)`` without jQuery (folium's Popup needs ``$``, which is not inlined)."""

    _template = Template(
        "{% macro script(this, kwargs) %}"
        "{{ this._parent.get_name() }}.bindPopup({{ this.html|tojson }}, {maxWidth: {{ this.max_width }}});"
        "{% endmacro %}"
    )

    def __init__(self, html: str, max_width: int = 260):
        super().__init__()
        self._name = "HtmlPopup"
        self.html, self.max_width = html, int(max_width)


def _popup(row, thumb: str | None) -> HtmlPopup:
    parts = [f"<b>candidate #{int(row['rank'])}</b>",
             f"P(school) max {row['max_prob']:.3f}, mean {row['mean_prob']:.3f}",
             f"area {row['area_m2']:.0f} m&sup2;, scene {html.escape(str(row['scene']))}",
             f"point at the {html.escape(str(row.get('peak', 'probability')))} peak"]
    novelty = row.get("novelty")
    if novelty is not None and np.isfinite(novelty):
        parts.append(f"novelty: {novelty:.0f}th percentile of home imagery")
    if row.get("matched_school"):
        parts.append(f"known school: {html.escape(str(row['matched_school']))}")
    if thumb:
        parts.append(f'<img src="{thumb}" width="128" height="128" style="image-rendering:pixelated">')
    return HtmlPopup("<br>".join(parts))


def scan_map(scenes: Sequence, cands, sources: Mapping, schools: str | Path | gpd.GeoDataFrame | None = None,
             evaluation_layers: Mapping | None = None, max_side: int = 1024, max_overlays: int = 20,
             max_markers: int = 2000) -> folium.Map:
    """Build the map of a scan (``SceneScan`` items, candidates GeoDataFrame, scene name -> imagery source).

    Layers: scene image, P(school), novelty (hidden until toggled; with a run's novelty summary), candidates
    (popups with probability and a chip thumbnail), known schools (found: green, missed: red) when
    ``evaluation_layers`` holds ``known_schools``. Only the
    ``max_markers`` most probable candidates are drawn (``cands`` is ranked); the map then says so.
    """
    m = offline_map()
    g_scene = folium.FeatureGroup(name="scene", show=True).add_to(m)
    g_prob = folium.FeatureGroup(name="P(school)", show=True).add_to(m)
    trust = [s for s in list(scenes)[:max_overlays] if getattr(s, "novelty", None) and Path(s.novelty).is_file()]
    g_novelty = folium.FeatureGroup(name="novelty (unlike the training data)", show=False).add_to(m) if trust else None
    bounds_all = []
    shown = list(scenes)[:max_overlays]

    def scene_overlay(s) -> tuple[str, list]:
        with scene_grid(sources[s.scene]) as ds:
            return scene_png(ds, max_side)

    # each overlay is warped and encoded on its own thread (GDAL and the encoders release the GIL).
    # rasterio silences its in-memory datasets' NotGeoreferencedWarning with warnings.catch_warnings,
    # which is not thread-safe: one thread's exit restores the filters another thread is relying on.
    # Set before the threads start and held until they end, this filter is in every list they restore.
    with warnings.catch_warnings(), ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        images = pool.map(scene_overlay, shown)
        probabilities = pool.map(lambda s: probability_png(s.probability, max_side), shown)
        novelties = pool.map(lambda s: novelty_png(s.novelty, max_side), trust)
        for s, (uri, bounds), (p_uri, p_bounds) in zip(shown, images, probabilities):
            folium.raster_layers.ImageOverlay(uri, bounds=bounds, name=s.scene, interactive=False).add_to(g_scene)
            folium.raster_layers.ImageOverlay(p_uri, bounds=p_bounds, opacity=0.6, name=f"P {s.scene}").add_to(g_prob)
            bounds_all.append(p_bounds)
        for s, (uri, bounds) in zip(trust, novelties):
            folium.raster_layers.ImageOverlay(uri, bounds=bounds, name=f"novelty {s.scene}").add_to(g_novelty)
    layers = dict(evaluation_layers or {})
    fa = layers.get("false_alarms")
    matched = {}
    if fa is not None and "known_schools" in layers:
        fa_ranks = set(fa["rank"].astype(int)) if "rank" in fa.columns else set()
        matched = {int(r): "" if int(r) in fa_ranks else "yes" for r in cands["rank"]}
    g_c = folium.FeatureGroup(name="candidates", show=True).add_to(m)
    if len(cands):
        pts = cands.to_crs("EPSG:4326")
        grids = _OpenGrids(sources)
        for (_, row), geom, orig in zip(cands.head(max_markers).iterrows(), pts.geometry, cands.geometry):
            thumb = None
            ds = grids.get(row["scene"])
            if ds is not None:
                thumb = thumbnail(ds, orig.x, orig.y, cands.crs)
            color = "#ff9800" if matched.get(int(row["rank"])) == "" else "#00e5ff"
            marker = folium.CircleMarker([geom.y, geom.x], radius=9, color=color, weight=3, fill=True, fill_opacity=0.3,
                                         tooltip=f"#{int(row['rank'])} P={row['max_prob']:.2f}",
                                         class_name="sv-candidate")
            _popup(row, thumb).add_to(marker)
            marker.add_to(g_c)
        grids.close()
    known = layers.get("known_schools")
    if known is None and schools is not None:
        known = schools if isinstance(schools, gpd.GeoDataFrame) else read_schools(schools, point_buffer_m=None)
    if known is not None and len(known):
        g_k = folium.FeatureGroup(name="known schools", show=True).add_to(m)
        k = known.to_crs("EPSG:4326")
        for _, row in k.iterrows():
            found = bool(row.get("found", True))
            p = row.geometry if row.geometry.geom_type == "Point" else row.geometry.representative_point()
            label = f"{row.get('name', 'school')}: {'found' if found else 'MISSED'}"
            folium.CircleMarker([p.y, p.x], radius=5, color="#00c853" if found else "#d50000", weight=2, fill=True,
                                fill_opacity=0.9, tooltip=html.escape(label), class_name="sv-school").add_to(g_k)
    if len(cands) > max_markers:  # a country's candidates do not fit in one page: say which ones are shown
        note = (f"showing the top {max_markers:,} of {len(cands):,} candidates (by P(school)); "
                "all are in candidates.gpkg")
        m.get_root().html.add_child(Element(
            '<div class="sv-top-note" style="position:fixed;bottom:12px;left:12px;z-index:1000;background:white;'
            f'padding:4px 8px;border:1px solid #888;font:13px sans-serif">{html.escape(note)}</div>'))
    folium.LayerControl(collapsed=False).add_to(m)
    if bounds_all:
        s = min(b[0][0] for b in bounds_all)
        w = min(b[0][1] for b in bounds_all)
        n = max(b[1][0] for b in bounds_all)
        e = max(b[1][1] for b in bounds_all)
        m.fit_bounds([[s, w], [n, e]])
    return m


def scan_map_from_dir(out_dir: str | Path, **kwargs) -> folium.Map:
    """Rebuild the map of a finished scan folder (``scan.json``, ``candidates.gpkg``) e.g. in a notebook."""
    folder = ScanFolder(out_dir)
    info = folder.read_summary()
    scenes = [SceneScan(**s) for s in info["scenes"]]
    read = info.get("imagery") or {}  # the scan's bands, CRS option and scale rule
    options = ImageryOptions(bands=read.get("bands"), crs=read.get("crs"), scale=read.get("scale"))
    sources = {s.scene: src.with_options(options) for s in scenes for src in list_sources([s.source])
               if src.name == s.scene}
    cands = folder.read_layer("candidates")
    layers = {name: folder.read_layer(name) for name in ("known_schools", "false_alarms")}
    layers = {k: v for k, v in layers.items() if len(v) or (k == "false_alarms" and "evaluation" in info["files"])}
    return scan_map(scenes, cands, sources, evaluation_layers=layers or None, **kwargs)


def save_map(m: folium.Map, path: str | Path) -> Path:
    """Write the map's self-contained HTML atomically."""
    return write_text(path, m.get_root().render())
