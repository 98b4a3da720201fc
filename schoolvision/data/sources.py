"""Where a pipeline run's data come from: the demo towns, or the user's own imagery and school labels.

What a chips folder records of them: the scenes it was cut from, read as its chips were
(:func:`chips_scenes`), the demo folder it came from (:func:`demo_of`) and its held-out scene. The book's
first chapter prepares either kind with :func:`schoolvision.book.data.prepare_data`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from schoolvision.data.chips import ChipConfig
from schoolvision.errors import UserError
from schoolvision.io.folders import ChipsFolder, DemoFolder
from schoolvision.io.imagery import (
    ImagerySource,
    list_sources,
    with_options,
)
from schoolvision.io.tiles import TileOptions

DEMO_MARKER = DemoFolder.META
"""The file :func:`~schoolvision.demo.make_demo` writes last: a folder holding it is a demo folder."""


def chips_scenes(chips_dir: str | Path, require: str | None = None) -> dict[str, ImagerySource]:
    """The scenes a chips folder was cut from, read as its chips were (bands, CRS, 8-bit scale, tile options).

    What later stages need to look at or scan the same imagery, demo or not: the scene paths and the
    settings are those ``dataset.json`` records. Scenes whose imagery is no longer on disk are left out.

    Args:
        chips_dir: a chips folder made by ``schoolvision chips`` (or chapter 1).
        require: a scene that must be among them.

    Raises:
        UserError: the folder has no ``dataset.json``, or ``require`` is not one of its scenes on disk.
    """
    folder = ChipsFolder(chips_dir)
    recorded = folder.read_meta(required=True).get("config", {})
    fields = {f.name for f in dataclasses.fields(ChipConfig)}
    config = ChipConfig(**{key: value for key, value in recorded.items() if key in fields})
    scenes = {}
    for name, path in folder.scene_paths().items():
        if path.exists():
            listed = list_sources([path], TileOptions.of(config))
            scenes[name] = dataclasses.replace(listed[0], name=name)
    if require is not None and require not in scenes:
        why = "its imagery is no longer on disk" if require in folder.scene_paths() else "no such scene"
        raise UserError(f"scene {require!r}: {why}; scenes: {', '.join(folder.scene_paths())}", folder.meta_path)
    return dict(zip(scenes, with_options(list(scenes.values()), config.bands, config.crs, config.scale)))


def demo_of(chips_dir: str | Path) -> Path | None:
    """The demo folder the chips were cut from (its schools file lies beside ``demo.json``); None: the user's data."""
    source = ChipsFolder(chips_dir).read_meta(required=True).get("schools_source")
    folder = Path(source).parent if source else None
    return folder if folder is not None and DemoFolder(folder).is_demo() else None


def held_out_scene(chips_dir: str | Path) -> str:
    """The scene a chapter scans by default: the test scene, else (scenes split by blocks) the first scene."""
    scenes = ChipsFolder(chips_dir).read_meta(required=True).get("scenes", {})
    if not scenes:
        raise UserError("dataset.json lists no scene", ChipsFolder(chips_dir).meta_path)
    return next((name for name, s in scenes.items() if s.get("split") == "test"), next(iter(scenes)))
