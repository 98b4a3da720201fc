"""A review queue folder: the queue, its items and their images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from schoolvision.errors import UserError
from schoolvision.io.atomic import write_bytes, write_json
from schoolvision.io.outputs import Folder, folder_file, read_json_object

_REVIEW = "build a review queue first: schoolvision review build --scan DIR --out DIR"


class ReviewFolder(Folder):
    """A review queue made by ``schoolvision review build``.

    Files: ``queue.json`` (queue id, the scan, the ordering rule, counts), ``items.geojson`` (one
    Point feature per item in review order, EPSG:4326, properties :data:`ITEM_FIELDS`),
    ``images/<id>_chip.jpg``, ``images/<id>_cam.jpg``, ``images/<id>_context.jpg`` (JPEG: a page of a
    few hundred items stays a few MB) and ``review.html``
    (the page, every image inlined).
    """

    QUEUE = "queue.json"
    ITEMS = "items.geojson"
    IMAGES = "images"
    PAGE = "review.html"
    IMAGE_KINDS = ("chip", "cam", "context")
    ITEM_FIELDS = ("id", "position", "source", "registry_status", "registry_id", "probability", "chip_probability",
                   "candidate_rank", "scene", "name", "lon", "lat", "x", "y", "crs", "merged_ids", "merged",
                   "nearest_new_m", "chip", "cam", "context", "stratum", "inclusion_probability", "registry_rows",
                   "window", "novelty")

    queue_path = folder_file(QUEUE, "``queue.json``.")
    items_path = folder_file(ITEMS, "``items.geojson``.")
    page_path = folder_file(PAGE, "``review.html``.")

    def image_name(self, item_id: str, kind: str) -> str:
        """Path of an item's image relative to the folder (``images/<id>_<kind>.jpg``)."""
        if kind not in self.IMAGE_KINDS:
            raise ValueError(f"image kind {kind!r} not in {self.IMAGE_KINDS}")
        return f"{self.IMAGES}/{item_id}_{kind}.jpg"

    def write_image(self, item_id: str, kind: str, jpeg: bytes) -> Path:
        """Write one JPEG atomically."""
        return write_bytes(self.root / self.image_name(item_id, kind), jpeg)

    def read_image(self, item_id: str, kind: str) -> bytes:
        """The JPEG bytes of an item's image."""
        path = self.root / self.image_name(item_id, kind)
        if not path.is_file():
            raise UserError(f"review image not found ({_REVIEW})", path)
        return path.read_bytes()

    def read_queue(self) -> dict[str, Any]:
        """``queue.json``: ``queue_id``, ``scan``, ``order``, ``rule``, ``threshold``, ``items``, ``counts``."""
        queue = read_json_object(self.queue_path, True, _REVIEW)
        if not isinstance(queue.get("queue_id"), str):
            raise UserError(f"{self.QUEUE} has no queue_id; {_REVIEW}", self.queue_path)
        return queue

    def write_queue(self, queue: dict[str, Any]) -> Path:
        """Write ``queue.json`` atomically."""
        return write_json(self.queue_path, queue)

    def write_items(self, items: Sequence[Mapping[str, Any]]) -> Path:
        """Write ``items.geojson``: one Point (``lon``, ``lat``) per item, its fields as properties."""
        features = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [it["lon"], it["lat"]]},
                     "properties": {k: it.get(k) for k in self.ITEM_FIELDS}} for it in items]
        return write_json(self.items_path, {"type": "FeatureCollection", "name": "items", "features": features})

    def read_items(self) -> pd.DataFrame:
        """The items in review order (one row each, columns :data:`ITEM_FIELDS`)."""
        data = read_json_object(self.items_path, True, _REVIEW)
        features = data.get("features")
        if not isinstance(features, list):
            raise UserError(f"{self.ITEMS} is not a GeoJSON FeatureCollection; {_REVIEW}", self.items_path)
        rows = [f.get("properties") or {} for f in features if isinstance(f, dict)]
        frame = pd.DataFrame(rows, columns=list(self.ITEM_FIELDS))
        frame["id"] = frame["id"].astype(str)
        return frame
