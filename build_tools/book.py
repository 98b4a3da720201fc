"""Book tooling: repository-relative paths for chapters, and the notebook pipeline behind ``make book``.

Chapters are jupytext percent scripts (``book/NN_name.py``, the only file a person edits); their
``.ipynb`` twins are derived deterministically (cell ids from the cell index, no random ids, no
execution timings) so that regenerating or re-executing a notebook gives a small, readable diff.

Command line (what the Makefile calls)::

    python -m build_tools.book sync              # .py -> .ipynb where the code changed
    python -m build_tools.book execute --profile cpu [--only 02_training]
    python -m build_tools.book execute --profile path/to/mine.yaml [--out DIR]   # your data; DIR: keep the book
    python -m build_tools.book params --profile gpu 02_training > gpu_02.yaml   # flat file for papermill -f
    python -m build_tools.book check [--executed] # pairs in sync; executed notebooks clean
    python -m build_tools.book list               # notebooks in _toc.yml order
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from schoolvision.book.notebook import repo_root
from schoolvision.errors import UserError

INJECTED_TAG = "injected-parameters"
# How the papermill-injected cell shows in the HTML: collapsed, one click away, so a reader can see
# which profile produced the page without it interrupting the story.
INJECTED_DISPLAY_TAG = "hide-cell"
STRAY_OUTPUT = re.compile(r"^(Text\(|<Figure size|<Axes|\[<matplotlib|<matplotlib\.)")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
JPEG_FROM_BYTES = 150_000  # PNG figures above this size become JPEG (scenes, chips, galleries)
JPEG_QUALITY = 85
# tqdm's bar text ("towns:   0%|          | 0/6 [00:00<?, ?it/s]") in any output of an executed notebook
PROGRESS_TEXT = re.compile(r"\d+%\|.*\|.*(it|/s)\]|\?it/s\]")


# --------------------------------------------------------------------------------------------------
# Table of contents and notebook pairs
# --------------------------------------------------------------------------------------------------
def toc_files(root: Path | None = None) -> list[str]:
    """Every ``file:``/``root:`` entry of ``_toc.yml`` in reading order (no extension)."""
    import yaml

    root = root or repo_root()
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    entries: list[str] = [toc["root"]] if "root" in toc else []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "file" in node:
                entries.append(str(node["file"]))
            for key in ("chapters", "sections", "parts"):
                for child in node.get(key, []) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk({key: toc[key] for key in ("chapters", "parts") if key in toc})
    return [str(Path(entry).with_suffix("")) if Path(entry).suffix else entry for entry in entries]


def chapter_sources(root: Path | None = None, *, existing_only: bool = True) -> list[Path]:
    """Jupytext sources (``book/NN_name.py``) of the toc entries, in toc order."""
    root = root or repo_root()
    pages = [entry for entry in toc_files(root) if not (root / f"{entry}.md").exists()]
    sources = [root / f"{entry}.py" for entry in pages]
    return [s for s in sources if s.exists()] if existing_only else sources


def notebook_of(source: Path) -> Path:
    return source.with_suffix(".ipynb")


def _code_sources(nb: Any) -> list[str]:
    """Code cell sources, without papermill's injected cell, whitespace-normalised."""
    return [
        cell.source.strip()
        for cell in nb.cells
        if cell.cell_type == "code" and INJECTED_TAG not in cell.metadata.get("tags", [])
    ]


def _text_sources(nb: Any) -> list[tuple[str, str]]:
    return [
        (cell.cell_type, cell.source.strip())
        for cell in nb.cells
        if INJECTED_TAG not in cell.metadata.get("tags", [])
    ]


def read_source(source: Path) -> Any:
    """The notebook jupytext derives from a percent script, with deterministic ids and metadata."""
    import jupytext

    nb = jupytext.read(source)
    nb.metadata.pop("jupytext", None)
    nb.metadata.setdefault(
        "kernelspec", {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    )
    nb.metadata["jupytext"] = {"formats": "ipynb,py:percent"}
    return normalise(nb)


def normalise(nb: Any) -> Any:
    """Deterministic ids and no run-dependent metadata (timings, papermill bookkeeping)."""
    nb.nbformat, nb.nbformat_minor = 4, 5
    for index, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{index:03d}"
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        tags = cell.metadata.get("tags", [])
        if INJECTED_TAG in tags and INJECTED_DISPLAY_TAG not in tags:
            cell.metadata["tags"] = [*tags, INJECTED_DISPLAY_TAG]
        if INJECTED_TAG in tags:  # the intro calls the collapsed cell "Parameters"
            cell.metadata["mystnb"] = {"code_prompt_show": "Parameters", "code_prompt_hide": "Hide the parameters"}
        if "outputs" in cell:
            cell["outputs"] = [lighter(output) for output in cell["outputs"] if not is_progress_bar(output)]
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)
    return nb


def is_progress_bar(output: Any) -> bool:
    """A tqdm bar in a notebook: a widget whose text is frozen at "0%|" once the page is static.

    tqdm's notebook bar ignores ``TQDM_DISABLE`` (it passes ``disable=False`` itself), so the executed
    notebooks are cleaned here instead of in every library call.
    """
    data = output.get("data", {}) if output.get("output_type") == "display_data" else {}
    return WIDGET_MIME in data and bool(PROGRESS_TEXT.search(str(data.get("text/plain", ""))))


def lighter(output: Any, min_bytes: int = JPEG_FROM_BYTES, quality: int = JPEG_QUALITY) -> Any:
    """``output`` with a large PNG figure replaced by a JPEG when that is at most half its size.

    Scenes, chips and heatmap galleries are photographs to a codec: as PNG they made the HTML book
    (which also ships each notebook's source) several times heavier than as JPEG. Line plots compress
    well as PNG, stay small and keep their sharp text, so they are left alone. Deterministic: the same
    PNG gives the same JPEG bytes.
    """
    import base64
    import io

    from PIL import Image

    data = output.get("data", {}) if output.get("output_type") in ("display_data", "execute_result") else {}
    png = data.get("image/png")
    if not png or "image/jpeg" in data:
        return output
    raw = base64.b64decode(png)
    if len(raw) < min_bytes:
        return output
    image = Image.open(io.BytesIO(raw))
    flat = Image.new("RGB", image.size, "white")
    flat.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
    buffer = io.BytesIO()
    flat.save(buffer, "JPEG", quality=quality, optimize=True)
    if buffer.tell() > len(raw) // 2:
        return output
    data["image/jpeg"] = base64.b64encode(buffer.getvalue()).decode("ascii")
    del data["image/png"]
    return output


def pair_differences(source: Path) -> list[str]:
    """Why ``source`` and its ``.ipynb`` differ (empty when in sync)."""
    import nbformat

    notebook = notebook_of(source)
    if not notebook.exists():
        return [f"{notebook} is missing: run `python -m build_tools.book sync`"]
    expected, actual = read_source(source), nbformat.read(notebook, as_version=4)
    problems = []
    if _code_sources(expected) != _code_sources(actual):
        problems.append(f"{notebook} code cells differ from {source.name}: run `python -m build_tools.book sync`")
    elif _text_sources(expected) != _text_sources(actual):
        problems.append(f"{notebook} markdown differs from {source.name}: run `python -m build_tools.book sync`")
    return problems


def sync(root: Path | None = None, sources: Iterable[Path] | None = None) -> list[Path]:
    """Write each source's ``.ipynb`` where it is missing or out of date; return the written ones.

    A notebook whose cells already match its source is left alone, outputs included, so that an
    executed book is not wiped by a no-op sync.
    """
    import nbformat

    from schoolvision.io.atomic import write_text

    root = root or repo_root()
    written = []
    for source in sources if sources is not None else chapter_sources(root):
        if not pair_differences(source):
            continue
        write_text(notebook_of(source), nbformat.writes(read_source(source)) + "\n")
        written.append(notebook_of(source))
    return written


# --------------------------------------------------------------------------------------------------
# Profiles and execution
# --------------------------------------------------------------------------------------------------
def profile_path(profile: str | Path, root: Path | None = None) -> Path:
    """``cpu``/``gpu``/``auto`` -> ``book/params/<name>.yaml``; anything else is a YAML file anywhere.

    A relative path is looked up from the current folder first, then from the repository root, so
    ``make book PROFILE=../my_project/mine.yaml`` and ``--profile mine.yaml`` both find the user's file.
    """
    root = root or repo_root()
    profile = str(profile)
    if profile == "auto":
        profile = detect_profile()
    if profile in ("cpu", "gpu"):
        path = root / "book" / "params" / f"{profile}.yaml"
    else:
        here = Path(profile).expanduser()
        path = here.resolve() if here.is_file() else root / here
    if not path.is_file():
        raise UserError("parameter profile not found: use cpu, gpu or a YAML file", path)
    return path


def detect_profile() -> str:
    """``gpu`` when CUDA is usable, else ``cpu``."""
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def chapter_parameters(profile_file: Path, chapter: str, declared: Iterable[str] | None = None) -> dict:
    """``common`` merged with the chapter's section, keeping only parameters the notebook declares."""
    import yaml

    profile = yaml.safe_load(profile_file.read_text()) or {}
    if not isinstance(profile, dict):
        raise UserError("a profile is a mapping: common: {...} and one section per chapter", profile_file)
    params = {**(profile.get("common") or {}), **(profile.get(chapter) or {})}
    if declared is not None:
        declared = set(declared)
        params = {key: value for key, value in params.items() if key in declared}
    return params


def declared_parameters(notebook: Path) -> set[str]:
    """Names in the notebook's ``parameters`` cell (papermill's own parser)."""
    import papermill

    return set(papermill.inspect_notebook(str(notebook)))


def execute(
    profile: str | Path = "auto",
    only: Iterable[str] | None = None,
    root: Path | None = None,
    timings_file: Path | None = None,
    output_dir: Path | None = None,
) -> dict[str, float]:
    """Run the toc's notebooks in order with papermill, from the repository root.

    The executed notebooks replace the book's own (what ``make book`` renders), or go to
    ``output_dir`` (one ``NN_name.ipynb`` per chapter) to leave the book untouched. Stops at the
    first failing chapter (later chapters read its outputs). Returns seconds per chapter.
    """
    import nbformat
    import papermill

    from schoolvision.io.atomic import write_json, write_text

    root = root or repo_root()
    profile_file = profile_path(profile, root)
    wanted = set(only or [])
    sources = chapter_sources(root)
    unknown = wanted - {s.stem for s in sources}
    if unknown:
        raise UserError(f"no chapter named {', '.join(sorted(unknown))} in _toc.yml", root / "_toc.yml")
    # Progress bars belong in a terminal; in the published page they are stderr noise.
    os.environ.setdefault("TQDM_DISABLE", "1")
    timings: dict[str, float] = {}
    slow: dict[str, list] = {}
    for source in sources:
        if wanted and source.stem not in wanted:
            continue
        notebook = notebook_of(source)
        if not notebook.exists():
            raise UserError("notebook missing: run `python -m build_tools.book sync` first", notebook)
        params = chapter_parameters(profile_file, source.stem, declared_parameters(notebook))
        print(f"[book] {source.stem}: {profile_file.name} {json.dumps(params, sort_keys=True)}", flush=True)
        executed = notebook if output_dir is None else Path(output_dir) / notebook.name
        executed.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(notebook), str(executed), parameters=params, cwd=str(root), kernel_name="python3",
                progress_bar=False, request_save_on_cell_execute=False, report_mode=False,
                # the kernel's own log (TCP transport notice, shutdown chatter) is not the chapter's output
                extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
            )
        finally:
            timings[source.stem] = round(time.perf_counter() - start, 1)
            if executed.exists():
                nb = nbformat.read(executed, as_version=4)
                slow[source.stem] = slowest_cells(nb)
                nb = normalise(nb)
                write_text(executed, nbformat.writes(nb) + "\n")
        if timings_file is not None:  # after every chapter: the results page (last) reads this build's times
            write_json(timings_file, execution_record(timings_file, profile_file.name, timings, slow))
        print(f"[book] {source.stem}: done in {timings[source.stem]:.0f} s", flush=True)
    return timings


def slowest_cells(nb: Any, n: int = 5) -> list[list]:
    """[cell index, seconds, first line] of the ``n`` slowest code cells, from papermill's timings."""
    rows = []
    for index, cell in enumerate(nb.cells):
        seconds = cell.metadata.get("papermill", {}).get("duration")
        if cell.cell_type == "code" and seconds:
            rows.append([index, round(float(seconds), 1), cell.source.strip().splitlines()[0][:80]])
    return sorted(rows, key=lambda row: -row[1])[:n]


def execution_record(path: Path, profile: str, timings: dict[str, float],
                     slow: dict[str, list] | None = None) -> dict[str, Any]:
    """The record ``_build/execution.json`` holds: seconds per chapter of the latest run of each.

    Chapters run alone (``--only``) update their entry in a record of the same profile; another profile
    starts a new record. ``machine`` says what the seconds were measured on (CPU cores, GPU name).
    """
    previous = {}
    if Path(path).is_file():
        try:
            previous = json.loads(Path(path).read_text())
        except json.JSONDecodeError:
            previous = {}
    seconds = dict(previous.get("seconds", {})) if previous.get("profile") == profile else {}
    seconds.update(timings)
    cells = dict(previous.get("slowest_cells", {})) if previous.get("profile") == profile else {}
    cells.update(slow or {})
    return {"profile": profile, "machine": machine(), "seconds": seconds, "total": round(sum(seconds.values()), 1),
            "slowest_cells": cells}


def machine() -> dict[str, Any]:
    """CPU cores and the GPU's name (``None`` without CUDA): what a chapter's seconds depend on."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpus": os.cpu_count(), "gpu": gpu}


def output_problems(notebook: Path) -> list[str]:
    """Errors, stderr and stray ``Text(...)``/``<Figure ...>`` outputs in an executed notebook."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    problems = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            where = f"{notebook.name} cell {index}"
            if output.output_type == "error":
                problems.append(f"{where}: {output.ename}: {output.evalue}")
            elif is_progress_bar(output) or PROGRESS_TEXT.search(str(output.get("text", ""))):
                problems.append(f"{where}: progress-bar residue (pass progress=False)")
            elif output.output_type == "stream" and output.name == "stderr":
                problems.append(f"{where}: stderr output: {output.text.strip()[:120]!r}")
            elif output.output_type == "execute_result":
                text = output.get("data", {}).get("text/plain", "")
                if STRAY_OUTPUT.match(text):
                    problems.append(f"{where}: stray output {text[:60]!r} (end the plot line with ';')")
    return problems


def check(root: Path | None = None, executed: bool = False) -> list[str]:
    """Every problem with the book's notebooks: unsynced pairs, and (executed) bad outputs."""
    root = root or repo_root()
    problems = []
    for source in chapter_sources(root, existing_only=False):
        if not source.exists():
            problems.append(f"{source.relative_to(root)} listed in _toc.yml does not exist")
            continue
        problems += pair_differences(source)
        if executed and notebook_of(source).exists():
            problems += output_problems(notebook_of(source))
    return problems


def flat_parameters(profile: str, chapter: str, root: Path | None = None) -> str:
    """A flat YAML of one chapter's parameters in a profile, for ``papermill -f``."""
    import yaml

    root = root or repo_root()
    notebook = root / "book" / f"{chapter}.ipynb"
    declared = declared_parameters(notebook) if notebook.exists() else None
    params = chapter_parameters(profile_path(profile, root), chapter, declared)
    return yaml.safe_dump(copy.deepcopy(params), sort_keys=True)


def glued_values(notebook_text: str) -> dict[str, Any]:
    """The values a notebook glued (papermill/scrapbook records), by name, from its JSON text."""
    import ast

    import nbformat

    values = {}
    for cell in nbformat.reads(notebook_text, as_version=4).cells:
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            text = output.get("data", {}).get("application/papermill.record/text/plain")
            if name and text is not None:
                try:
                    values[name] = ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    values[name] = text
    return values


def committed_intervals(ref: str = "HEAD", root: Path | None = None) -> dict[str, dict[str, Any]]:
    """The committed chapter 2's test AUPRC and F1 and their printed intervals, read from git at ``ref``.

    ``{"auprc": {"value": v, "interval": [low, high]}, "f1": ...}``.
    """
    import subprocess

    text = subprocess.run(["git", "show", f"{ref}:book/02_training.ipynb"], cwd=root or repo_root(), check=True,
                          capture_output=True, text=True).stdout
    book = glued_values(text)
    return {key: {"value": float(book[f"ch2_test_{key}"]),
                  "interval": [float(book[f"ch2_{key}_lo"]), float(book[f"ch2_{key}_hi"])]} for key in ("auprc", "f1")}


def reproduced(ref: str = "HEAD", profile: str = "cpu", root: Path | None = None) -> dict[str, Any]:
    """This machine's chapter 2 run against the committed chapter 2's printed intervals (AUPRC and F1).

    The committed notebook is read from git (``ref``), the run from the profile's ``run_dir``: after
    ``make book`` on another machine, it says whether the same recipe landed inside the book's intervals.
    """
    from schoolvision.io.folders import RunFolder

    root = root or repo_root()
    book = committed_intervals(ref, root)
    run_dir = chapter_parameters(profile_path(profile, root), "02_training").get("run_dir", "runs/quick")
    metrics = RunFolder(root / run_dir).read_metrics("test")
    report: dict[str, Any] = {"run": str(run_dir), "precision": metrics.get("training_precision")}
    for key, entry in book.items():
        (low, high), value = entry["interval"], float(metrics[key])
        report[key] = {"here": round(value, 4), "book": round(entry["value"], 4),
                       "interval": [round(low, 4), round(high, 4)], "inside": low - 1e-9 <= value <= high + 1e-9}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m build_tools.book", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("sync", help="write .ipynb from the jupytext sources where they differ")
    p_exec = sub.add_parser("execute", help="run the chapters with papermill, in place")
    p_exec.add_argument("--profile", default="auto", help="cpu, gpu, auto (default) or a YAML file (yours)")
    p_exec.add_argument("--only", nargs="*", default=None, help="chapter names, e.g. 02_training")
    p_exec.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="write the executed notebooks here instead of over the book's own")
    p_exec.add_argument("--timings", type=Path, default=None, help="write seconds per chapter to this JSON")
    p_params = sub.add_parser("params", help="print one chapter's flat parameters (for papermill -f)")
    p_params.add_argument("--profile", default="auto")
    p_params.add_argument("chapter")
    p_check = sub.add_parser("check", help="fail when a pair is out of sync (or an executed notebook is dirty)")
    p_check.add_argument("--executed", action="store_true", help="also check outputs of executed notebooks")
    sub.add_parser("list", help="print the notebooks in _toc.yml order")
    sub.add_parser("profile", help="print the profile `auto` picks on this machine")
    p_repro = sub.add_parser("reproduced", help="this machine's chapter 2 run against the committed intervals (JSON)")
    p_repro.add_argument("--ref", default="HEAD", help="the commit whose chapter 2 is the reference (default: HEAD)")
    p_repro.add_argument("--profile", default="cpu", help="the profile whose run_dir holds this machine's run")
    args = parser.parse_args(argv)
    try:
        if args.command == "sync":
            for path in sync():
                print(f"[book] wrote {path.relative_to(repo_root())}")
        elif args.command == "execute":
            execute(args.profile, args.only, timings_file=args.timings, output_dir=args.out)
        elif args.command == "params":
            sys.stdout.write(flat_parameters(args.profile, args.chapter))
        elif args.command == "check":
            problems = check(executed=args.executed)
            for problem in problems:
                print(f"[book] {problem}", file=sys.stderr)
            return 1 if problems else 0
        elif args.command == "list":
            root = repo_root()
            print(" ".join(str(notebook_of(s).relative_to(root)) for s in chapter_sources(root)))
        elif args.command == "profile":
            print(detect_profile())
        elif args.command == "reproduced":
            print(json.dumps(reproduced(args.ref, args.profile)))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # papermill's execution error: the notebook on disk shows the traceback
        if type(error).__name__ != "PapermillExecutionError":
            raise
        print(f"error: a chapter failed: {error.ename}: {error.evalue} (cell {error.exec_count}; "
              "its traceback is in the notebook's outputs)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
