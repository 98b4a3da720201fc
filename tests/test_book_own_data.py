"""Every chapter of the book on a user's first small area, with the example profile CI ships.

A new user's first try: one town (about 0.8 km2, 5 schools) as OpenAerialMap's tiles (each a GeoTIFF warped on its own
to EPSG:4326) and a school CSV with
``latitude,longitude``, and ``book/params/example-own-data.yaml`` with its paths pointed at them. Every
chapter runs with papermill from its jupytext source (so the test follows the ``.py`` a person edits),
``data_dir`` names a folder that does not exist, and chapter 2 must say that the test split is small and
show the cross-validated metrics.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import yaml

from build_tools import book

from fixtures import make_small_area

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "book" / "params" / "example-own-data.yaml"
PREFIX = "my_project/"


def own_profile(work: Path, imagery: Path, schools: Path) -> Path:
    """The example profile with its ``my_project/`` folders under ``work`` and the area's files as inputs."""
    profile = yaml.safe_load(EXAMPLE.read_text())
    for section in profile.values():
        for key, value in section.items():
            if isinstance(value, str) and value.startswith(PREFIX):
                section[key] = str(work / value[len(PREFIX):])
    profile["01_data"].update(imagery=[str(imagery)], schools=str(schools))
    profile["common"].update(data_dir=str(work / "no_such_demo"), device="cpu")  # read by no chapter
    profile["02_training"]["epochs"] = 1  # CI: four models (the run and three folds) of one epoch
    path = work / "own-data.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(profile))
    return path


def run_chapter(source: Path, profile: Path, work: Path) -> nbformat.NotebookNode:
    """Execute one chapter's source with the profile's parameters, from the repository root; the executed notebook."""
    import papermill

    notebook = work / "notebooks" / f"{source.stem}.ipynb"
    notebook.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(book.read_source(source), notebook)
    params = book.chapter_parameters(profile, source.stem, book.declared_parameters(notebook))
    papermill.execute_notebook(str(notebook), str(notebook), parameters=params, cwd=str(ROOT), kernel_name="python3",
                               progress_bar=False, extra_arguments=["--IPKernelApp.log_level=CRITICAL"])
    return nbformat.read(notebook, as_version=4)


def _text(nb: nbformat.NotebookNode) -> str:
    return "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.slow
def test_every_chapter_runs_on_a_small_foreign_area(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    area = make_small_area(tmp_path / "received", oam_zoom=17)  # as OpenAerialMap serves it: per-tile warps
    work = tmp_path / "mine"
    profile = own_profile(work, area.imagery, area.schools_csv)
    executed = {source.stem: run_chapter(source, profile, work) for source in book.chapter_sources(ROOT)}
    assert list(executed) == [s.stem for s in book.chapter_sources(ROOT)] and len(executed) == 8
    for name, nb in executed.items():
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
        assert not errors, f"{name}: {errors}"
    assert not (work / "no_such_demo").exists()  # nothing drawn, nothing read from the demo's folder
    training = _text(executed["02_training"])
    assert "Small data: the test split holds" in training and "out-of-fold (3 folds" in training
    assert (work / "runs" / "book_cv" / "metrics.json").is_file()
    mapping = _text(executed["06_mapping"])
    assert "held-out area: the test blocks" in mapping and "prefilter section skipped" in mapping
    review = _text(executed["08_review"])
    assert "review.html" in review and "-p decisions" in review
    assert (work / "outputs" / "review" / "queue" / "review.html").is_file()
    assert not (work / "outputs" / "review" / "demo").exists()  # no synthetic region on the user's data
    results = _text(executed["07_results"])
    assert "holds: every results file of this build was found" in results  # the round waits for its review
    for name, nb in executed.items():  # a broken claim ends in a next step
        lines = _text(nb).splitlines()
        for i, line in enumerate(lines):
            if line.startswith("DOES NOT HOLD"):
                assert i + 1 < len(lines) and "what to try:" in lines[i + 1], (name, line)
