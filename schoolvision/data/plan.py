"""Chip plans: the split blocks and the stride chosen for the data when the user did not set them.

A first try on one's own data is usually one district or one drone survey: a few hundred metres and
5-50 schools. Split by the default blocks, such an area is one or two blocks and every school lands
in train; cut with the default stride, it gives a few dozen chips. So before cutting, the scenes'
sizes, the GSD and the schools' positions choose what ``ChipConfig`` leaves at None:

- **Block size** (``block_size``, metres; only for scenes split by blocks, i.e. one or two scenes):
  the largest of ``DEFAULT_BLOCK_PX`` pixels, then ``BLOCK_STEP`` times smaller each try down to
  ``MIN_BLOCK_CHIPS`` chips a side, whose seeded blocks give train, val and test a school each. A
  school counts for a split when a grid window lying inside one block of that split holds its centre
  at least a quarter chip from the window's edges (val and test get grid windows only). Blocks stay
  spatial: chips are never split at random. When the labels allow it (three schools or more) and
  no size works, planning stops with one line saying which ``--block-size`` and ``--seed`` would,
  or that the schools lie too close together; with fewer than three schools a size that gives every
  split a block is taken (train holding a school first, then as many splits as possible, then the
  largest), and the chips' warnings say which split holds no school.
- **Stride** (``stride``, pixels): half a chip, halved while the scenes' grid gives fewer than
  ``MIN_GRID_WINDOWS`` windows, down to an eighth of a chip. Splits are by blocks or scenes, so the
  more overlapping chips of a small area never leak between splits.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from schoolvision.data.windows import window_offsets
from schoolvision.errors import UserError

SPLITS = ("train", "val", "test")
DEFAULT_BLOCK_PX = 512
"""The first block size tried (and the one a scene larger than a few blocks keeps), in pixels at the chips' GSD."""
BLOCK_STEP = 0.8
"""Each block size tried is this share of the one before."""
MIN_BLOCK_CHIPS = 2.0
"""The smallest block planned, in chips a side: a smaller block keeps few windows (straddling ones are dropped)."""
MIN_GRID_WINDOWS = 500
"""A planned stride gives at least this many grid windows over all scenes, where an eighth of a chip allows it."""
SEEDS_TRIED = 20
"""When no block size works at the given seed, the stop line names one of the first seeds that works."""


@dataclass(frozen=True)
class SceneLayout:
    """What planning reads of one scene at the chips' GSD: its size and its schools' centres (pixels)."""

    name: str
    height: int
    width: int
    centres: np.ndarray  # (n, 2) float: (row, col) of each school's centre
    by_blocks: bool  # split by blocks (else the whole scene is one split)


@dataclass(frozen=True)
class ChipPlan:
    """The stride and block size the chips are cut with, and which of them were chosen here."""

    stride: int
    block_px: int
    gsd: float
    chosen: tuple[str, ...] = ()  # "stride", "block_size": left to the plan by the user
    schools_by_split: tuple[tuple[str, int], ...] = ()  # schools each split can hold, for the blocks scenes
    better_block_px: int | None = None  # a set block size leaves a split without a school: one that would not

    @property
    def block_m(self) -> float:
        """The block size in metres."""
        return round(self.block_px * self.gsd, 3)

    def record(self) -> dict:
        """The ``plan`` entry of ``dataset.json``."""
        return {"stride": self.stride, "block_size_m": self.block_m, "block_size_px": self.block_px,
                "chosen": list(self.chosen), "schools_by_split": dict(self.schools_by_split)}

    def fix(self) -> str:
        """What moves schools into a split that holds none, for the warning line."""
        if self.better_block_px is not None:
            return f"--block-size {self.better_block_px * self.gsd:g} gives every split a school"
        return f"--seed draws other split blocks of {self.block_m:g} m"


def block_splits(height: int, width: int, block: int, fractions: Sequence[float], seed: int,
                 scene: str) -> np.ndarray:
    """Assign each block a split index (0 train, 1 val, 2 test), seeded, each split at least once (3+ blocks)."""
    nby, nbx = math.ceil(height / block), math.ceil(width / block)
    n = nby * nbx
    if n >= 3:
        counts = np.maximum(1, np.round(np.array(fractions) * n).astype(int))
    else:
        counts = np.array([n, 0, 0])
    counts[0] = max(0, n - counts[1] - counts[2])
    split_ids = np.repeat(np.arange(3), counts)[:n]
    rng = np.random.default_rng([seed, stable_int(scene), 7])
    return rng.permutation(split_ids).reshape(nby, nbx)


def window_split(blocks: np.ndarray, row: int, col: int, cs: int, block: int) -> str | None:
    """The split of the blocks under a window, or None if it straddles two splits."""
    r0, r1 = row // block, (row + cs - 1) // block
    c0, c1 = col // block, (col + cs - 1) // block
    values = np.unique(blocks[r0 : r1 + 1, c0 : c1 + 1])
    return SPLITS[int(values[0])] if len(values) == 1 else None


def stable_int(text: str) -> int:
    """A seed component from a name, the same in every process."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def plan_chips(layouts: Sequence[SceneLayout], chip_size: int, gsd: float, stride: int | None,
               block_size_m: float | None, fractions: Sequence[float], seed: int) -> ChipPlan:
    """The :class:`ChipPlan` for these scenes (module docstring); ``stride`` / ``block_size_m`` set are kept.

    Raises:
        UserError: ``block_size_m`` is under one chip; or it is None, three or more schools lie in the
            scenes split by blocks and no planned block size gives train, val and test a school each.
    """
    chosen = []
    if stride is None:
        chosen.append("stride")
        stride = max(1, chip_size // 2)
        while stride > max(1, chip_size // 8) and _windows(layouts, chip_size, stride) < MIN_GRID_WINDOWS:
            stride = max(1, stride // 2)
    blocked = [s for s in layouts if s.by_blocks]
    if block_size_m is not None:
        block = round(block_size_m / gsd)
        if block < chip_size:
            raise UserError(f"--block-size {block_size_m:g} m is smaller than one chip ({chip_size} px at {gsd:g} m/px "
                            f"= {chip_size * gsd:g} m); pass at least --block-size {math.ceil(chip_size * gsd)}")
        held = _schools_by_split(blocked, block, chip_size, stride, fractions, seed)
        better = None
        if blocked and not all(held[s] for s in SPLITS):
            better = next((b for b in _block_sizes(chip_size) if all(
                _schools_by_split(blocked, b, chip_size, stride, fractions, seed)[s] for s in SPLITS)), None)
        return ChipPlan(stride, block, gsd, tuple(chosen), tuple(held.items()), better)
    chosen.append("block_size")
    sizes = _block_sizes(chip_size)
    n_schools = sum(len(s.centres) for s in blocked)
    if not blocked or n_schools == 0:
        return ChipPlan(stride, sizes[0], gsd, tuple(chosen))
    for block in sizes:
        held = _schools_by_split(blocked, block, chip_size, stride, fractions, seed)
        if all(held[s] for s in SPLITS):
            return ChipPlan(stride, block, gsd, tuple(chosen), tuple(held.items()))
    if n_schools < len(SPLITS):  # the labels cannot fill three splits: blocks for every split, train first
        fits = [b for b in sizes if all(_block_count(s, b) >= 3 for s in blocked)] or sizes[-1:]
        options = [(b, _schools_by_split(blocked, b, chip_size, stride, fractions, seed)) for b in fits]
        block, held = max(options, key=lambda o: (o[1]["train"] > 0, sum(v > 0 for v in o[1].values()), o[0]))
        return ChipPlan(stride, block, gsd, tuple(chosen), tuple(held.items()))
    raise UserError(_no_plan_line(blocked, sizes, chip_size, stride, fractions, seed, gsd, n_schools))


def _windows(layouts: Sequence[SceneLayout], cs: int, stride: int) -> int:
    return sum(len(window_offsets(s.height, cs, stride)) * len(window_offsets(s.width, cs, stride))
               for s in layouts if s.height >= cs and s.width >= cs)


def _block_sizes(cs: int) -> list[int]:
    """Block sizes to try, largest first: ``DEFAULT_BLOCK_PX`` down to ``MIN_BLOCK_CHIPS`` chips (at least a chip)."""
    smallest = max(cs, math.ceil(MIN_BLOCK_CHIPS * cs))
    sizes, block = [], float(max(DEFAULT_BLOCK_PX, smallest))
    while block >= smallest:
        if not sizes or round(block) < sizes[-1]:
            sizes.append(round(block))
        block *= BLOCK_STEP
    return sizes or [smallest]


def _block_count(scene: SceneLayout, block: int) -> int:
    return math.ceil(scene.height / block) * math.ceil(scene.width / block)


def _schools_by_split(blocked: Sequence[SceneLayout], block: int, cs: int, stride: int,
                      fractions: Sequence[float], seed: int) -> Counter:
    """How many schools each split can hold with blocks of ``block`` px (module docstring's rule).

    A school that windows of two splits can hold counts for the split holding fewer schools so far.
    """
    held: Counter = Counter(dict.fromkeys(SPLITS, 0))
    for scene in blocked:
        if scene.height < cs or scene.width < cs:
            continue
        blocks = block_splits(scene.height, scene.width, block, fractions, seed, scene.name)
        for cy, cx in scene.centres:
            splits = {window_split(blocks, row, col, cs, block)
                      for row in _origins(cy, cs, stride, scene.height)
                      for col in _origins(cx, cs, stride, scene.width)}
            row, col = (int(np.clip(round(v - cs / 2), 0, n - cs)) for v, n in ((cy, scene.height), (cx, scene.width)))
            if window_split(blocks, row, col, cs, block) == "train":  # the window centred on it (train only)
                splits.add("train")
            splits.discard(None)
            if splits:
                held[min(splits, key=lambda s: (held[s], -SPLITS.index(s)))] += 1
    return held


def _origins(centre: float, cs: int, stride: int, size: int) -> range:
    """Grid window origins (multiples of ``stride``) whose window holds ``centre`` a quarter chip inside."""
    margin = cs / 4
    first = max(0, math.ceil((centre + margin - cs) / stride))
    last = min((size - cs) // stride, math.floor((centre - margin) / stride))
    return range(first * stride, last * stride + 1, stride) if last >= first else range(0)


def _no_plan_line(blocked, sizes, cs, stride, fractions, seed, gsd, n_schools) -> str:
    """The one line of a failed plan: which block size and seed would work, else why none can."""
    names = ", ".join(s.name for s in blocked)
    tried = f"{sizes[0] * gsd:g} to {sizes[-1] * gsd:g} m"
    for other in range(SEEDS_TRIED):
        for block in sizes:
            if other != seed and all(_schools_by_split(blocked, block, cs, stride, fractions, other)[s]
                                     for s in SPLITS):
                return (f"no split-block size ({tried}) gives train, val and test a school each at --seed {seed} "
                        f"({n_schools} schools in {names}); pass --block-size {block * gsd:g} --seed {other}")
    return (f"the {n_schools} schools of {names} lie too close together for train, val and test to hold one each "
            f"with split blocks of {tried}; label schools elsewhere in the imagery, add a scene, or pass "
            "--val-scenes / --test-scenes with three or more scenes")
