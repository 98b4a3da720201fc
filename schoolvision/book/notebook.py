"""Paths for the book's chapters: where the repository is, and what a chapter needs before it runs.

The only part of the book tooling the chapters import; the notebook pipeline (sync, execute, check)
lives in ``build_tools/book.py``, outside the runtime package.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
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


# --------------------------------------------------------------------------------------------------
# Numbers in the chapters' prose (myst-nb glue)
# --------------------------------------------------------------------------------------------------
class Text(str):
    """A string that a ``{glue:text}`` role shows as-is (a plain ``str`` would show its quoted repr)."""

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))


def glue_value(value: Any) -> Any:
    """``value`` as glue stores it best: numpy scalars as Python numbers, strings unquoted."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()
    if isinstance(value, str) and not isinstance(value, Text):
        return Text(value)
    return value


def glue_all(prefix: str, mapping: Mapping[str, Any]) -> dict[str, Any]:
    """Glue each value of ``mapping`` as ``{prefix}_{key}`` for the chapter's Markdown, showing nothing.

    The prose then says {glue:text}`ch2_auprc:.3f` instead of a typed number, so the page always
    shows what this build computed (tests/test_prose.py fails on typed numbers). Returns the glued
    values by full key, for a quick look in a live notebook.
    """
    from myst_nb import glue  # the book's renderer: installed with the `book` extra

    glued = {f"{prefix}_{key}": glue_value(value) for key, value in mapping.items()}
    for key, value in glued.items():
        glue(key, value, display=False)
    return glued


# --------------------------------------------------------------------------------------------------
# How long the chapters took (the execution record of `make book`)
# --------------------------------------------------------------------------------------------------
EXECUTION_RECORD = "_build/execution.json"


def read_execution_record(path: str | Path = EXECUTION_RECORD) -> dict:
    """The seconds per chapter that ``build_tools.book execute --timings`` wrote; ``{}`` if none."""
    target = resolve(path)
    if not target.is_file():
        return {}
    try:
        record = json.loads(target.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"unreadable execution record: {error}", target) from error
    return record if isinstance(record, dict) else {}


def runtime_sentence(record: Mapping[str, Any], chapter: str) -> str:
    """One sentence for a chapter header: its time in this build's record, and what is not recorded.

    A build runs one profile on one machine, so the record holds CPU *or* GPU times; the sentence says
    which, and how to get the other.
    """
    seconds = (record.get("seconds") or {}).get(chapter)
    profile = str(record.get("profile", "")).removesuffix(".yaml")
    machine = record.get("machine") or {}
    gpu = machine.get("gpu")
    where = f"on {gpu}" if gpu else f"on {machine['cpus']} CPU cores" if machine.get("cpus") else "on the build machine"
    # plain text: a {glue:text} role shows it as it is, without Markdown
    if seconds is None:
        return "not in this build's execution record (_build/execution.json, written by make book)"
    took = f"{seconds / 60:.1f} minutes" if seconds >= 90 else f"{max(seconds, 1):.0f} s"
    other = "CPU" if gpu else "GPU"
    return (
        f"{took} with the {profile} profile {where}, from this build's execution record; "
        f"this build records no {other} time (make book PROFILE={other.lower()} records its own)"
    )


def toc_chapters(root: str | Path | None = None) -> list[str]:
    """The chapters' notebook names (``01_data``, ...) in ``_toc.yml`` order (the root page left out)."""
    import yaml

    toc = yaml.safe_load((Path(root) if root else repo_root()).joinpath("_toc.yml").read_text()) or {}
    return [Path(str(entry["file"])).stem for entry in toc.get("chapters", []) if "file" in entry]


def glue_runtimes(prefix: str, chapters: list[str], record: Mapping[str, Any]) -> dict[str, Any]:
    """Glue ``{prefix}_time_<chapter>`` sentences and ``{prefix}_total_minutes`` for the whole book."""
    values: dict[str, Any] = {f"time_{chapter}": runtime_sentence(record, chapter) for chapter in chapters}
    seconds = record.get("seconds") or {}
    values["total_minutes"] = round(sum(seconds.values()) / 60, 1) if seconds else float("nan")
    values["training_minutes"] = round(seconds.get("02_training", float("nan")) / 60, 1)
    values["profile"] = str(record.get("profile", "none")).removesuffix(".yaml")
    return glue_all(prefix, values)


# --------------------------------------------------------------------------------------------------
# The prose's claims, checked against the glued values (a `checks` cell in every chapter)
# --------------------------------------------------------------------------------------------------
_CLAIM_FUNCTIONS = {"abs": abs, "min": min, "max": max, "len": len}
_CLAIM_NODES = (ast.Expression, ast.Compare, ast.BoolOp, ast.UnaryOp, ast.BinOp, ast.Name, ast.Constant, ast.Load,
                ast.Call, ast.And, ast.Or, ast.Not, ast.USub, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Eq, ast.NotEq,
                ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Tuple, ast.List)


def claim_holds(claim: str, values: Mapping[str, Any]) -> bool:
    """Whether ``claim``, a comparison over the names in ``values`` (``"ch3_road_gradcam > ch3_road_centre"``), holds.

    Only comparisons, ``and``/``or``/``not``, arithmetic, numbers and ``abs``/``min``/``max``/``len`` are allowed:
    a claim is a sentence of the prose written as a formula, not code.

    Raises:
        ValueError: a claim with another construct, or a name that is not among ``values``.
    """
    tree = ast.parse(claim, mode="eval")
    for node in ast.walk(tree):
        if not isinstance(node, _CLAIM_NODES):
            raise ValueError(f"claim {claim!r}: {type(node).__name__} is not allowed")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _CLAIM_FUNCTIONS):
            raise ValueError(f"claim {claim!r}: only {', '.join(_CLAIM_FUNCTIONS)} may be called")
        if isinstance(node, ast.Name) and node.id not in values and node.id not in _CLAIM_FUNCTIONS:
            raise ValueError(f"claim {claim!r}: {node.id!r} is not a glued value")
    scope = {**_CLAIM_FUNCTIONS, **{k: glue_value(v) for k, v in values.items()}}
    return bool(eval(compile(tree, "<claim>", "eval"), {"__builtins__": {}}, scope))  # noqa: S307 - names checked above


def check_claims(values: Mapping[str, Any], claims: Mapping[str, str | tuple[str, str]]) -> bool:
    """Print each claim of the prose (sentence: formula over the glued ``values``) with whether it holds.

    The chapter's ``checks`` cell calls this and nbval compares its printed lines with the committed
    ones: a claim that stops being true on a rerun (another machine, other data) changes a line and
    fails ``make test``, instead of leaving a page whose prose contradicts its numbers. Only the
    verdicts are printed, not the values (they vary within their intervals). A claim about a value this
    build did not glue (a demo-only section, skipped on your data) prints as not measured. A claim may
    be ``(formula, advice)``: when it does not hold, the advice (what to try next) is printed under it,
    so a rerun on other data that breaks it ends in a next step, not only a verdict. Returns whether
    every measured claim holds.
    """
    results: dict[str, bool | None] = {}
    advice: dict[str, str] = {}
    for sentence, claim in claims.items():
        formula, advice[sentence] = (claim, "") if isinstance(claim, str) else claim
        names = {n.id for n in ast.walk(ast.parse(formula, mode="eval")) if isinstance(n, ast.Name)}
        measured = names <= set(values) | set(_CLAIM_FUNCTIONS)
        results[sentence] = claim_holds(formula, values) if measured else None
    for sentence, holds in results.items():
        print(f"{'not measured here' if holds is None else 'holds' if holds else 'DOES NOT HOLD'}: {sentence}")
        if holds is False and advice[sentence]:
            print(f"  what to try: {advice[sentence]}")
    return all(v is not False for v in results.values())
