"""Paths for the book's chapters: where the repository is, and what a chapter needs before it runs.

The only part of the book tooling the chapters import; the notebook pipeline (sync, execute, check)
lives in ``build_tools/book.py``, outside the runtime package.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from schoolvision.errors import UserError

ROOT_MARKER = "_config.yml"


# --------------------------------------------------------------------------------------------------
def repo_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: the cwd) holding ``_config.yml``.

    Papermill runs chapters from the root, nbval from ``book/`` and Jupyter from wherever it was
    started; resolving against this folder makes all three read and write the same files.
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / ROOT_MARKER).is_file():
            return folder
    package_root = Path(__file__).resolve().parents[1]  # editable install inside the repository
    if (package_root / ROOT_MARKER).is_file():
        return package_root
    raise UserError(f"no {ROOT_MARKER} in this folder or any parent: run from inside the schoolvision repository", here)


def resolve(path: str | Path) -> Path:
    """``path`` if absolute, else ``path`` under the repository root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else repo_root() / path


def resolve_paths(*paths: str | Path, **named: str | Path) -> Any:
    """:func:`resolve` for several paths: positional -> tuple (one -> a Path), keywords -> namespace."""
    if named and paths:
        raise TypeError("resolve_paths takes positional or keyword paths, not both")
    if named:
        return SimpleNamespace(**{key: resolve(value) for key, value in named.items()})
    resolved = tuple(resolve(p) for p in paths)
    return resolved[0] if len(resolved) == 1 else resolved


def require(path: str | Path, chapter: str) -> Path:
    """Return the resolved ``path``; if it does not exist, say which chapter makes it.

    ``chapter`` is a notebook name such as ``"01_data"`` (the message then gives the papermill
    command) or free text naming what to run first.
    """
    target = resolve(path)
    if target.exists():
        return target
    stem = Path(chapter).stem
    if re.fullmatch(r"\d\d_\w+", stem):
        how = f"run chapter {stem} first (papermill book/{stem}.ipynb book/{stem}.ipynb, or make book)"
    else:
        how = f"run {chapter} first"
    raise UserError(f"not found: {how}", target)
