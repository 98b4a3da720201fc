"""What the painting stages of one town share (its random stream, canvas, sun and palette)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from schoolvision.demo.canvas import Canvas, pixels
from schoolvision.demo.regions import REGIONS, Region, TownConfig


class Site(NamedTuple):
    """Where a compound (school or look-alike) goes: centre (px), length and width (px), angle, corners (4, 2)."""

    cx: float
    cy: float
    length: float
    width: float
    angle: float
    corners: np.ndarray


@dataclass
class TownContext:
    """What the painting stages of one town share: its random stream, canvas, sun and palette."""

    rng: np.random.Generator
    cfg: TownConfig
    size: int
    m: float  # px per metre
    sun: np.ndarray  # unit vector towards the sun, image x right / y down
    sh: float  # shadow px per metre of height
    green: float
    soil: np.ndarray
    grass: np.ndarray
    yard_col: np.ndarray
    roof_p: np.ndarray
    cv: Canvas | None = None
    dens: np.ndarray | None = None  # 0..1 how built-up each pixel is
    ctr: np.ndarray | None = None
    theta: float = 0.0  # street-grid orientation
    buildings: list = field(default_factory=list)
    walls: list = field(default_factory=list)
    yard_trees: list = field(default_factory=list)
    reserved: np.ndarray | None = None
    region: Region = REGIONS["rural"]

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the scene."""
        return (self.size, self.size)

    @property
    def hs(self) -> float:
        """Shadow length in px of a one-storey building."""
        return 3.5 * self.sh  # shadow of a one-storey building

    def roof(self) -> tuple:
        """A roof colour drawn from the region's palette with this town's weights."""
        return self.region.roofs[int(self.rng.choice(len(self.region.roofs), p=self.roof_p))]

    def yard(self, corners: np.ndarray) -> None:
        """Packed earth: school yards, walled compounds, markets and swept house plots all share it."""
        rr, cc = pixels(corners, self.shape)
        self.cv.paint(rr, cc, self.yard_col, texture=(1 + 0.04 * self.rng.standard_normal(rr.size)).astype(np.float32))

