"""Output folders: the guard every command runs before it writes, and the readers all folder classes share.

:func:`prepare_output` is the one guard every command runs before it writes into ``--out``: never
into or around an input, and ``--overwrite`` removes only what schoolvision wrote there.
:func:`read_json_object`, :func:`read_csv_table` and :func:`require_columns` turn a missing or
unreadable file into one :class:`~schoolvision.errors.UserError` that names the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from schoolvision.errors import UserError
from schoolvision.io import manifest
from schoolvision.io.atomic import write_json

# --- the output guard ---------------------------------------------------------------------------

NOT_EMPTY = "output folder is not empty; pass --overwrite or choose another --out"

Inputs = Mapping[str, Any]
"""A command's inputs by option name, e.g. ``{"--imagery": paths, "--schools": path}``."""


def check_inputs(out: str | Path, inputs: Inputs | None, option: str = "--out") -> None:
    """Refuse an output path that is, holds or lies inside one of the inputs, so no input is ever overwritten.

    Args:
        out: the command's output folder (or file).
        inputs: the input paths by option name (None values are skipped).
        option: the output's option name, for the message.

    Raises:
        UserError: naming both paths.
    """
    target = Path(out).resolve()
    for name, value in (inputs or {}).items():
        paths = [value] if isinstance(value, (str, Path)) else list(value or ())
        for raw in paths:
            path = Path(raw).resolve()
            if path == target:
                how = "is"
            elif path in target.parents:
                how = "lies inside"
            elif target in path.parents:
                how = "contains"
            else:
                continue
            raise UserError(f"{option} {how} the input {name} {raw}; choose an {option} outside the inputs", out)


def prepare_output(out_dir: str | Path, overwrite: bool, *, message: str = NOT_EMPTY,
                   own_files: Sequence[str] = (), is_same: Callable[[Path], bool] | None = None,
                   create: bool = True, inputs: Inputs | None = None, clear: bool = True) -> bool:
    """Check ``out_dir`` before a command writes into it: the one output guard of every command.

    A folder is empty when it holds nothing but its manifest and temporaries of a killed run (those
    are removed when the run goes ahead). ``overwrite`` removes what an earlier run of schoolvision
    wrote there (the files its manifest lists, see :mod:`schoolvision.io.manifest`) and nothing else:
    other files stay, and the new output is written beside them.

    Args:
        out_dir: the command's ``--out``.
        overwrite: the command's ``--overwrite``: write into a non-empty folder.
        message: the error for a non-empty folder without ``overwrite`` (each command names its fix).
        own_files: names or glob patterns of the files the command writes; with ``overwrite``, a file
            under one of them that schoolvision did not write is refused now rather than half-way.
        is_same: called on a non-empty folder; True means it already holds this very output
            (same inputs), which is neither refused nor cleared.
        create: make the folder (and its parents) when it passes; else it is made by the first write.
        inputs: the command's input paths by option name; ``out_dir`` must not be, hold or lie in one.
        clear: with ``overwrite``, delete the earlier run's files now; False when the caller
            replaces them itself at the end (:func:`~schoolvision.io.manifest.move_into`).

    Returns:
        True when ``is_same`` recognised the folder's content, else False.

    Raises:
        UserError: ``out_dir`` is a file or lies under one, is or holds or lies inside an input, is a
            non-empty folder without ``overwrite``, or holds a file under ``own_files`` that
            schoolvision did not write.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError("output path exists and is not a folder; choose another --out", out)
    above = next((p for p in out.absolute().parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise UserError(f"output path lies under the file {above}; choose another --out", out)
    check_inputs(out, inputs)
    if out.is_dir() and manifest.holds_files(out):
        if is_same is not None and is_same(out):
            return True
        if not overwrite:
            raise UserError(message, out)
        foreign = manifest.foreign_files(out, own_files)
        if foreign:
            raise UserError(f"holds {os.path.relpath(foreign[0], out)}, which schoolvision did not write (its manifest "
                            "does not list it; a folder from an older version?); move it away or choose another "
                            "--out", out)
        manifest.remove_temporaries(out)
        if clear:
            manifest.remove_listed(out)
    elif out.is_dir():
        manifest.remove_temporaries(out)
    if create:
        out.mkdir(parents=True, exist_ok=True)
    if out.is_dir():
        manifest.start(out)
    else:
        manifest.register(out)
    return False


# --- helpers ------------------------------------------------------------------------------------


def read_json_object(path: Path, required: bool, fix: str) -> dict[str, Any]:
    """A JSON object from ``path``; ``{}`` when it is missing and not ``required``."""
    return read_json(path, required, fix, dict, "a JSON object") if path.is_file() or required else {}


def read_json(path: Path, required: bool, fix: str, kind: type = dict, what: str = "a JSON object") -> Any:
    """The JSON value of ``path``, which must be a ``kind``; ``None`` when it is missing and not ``required``.

    Raises:
        UserError: the file is missing (and required), unreadable, or holds no ``what``; the message names ``fix``.
    """
    if not path.is_file():
        if required:
            raise UserError(f"{path.name} not found ({fix})", path)
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path.name} is not readable JSON ({type(exc).__name__}); {fix}", path) from None
    if not isinstance(data, kind):
        raise UserError(f"{path.name} does not hold {what}; {fix}", path)
    return data


def folder_file(name: str, doc: str) -> property:
    """A read-only property: the path of the file ``name`` in the folder (``self.root / name``)."""
    return property(lambda self: self.root / name, doc=doc)


def folder_pattern(pattern: str, doc: str):
    """A method ``(key) -> Path``: the path ``pattern.format(key)`` in the folder (one file per scene, fold ...)."""

    def path(self, key) -> Path:
        return self.root / pattern.format(key)

    path.__doc__ = doc
    return path


class Folder:
    """A folder one stage writes; subclasses name its files and read and write them."""

    def __init__(self, root: str | Path):
        self.root = Path(root)


class RecordFolder(Folder):
    """A folder whose headline is one JSON object, ``RECORD``, written by the command ``FIX`` names."""

    RECORD = ""
    FIX = ""
    REQUIRED = True  # whether reading the record without saying so fails when it is absent

    @property
    def record_path(self) -> Path:
        """The record file."""
        return self.root / self.RECORD

    def read_record(self, required: bool | None = None) -> dict[str, Any]:
        """The record; ``{}`` when it is absent and not ``required`` (default: the class's ``REQUIRED``)."""
        return read_json_object(self.record_path, self.REQUIRED if required is None else required, self.FIX)

    def write_record(self, record: dict[str, Any]) -> Path:
        """Write the record atomically."""
        return write_json(self.record_path, record)


def read_csv_table(path: Path, fix: str, **kwargs) -> pd.DataFrame:
    """``pd.read_csv(path, **kwargs)``; a missing or unparsable file is a UserError naming ``fix``."""
    if not path.is_file():
        raise UserError(f"{path.name} not found ({fix})", path)
    try:
        return pd.read_csv(path, **kwargs)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # pandas' parser errors are ValueErrors
        raise UserError(f"{path.name} is not a readable CSV table ({type(exc).__name__}); {fix}", path) from None


def require_columns(frame: pd.DataFrame, columns: Iterable[str], path: Path, fix: str) -> None:
    """Raise a UserError naming ``path`` and ``fix`` when ``frame`` lacks any of ``columns``."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserError(f"{path.name} lacks column(s) {', '.join(missing)}; {fix}", path)


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, ``""`` when it does not exist (run records, feature cache keys)."""
    path = Path(path)
    if not path.is_file():
        return ""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


