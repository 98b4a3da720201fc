"""The one window grid that chips and scans share.

Windows of ``chip`` pixels start every ``stride`` pixels from 0. The edge rule: when the grid does
not end exactly on the border, one more window is **shifted in** to end on it, so no strip of
imagery is skipped (the last two windows then overlap more than ``stride`` says). A length shorter
than a chip gives one window at 0: a scan pads it when reading, while chips need a full chip and
cut none there. ``edge="drop"`` (the grid alone, the last partial strip left out) is kept for callers
that must reproduce that older grid.
"""

from __future__ import annotations

from typing import Literal

from schoolvision.errors import UserError

Edge = Literal["shift", "drop"]


def window_offsets(length: int, chip: int, stride: int, *, edge: Edge = "shift") -> list[int]:
    """Offsets of chip-size windows along one axis of ``length`` pixels (module docstring for the edge rule).

    Raises:
        UserError: ``stride`` is not positive.
    """
    if stride <= 0:
        raise UserError(f"stride must be positive, got {stride}")
    if length <= chip:
        return [0]
    offs = list(range(0, length - chip + 1, stride))
    if edge == "shift" and offs[-1] + chip < length:
        offs.append(length - chip)
    return offs


def grid_windows(height: int, width: int, chip: int, stride: int, *, edge: Edge = "shift") -> list[tuple[int, int]]:
    """(row, col) offsets of every grid window of a ``height`` x ``width`` scene, row by row."""
    cols = window_offsets(width, chip, stride, edge=edge)
    return [(r, c) for r in window_offsets(height, chip, stride, edge=edge) for c in cols]
