"""One chip per place: galleries that show distinct schools, and non-school chips that do not overlap.

Chips are cut with a stride of half a chip and several jittered windows around each school, so the first
few chips of any ranking are often the same school seen twice. A gallery that repeats a school shows
less than it claims; these functions keep the first chip of each school (``school_name`` within its
``scene``) and, for chips without a school, only those whose centre lies at least one chip width from
every chip already kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd


def place_key(row: pd.Series) -> str | None:
    """``scene/school_name`` of a chip on a school, or None for a chip without a named school."""
    name = row.get("school_name")
    if isinstance(name, str) and name and str(row.get("label")) in ("school", "1"):
        return f"{row.get('scene', '')}/{name}"
    return None


def distinct_places(frame: pd.DataFrame, order: Iterable, n: int | None = None) -> list:
    """The index labels of ``order`` (labels of ``frame``), keeping one chip per place, at most ``n``.

    ``frame`` needs chips.csv's ``label``, ``school_name`` and ``scene`` columns, and its bounds
    (``minx``, ``miny``, ``maxx``, ``maxy``) to keep chips without a school a chip apart; without
    bounds only the school rule applies.
    """
    has_bounds = {"minx", "miny", "maxx", "maxy"} <= set(frame.columns)
    seen: set[str] = set()
    centres: list[tuple[str, float, float]] = []
    kept: list = []
    for label in order:
        row = frame.loc[label]
        key = place_key(row)
        if key is not None:
            if key in seen:
                continue
            seen.add(key)
        elif has_bounds:
            cx, cy = (row["minx"] + row["maxx"]) / 2, (row["miny"] + row["maxy"]) / 2
            width = float(row["maxx"] - row["minx"])
            scene = str(row.get("scene", ""))
            if any(s == scene and np.hypot(cx - x, cy - y) < width for s, x, y in centres):
                continue
        if has_bounds:
            centres.append((str(row.get("scene", "")), (row["minx"] + row["maxx"]) / 2,
                            (row["miny"] + row["maxy"]) / 2))
        kept.append(label)
        if n is not None and len(kept) >= n:
            break
    return kept


def repeated_places(frame: pd.DataFrame, chip_ids: Sequence[str]) -> list[str]:
    """The places (``scene/school_name``) that appear more than once among ``chip_ids`` (for tests and checks)."""
    rows = frame.set_index(frame["chip_id"].astype(str)).loc[[str(c) for c in chip_ids]]
    keys = [k for k in (place_key(r) for _, r in rows.iterrows()) if k is not None]
    return sorted({k for k in keys if keys.count(k) > 1})
