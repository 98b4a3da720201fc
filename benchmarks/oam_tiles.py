"""Chips from an OpenAerialMap tile export versus the same town as one GeoTIFF: seconds and chips, side by side.

The export is made by ``tests/fixtures.py``'s ``write_oam_tiles``: the town in Web Mercator, cut into
zoom-level tiles, each warped on its own to EPSG:4326 (every row of tiles its own pixel size). Its
tiles are one mosaic read lazily on the town's UTM grid, so the two give the same chips; the ratio
says what the lazy mosaic (resampling the tiles, then warping to UTM) costs. Target: same chip count.

Usage: .venv/bin/python benchmarks/oam_tiles.py [--size 512] [--zoom 18]
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import geopandas as gpd

from schoolvision.data.chips import ChipConfig, make_chips
from schoolvision.demo import generate_town
from schoolvision.io.rasters import write_geotiff

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fixtures import write_oam_tiles  # noqa: E402  (the test suite's one generator of the OAM form)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="town side in pixels at 1 m")
    parser.add_argument("--zoom", type=int, default=18)
    parser.add_argument("--chip-size", type=int, default=64)
    args = parser.parse_args()
    town = generate_town(0, args.size, 1.0, index=0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        original = root / "original" / "town.tif"
        write_geotiff(original, town.image, town.crs, town.transform)
        oam = write_oam_tiles(original, root / "oam" / "town", args.zoom)
        schools = root / "schools.geojson"
        gpd.GeoDataFrame({"name": [f"s{i}" for i in range(len(town.schools))]}, geometry=town.schools,
                         crs=town.crs).to_crs("EPSG:4326").to_file(schools, driver="GeoJSON")
        config = ChipConfig(chip_size=args.chip_size, stride=args.chip_size // 2, gsd=1.0, block_size=200,
                            negative_ratio=None)
        result = {"benchmark": "oam_tiles", "town_px": args.size, "zoom": args.zoom, "tiles": len(list(oam.iterdir())),
                  "chip_size": args.chip_size}
        for name, imagery in (("one_geotiff", original), ("oam_tiles", oam)):
            start = time.perf_counter()
            summary = make_chips([imagery], schools, root / f"chips_{name}", config)
            seconds = time.perf_counter() - start
            result[name] = {"scenes": len(summary.scenes), "chips": summary.n_chips, "seconds": round(seconds, 2)}
        result["seconds_ratio"] = round(result["oam_tiles"]["seconds"] / result["one_geotiff"]["seconds"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
