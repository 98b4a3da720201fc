"""Atomic file writes: write beside the target, then rename.

An interrupted run never leaves a truncated GeoTIFF or half a checkpoint where a good file was. Each
write is first recorded in the manifest of the output folder it lands in (see
:mod:`schoolvision.io.manifest`), so ``--overwrite`` can later remove exactly what the tool wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from schoolvision.io.manifest import record, temporary_affixes


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` on success.

    The temporary name keeps the target's suffix so that format drivers (GDAL, OGR) pick the
    right format from it; the next run into the folder removes one a killed run left.

    Raises:
        UserError: ``target`` lies in an output folder and exists, but schoolvision did not write it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    record(target)
    prefix, suffix = temporary_affixes(target)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.unlink()  # let the writer create it (some drivers refuse an existing empty file)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(target: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    return write_bytes(target, text.encode("utf-8"))


def write_json(target: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON atomically (stable diffs between runs)."""
    return write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
