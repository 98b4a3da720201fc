"""Does map.html render offline? Serve it on localhost, load it in headless Chromium, count the layers.

Without ``--map`` a small scan map is built from a generated scene (no model needed). Chromium runs
with every host except 127.0.0.1 unresolvable, so a CDN link would leave Leaflet undefined and the
counts at zero. Prints one JSON object; exit code 1 when the overlays or markers are missing.
Needs Debian's chromium (``apt-get install -y chromium``).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def build_demo_map(folder: Path) -> tuple[Path, int]:
    """A 512 px UTM scene, a probability raster with three hot spots, its candidates and map.html."""
    import rasterio
    from affine import Affine

    from schoolvision.io.imagery import list_sources
    from schoolvision.io.rasters import write_geotiff
    from schoolvision.scan.candidates import extract_all
    from schoolvision.scan.scene import SceneScan
    from schoolvision.scan.webmap import save_map, scan_map

    rng = np.random.default_rng(0)
    tf = Affine(1.0, 0, 500_000.0, 0, -1.0, 100_000.0)
    img = rng.integers(60, 140, (3, 512, 512), dtype=np.uint8)
    write_geotiff(folder / "scene.tif", img, "EPSG:32636", tf, overviews=True)
    yy, xx = np.mgrid[0:512, 0:512]
    prob = np.zeros((512, 512), np.float32)
    for r, c in ((100, 100), (300, 350), (420, 80)):
        prob = np.maximum(prob, np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 20.0**2)).astype(np.float32))
    write_geotiff(folder / "scene_probability.tif", prob, "EPSG:32636", tf, nodata=-1.0, overviews=True)
    with rasterio.open(folder / "scene.tif") as ds:
        crs = ds.crs.to_string()
    scene = SceneScan("scene", str(folder / "scene.tif"), str(folder / "scene_probability.tif"), crs, 512, 512,
                      1.0, 0, 0, 0.26, 0.0)
    cands, _ = extract_all([scene], 0.5)
    source = list_sources([folder / "scene.tif"])[0]
    return save_map(scan_map([scene], cands, {"scene": source}), folder / "map.html"), len(cands)


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if path:
            return path
    sys.exit("chromium not found: apt-get install -y chromium")


def render_dom(html_path: Path, budget_ms: int = 15000) -> str:
    """DOM of the page after its scripts ran, loaded over http://127.0.0.1 with the rest of the net blocked."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep stdout one JSON object
            pass

    handler = functools.partial(Quiet, directory=str(html_path.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{html_path.name}"
        with tempfile.TemporaryDirectory() as profile:
            cmd = [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                   f"--virtual-time-budget={budget_ms}", "--dump-dom", url]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        return proc.stdout
    finally:
        server.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--map", type=Path, default=None, help="an existing map.html (default: build a demo one)")
    ap.add_argument("--expect-markers", type=int, default=None, help="candidate markers expected (default: 1+)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.map is None:
            path, n = build_demo_map(Path(tmp))
            expect = n
        else:
            path, expect = args.map.resolve(), args.expect_markers or 1
        html = path.read_text(encoding="utf-8")
        external = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(https?://[^"]+)"', html)
        dom = render_dom(path)
    overlays = len(re.findall(r'<img[^>]*class="[^"]*leaflet-image-layer', dom))
    markers = len(re.findall(r'class="[^"]*sv-candidate', dom))
    schools = len(re.findall(r'class="[^"]*sv-school', dom))
    result = {
        "map": str(args.map or "generated"),
        "html_bytes": len(html.encode()),
        "external_assets": external,
        "leaflet_container": "leaflet-container" in dom,
        "image_overlays": overlays,
        "candidate_markers": markers,
        "school_markers": schools,
        "layer_control": "leaflet-control-layers" in dom,
        "scale_bar": "leaflet-control-scale" in dom,
        "expected_markers": expect,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    result["ok"] = bool(result["leaflet_container"] and overlays >= 2 and markers >= max(1, min(expect, 2000))
                        and not external and result["layer_control"])
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
