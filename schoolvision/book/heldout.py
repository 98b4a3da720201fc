"""The held-out area of a chips folder: what a chapter scans to measure a model on ground it never saw.

With scenes split whole, that is the test scene. With one scene or mosaic split into ground blocks
(a user's single orthomosaic), scanning the whole scene would score training blocks too; the held-out
area is then the test blocks: the scan is masked to them (``scan --mask`` with the test area) and
measured only against the schools inside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import shapely
from shapely.geometry import box

from schoolvision.data.sources import chips_scenes, held_out_scene
from schoolvision.io.folders import ChipsFolder, prepare_output
from schoolvision.io.imagery import ImagerySource
from schoolvision.io.vectors import write_vectors


@dataclass(frozen=True)
class HeldOut:
    """The scene to scan, and (blocks) the mask and known schools that restrict the scan to its test area."""

    scene: str
    source: ImagerySource
    schools: Path  # known schools to measure against: the chips' schools, or those in the test area
    area: Path | None = None  # the test blocks (scan mask, distance 0); None: the whole scene is held out
    area_km2: float | None = None

    def scan_options(self) -> dict:
        """The :class:`~schoolvision.scan.runner.ScanConfig` fields that scan this held-out area."""
        options = {"imagery": [self.source.path], "schools": self.schools}
        return options if self.area is None else {**options, "mask": self.area, "mask_distance": 0.0}

    def describe(self) -> str:
        """One line: what is scanned and why."""
        if self.area is None:
            return f"held-out area: the test scene {self.scene}, never seen in training"
        return (f"held-out area: the test blocks of {self.scene} ({self.area_km2:.2f} km2); the scan is masked "
                "to them and measured against the schools inside them only")


def held_out_area(chips_dir: str | Path, out_dir: str | Path, scene: str = "") -> HeldOut:
    """The held-out area of ``chips_dir`` (or of ``scene``): writes the test area and its schools under ``out_dir``.

    For a scene split by blocks the test area is the union of its test chips' footprints, shrunk by a
    little under half a chip, so that windows masked to it are centred in the test blocks; its schools
    are the chips' schools whose footprint centre lies in the unshrunk area. ``out_dir`` is an output
    folder of its own (replaced on every call); nothing is written for a whole test scene.
    """
    folder = ChipsFolder(chips_dir)
    meta = folder.read_meta(required=True)
    name = scene or held_out_scene(chips_dir)
    source = chips_scenes(chips_dir, require=name)[name]
    if meta.get("scenes", {}).get(name, {}).get("split") != "blocks" or scene:
        return HeldOut(name, source, folder.schools_path())
    chips = folder.read_index("test")
    chips = chips[chips["scene"].astype(str) == name]
    crs = str(chips["crs"].iloc[0])
    area = shapely.union_all([box(r.minx, r.miny, r.maxx, r.maxy) for r in chips.itertuples()])
    half = float(meta.get("chip_size", 128)) * float(meta.get("gsd") or 1.0) / 2
    core = area.buffer(-0.9 * half, join_style="mitre")
    schools = gpd.read_file(folder.schools_path()).to_crs(crs)
    inside = schools[schools.geometry.representative_point().within(area)]
    out = Path(out_dir)
    prepare_output(out, overwrite=True, own_files=("test_area.geojson", "test_schools.geojson"))
    area_path, schools_path = out / "test_area.geojson", out / "test_schools.geojson"
    write_vectors(gpd.GeoDataFrame({"name": ["test area"]}, geometry=[core if not core.is_empty else area], crs=crs),
                  geojson=area_path)
    write_vectors(inside, geojson=schools_path)
    return HeldOut(name, source, schools_path, area_path, area.area / 1e6)
