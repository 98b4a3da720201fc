"""The book as a product: paired sources, chapter conventions, profiles, nbval that can fail, results page."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from build_tools import book
from schoolvision.book import notebook
from schoolvision.book.results import default_sources, format_value, gather_results
from schoolvision.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SOURCES = book.chapter_sources(ROOT)
MAX_CELL_LINES = 12
NBVAL_TAG = "nbval-check-output"  # nbval reads it from the cell tags (--nbval-lax checks only these)


def _code_cells(source: Path) -> list[str]:
    nb = book.read_source(source)
    return [c.source for c in nb.cells if c.cell_type == "code"]


def _executed(notebook: Path) -> bool:
    return notebook.exists() and any(c.get("outputs") for c in nbformat.read(notebook, as_version=4).cells)


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_source_and_notebook_are_in_sync(source):
    assert book.pair_differences(source) == []


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_chapter_starts_with_a_literal_parameters_cell(source):
    nb = book.read_source(source)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", []), "first code cell must be tagged parameters"
    statements = ast.parse(first.source).body
    assert statements, "the parameters cell declares no parameter"
    for statement in statements:
        assert isinstance(statement, ast.Assign) and len(statement.targets) == 1, ast.unparse(statement)
        ast.literal_eval(statement.value)  # raises on anything but a literal


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_cells_only_call_the_library(source):
    # the parameters cell holds literals only (checked above), one per line: its length is not logic
    cells = [c.source for c in book.read_source(source).cells
             if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])]
    for cell in cells:
        tree = ast.parse(cell)
        defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        assert not defs, f"definitions belong in schoolvision/, not in a chapter:\n{cell}"
        # imports are not logic: a cell may import what the chapter needs and still do one thing; statements,
        # not physical lines, are counted, so that a call the formatter wraps at 88 columns counts once
        statements = [n for n in ast.walk(tree)
                      if isinstance(n, ast.stmt) and not isinstance(n, (ast.Import, ast.ImportFrom))]
        assert len(statements) <= MAX_CELL_LINES, (
            f"cell longer than {MAX_CELL_LINES} statements (imports aside):\n{cell}")


PRODUCT = ("io", "data", "demo", "model", "train", "explain", "cluster", "scan", "review", "rounds", "plotting",
           "commands")
"""The library's packages a chapter may import beside the book layer (``schoolvision.book``)."""


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_chapters_import_only_the_library_and_the_book_layer(source):
    """A chapter's own imports are the library's public names and the book layer's helpers, nothing else of ours."""
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            modules, names = [a.name for a in node.names], []
        elif isinstance(node, ast.ImportFrom):
            modules, names = [node.module or ""], [a.name for a in node.names]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            assert parts[0] not in ("build_tools", "tests", "fixtures"), f"{source.name} imports {module}"
            if parts[0] == "schoolvision":
                assert len(parts) > 1 and parts[1] in ("book", *PRODUCT), (
                    f"{source.name} imports {module}: chapters import the library's packages or schoolvision.book")
                assert not any(n.startswith("_") for n in names), f"{source.name} imports a private name of {module}"


def test_no_product_module_imports_the_book_layer():
    """The book layer sits above the product (also an import-linter contract): the tool runs without it."""
    for path in (ROOT / "schoolvision").rglob("*.py"):
        if path.parent.name == "book":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            module = (node.module or "") if isinstance(node, ast.ImportFrom) else ""
            assert not module.startswith("schoolvision.book"), f"{path.relative_to(ROOT)} imports {module}"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_checked_cells_hold_no_plots(source):
    """nbval runs cells without history, so IPython misses a trailing ';' and the Text(...) repr appears."""
    for cell in book.read_source(source).cells:
        if cell.cell_type == "code" and NBVAL_TAG in cell.metadata.get("tags", []):
            assert not cell.source.rstrip().endswith(";"), f"checked cell ends with a ';' plot line:\n{cell.source}"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_nbval_markers_are_tags_not_comments(source):
    """A `# NBVAL_CHECK_OUTPUT` comment shows in the page; the cell tag does the same and shows nothing."""
    for cell in _code_cells(source):
        assert "NBVAL_" not in cell, f"{source.name}: use `# %% tags=[\"{NBVAL_TAG}\"]`, not a comment:\n{cell}"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_chapter_follows_the_skeleton(source):
    """The header (prerequisites table, time to run, what it writes) and the closing sections of every chapter."""
    text = "\n".join(c.source for c in book.read_source(source).cells if c.cell_type == "markdown").lower()
    parts = ("what you will learn", "| prerequisite | importance |", "**time to run**", "**writes**", "summary",
             "## with real data", "## exercises", "{admonition} solution\n:class: dropdown")
    for part in parts:
        assert part in text, f"{source.name}: no '{part}' (chapter 1 shows the skeleton)"
    time_key = f"07_results.ipynb::res_time_{source.stem}:s" if source.stem != "07_results" else "**time to run**"
    assert time_key in text, f"{source.name}: the time to run is glued from the results page ({time_key})"
    # every exercise's solution is a rerun of the chapter with a changed parameter
    assert text.count("{admonition} solution") >= 1 and f"book/{source.stem}.ipynb" in text.split("## exercises")[1]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_executed_notebook_is_clean(source):
    notebook = book.notebook_of(source)
    if not _executed(notebook):
        pytest.skip("not executed yet (make book)")
    assert book.output_problems(notebook) == []


def test_profiles_have_the_same_shape_and_only_declared_parameters():
    chapters = {s.stem for s in book.chapter_sources(ROOT, existing_only=False)}
    params = ROOT / "book" / "params"
    profiles = {name: yaml.safe_load((params / f"{name}.yaml").read_text()) for name in ("cpu", "gpu")}
    # the CPU profile runs the chapters' defaults (= the library's), so it pins fewer chapters than the GPU one
    assert set(profiles["cpu"]) <= set(profiles["gpu"])
    assert set(profiles["cpu"]) - {"common"} <= chapters
    declared = {s.stem: book.declared_parameters(book.notebook_of(s)) for s in SOURCES if book.notebook_of(s).exists()}
    for name, profile in profiles.items():
        for chapter, params in profile.items():
            if chapter == "common":
                if len(declared) == len(chapters):  # only meaningful once every chapter exists
                    unused = set(params) - set().union(*declared.values())
                    assert not unused, f"{name}.yaml common parameters no chapter declares: {unused}"
            elif chapter in declared:
                unknown = set(params) - declared[chapter]
                assert not unknown, f"{name}.yaml sets {unknown} that {chapter} does not declare"


def test_chapter_parameters_merge_common_and_keep_declared(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("common: {seed: 1, run_dir: runs/a}\n02_training: {seed: 2, epochs: 3}\n")
    assert book.chapter_parameters(profile, "02_training") == {"seed": 2, "run_dir": "runs/a", "epochs": 3}
    assert book.chapter_parameters(profile, "02_training", {"epochs", "seed"}) == {"seed": 2, "epochs": 3}
    assert book.chapter_parameters(profile, "03_gradcam", {"run_dir"}) == {"run_dir": "runs/a"}


def test_resolve_from_root_from_book_and_from_elsewhere(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    assert notebook.resolve("data/demo") == ROOT / "data/demo"
    monkeypatch.chdir(ROOT / "book")
    assert notebook.resolve("data/demo") == ROOT / "data/demo"
    assert notebook.resolve(tmp_path) == tmp_path
    other = tmp_path / "project"
    (other / "book").mkdir(parents=True)
    (other / "_config.yml").write_text("title: x\n")
    monkeypatch.chdir(other / "book")
    assert notebook.resolve("runs/quick") == other / "runs/quick"
    assert notebook.resolve_paths("a", "b") == (other / "a", other / "b")
    assert notebook.resolve_paths(run_dir="r").run_dir == other / "r"


def test_require_names_the_chapter_to_run_first(monkeypatch, tmp_path):
    (tmp_path / "_config.yml").write_text("title: x\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"run chapter 02_training first \(papermill book/02_training.ipynb"):
        notebook.require("runs/quick/best.pt", "02_training")
    (tmp_path / "here").mkdir()
    assert notebook.require("here", "01_data") == tmp_path / "here"


def test_sync_is_deterministic_and_keeps_executed_outputs(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "_config.yml").write_text("title: x\n")
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: book/01_x\n")
    (tmp_path / "book" / "intro.md").write_text("# x\n")
    source = tmp_path / "book" / "01_x.py"
    source.write_text('# %% [markdown]\n# # X\n\n# %% tags=["parameters"]\nn = 1\n\n# %%\nprint(n)\n')
    ipynb = source.with_suffix(".ipynb")
    assert book.sync(tmp_path) == [ipynb]
    first = ipynb.read_bytes()
    ipynb.unlink()
    assert book.sync(tmp_path) == [ipynb] and ipynb.read_bytes() == first  # same source, same bytes
    nb = nbformat.reads(first.decode(), as_version=4)
    assert [c["id"] for c in nb.cells] == ["cell-000", "cell-001", "cell-002"]
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    nbformat.write(nb, ipynb)
    assert book.sync(tmp_path) == []  # code unchanged: outputs kept
    assert nbformat.read(ipynb, as_version=4).cells[2].outputs[0]["text"] == "1\n"
    source.write_text(source.read_text().replace("print(n)", "print(n + 1)"))
    assert book.check(tmp_path) != []
    assert book.sync(tmp_path) == [ipynb]
    assert nbformat.read(ipynb, as_version=4).cells[2].source == "print(n + 1)"
    assert book.check(tmp_path) == []


def test_output_problems_catch_stray_reprs_and_stderr(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("plt.title('x')")
    cell.outputs = [
        nbformat.v4.new_output("execute_result", data={"text/plain": "Text(0.5, 1.0, 'x')"}, execution_count=1),
        nbformat.v4.new_output("stream", name="stderr", text="UserWarning: something\n"),
    ]
    nb.cells = [cell]
    nbformat.write(nb, tmp_path / "n.ipynb")
    problems = book.output_problems(tmp_path / "n.ipynb")
    assert len(problems) == 2 and "stray output" in problems[0] and "stderr" in problems[1]


def _progress_widget(text: str) -> nbformat.NotebookNode:
    data = {"text/plain": text, book.WIDGET_MIME: {"model_id": "abc", "version_major": 2, "version_minor": 0}}
    return nbformat.v4.new_output("display_data", data=data)


def test_progress_bars_are_stripped_and_flagged(tmp_path):
    """tqdm's notebook bar ignores TQDM_DISABLE: normalise() drops it, output_problems() names any left."""
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("fit(config)")
    kept = nbformat.v4.new_output("stream", name="stdout", text="done\n")
    cell.outputs = [_progress_widget("epoch 1/6:   0%|          | 0/41 [00:00<?, ?it/s]"), kept]
    injected = nbformat.v4.new_code_cell("n = 2", metadata={"tags": [book.INJECTED_TAG]})
    nb.cells = [injected, cell]
    nbformat.write(nb, tmp_path / "dirty.ipynb")
    assert any("progress-bar residue" in p for p in book.output_problems(tmp_path / "dirty.ipynb"))
    clean = book.normalise(nb)
    assert clean.cells[1].outputs == [kept]
    assert clean.cells[0].metadata["mystnb"]["code_prompt_show"] == "Parameters"  # what the intro calls it
    assert "hide-cell" in clean.cells[0].metadata["tags"]
    nbformat.write(clean, tmp_path / "clean.ipynb")
    assert book.output_problems(tmp_path / "clean.ipynb") == []


def test_execution_record_merges_chapters_of_one_profile(tmp_path):
    record = tmp_path / "execution.json"
    record.write_text(json.dumps({"profile": "cpu.yaml", "seconds": {"01_data": 70.0, "02_training": 900.0}}))
    merged = book.execution_record(record, "cpu.yaml", {"02_training": 1000.0})
    assert merged["seconds"] == {"01_data": 70.0, "02_training": 1000.0} and merged["total"] == 1070.0
    assert set(merged["machine"]) == {"cpus", "gpu"}
    assert book.execution_record(record, "gpu.yaml", {"02_training": 60.0})["seconds"] == {"02_training": 60.0}


def test_runtime_sentences_say_what_the_record_holds():
    record = {"profile": "cpu.yaml", "machine": {"cpus": 2, "gpu": None}, "seconds": {"02_training": 1764.0}}
    sentence = notebook.runtime_sentence(record, "02_training")
    assert "29.4 minutes" in sentence and "cpu profile" in sentence and "2 CPU cores" in sentence
    assert "no GPU time" in sentence and "`" not in sentence  # glue:text shows no Markdown
    assert "not in this build's execution record" in notebook.runtime_sentence(record, "06_mapping")
    gpu = {"profile": "gpu.yaml", "machine": {"cpus": 16, "gpu": "NVIDIA H200"}, "seconds": {"01_data": 20.0}}
    assert "20 s with the gpu profile on NVIDIA H200" in notebook.runtime_sentence(gpu, "01_data")
    assert "no CPU time" in notebook.runtime_sentence(gpu, "01_data")


def test_results_page_comes_last_and_glues_every_chapters_time():
    """It reads every chapter's files and gives each header its time, so it runs (and reads) last."""
    chapters = notebook.toc_chapters(ROOT)
    assert chapters[-1] == "07_results" and chapters[0] == "01_data"
    assert "glue_runtimes(\"res\", toc_chapters(), record)" in (ROOT / "book" / "07_results.py").read_text()


def test_glue_values_show_unquoted_and_as_python_numbers():
    import numpy as np
    from IPython.core.formatters import format_display_data

    assert format_display_data(notebook.glue_value("cpu"))[0]["text/plain"] == "cpu"  # a str would be 'cpu'
    value = notebook.glue_value(np.float64(0.25))
    assert type(value) is float and format_display_data(value)[0]["text/plain"] == "0.25"
    assert type(notebook.glue_value(np.int64(409))) is int


def _tiny_notebook(path: Path, stored: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    checked = nbformat.v4.new_code_cell("print(6 * 7)", id="cell-000", execution_count=1)
    checked.metadata["tags"] = [NBVAL_TAG]  # as the chapters mark their checked cells
    checked.outputs = [nbformat.v4.new_output("stream", name="stdout", text=stored)]
    free = nbformat.v4.new_code_cell("import time\nprint(time.time())", id="cell-001", execution_count=2)
    free.outputs = [nbformat.v4.new_output("stream", name="stdout", text="0\n")]  # unchecked: may differ
    nb.cells = [checked, free]
    nbformat.write(nb, path)
    return path


def _nbval(notebook: Path) -> subprocess.CompletedProcess:
    sanitize = ROOT / "book" / "nbval_sanitize.cfg"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
           "--nbval-sanitize-with", str(sanitize), str(notebook)]
    return subprocess.run(cmd, cwd=notebook.parent, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_nbval_fails_when_a_checked_output_changes(tmp_path):
    good = _nbval(_tiny_notebook(tmp_path / "good.ipynb", "42\n"))
    assert good.returncode == 0, good.stdout + good.stderr
    broken = _nbval(_tiny_notebook(tmp_path / "broken.ipynb", "43\n"))
    assert broken.returncode != 0 and "failed" in broken.stdout, broken.stdout


def test_gather_results_reads_what_the_json_holds(tmp_path):
    run, cam, clu, scan = (tmp_path / n for n in ("run", "cam", "clu", "scan"))
    for folder in (run, cam, clu):
        folder.mkdir()
    metrics = {"accuracy": 0.8123, "f1": 0.7, "n_chips": {"school": 12, "not_school": 40},
               "val": {"f1": 0.9}, "confusion_matrix": [[1, 2], [3, 4]], "backbone": "x", "pretrained": True}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (cam / "faithfulness.json").write_text(json.dumps({"n_chips": 5, "table": {"gradcam": {"pointing_game": 0.6}}}))
    (clu / "summary.json").write_text(json.dumps({"k": 3, "silhouette": 0.25, "config": {"seed": 0}}))
    results = gather_results(default_sources(run, cam, clu, scan), root=tmp_path)
    got = {(r.section, r.metric): r.value for r in results.key_numbers.itertuples()}
    assert all(type(v) is int for k, v in got.items() if k[1].startswith(("n_chips", "k")))
    assert got == {
        ("test metrics", "accuracy"): 0.8123, ("test metrics", "f1"): 0.7,
        ("test metrics", "n_chips.school"): 12, ("test metrics", "n_chips.not_school"): 40,
        ("explanation faithfulness", "n_chips"): 5,
        ("clustering", "k"): 3, ("clustering", "silhouette"): 0.25,
    }
    assert results.tables["explanation faithfulness"].loc["gradcam", "pointing_game"] == 0.6
    assert len(results.missing) == 1
    assert "scan/evaluation.json" in results.missing[0] and "06_mapping" in results.missing[0]
    table = results.to_markdown()
    assert "| test metrics | accuracy | 0.812 | `run/metrics.json` |" in table
    assert "| clustering | k | 3 |" in table
    headline = results.headline()  # the page's short table: about fifteen rows, missing ones shown as such
    assert 12 <= len(headline) <= 20 and headline.loc["test F1 at the tuned threshold", "value"] == 0.7
    assert headline.loc["scan recall (schools found)", "value"] is None
    short = results.headline_markdown()
    assert "| test F1 at the tuned threshold | 0.700 | 2 |" in short and "| clusters chosen (k) | 3 | 5 |" in short
    assert "| scan recall (schools found) | — | 6 |" in short


def _notebook_parameters(nb) -> dict:
    """Defaults overridden by papermill's injected values: what the executed notebook really used."""
    params: dict = {}
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if cell.cell_type == "code" and ("parameters" in tags or book.INJECTED_TAG in tags):
            for statement in ast.parse(cell.source).body:
                params[statement.targets[0].id] = ast.literal_eval(statement.value)
    return params


def _results_sources(tmp_path: Path) -> list:
    """A build's results files, written here by the test (never the user's runs/, which is their own build)."""
    run, grad, clus, scan, review = (tmp_path / d for d in ("run", "gradcam", "clustering", "mapping", "review"))
    for folder in (run, grad, clus, scan, review):
        folder.mkdir()
    test = {"auprc": 0.9876, "f1": 0.9123, "precision": 0.88, "recall": 0.95, "roc_auc": 0.99, "ece": 0.031,
            "threshold": 0.42, "accuracy": 0.97, "n_chips": {"school": 34, "not_school": 432}, "val": {"f1": 0.5},
            "training_precision": "fp32", "backbone": "efficientnet_lite0"}
    (run / "metrics.json").write_text(json.dumps(test))
    (grad / "faithfulness.json").write_text(json.dumps({"n_chips": 12, "accuracy": 0.5}))
    (clus / "summary.json").write_text(json.dumps({"k": 4, "silhouette": 0.2345}))
    sources = default_sources(run, grad, clus, scan, review)
    sources[3].path.write_text(json.dumps({"schools": 9, "true_positives": 8, "candidates": 10,
                                           "precision": 0.8, "recall": 0.889}))
    (review / "review_round.json").write_text(json.dumps({"recall_before": 0.25, "recall_after": 0.5,
                                                          "precision_before": 0.75, "precision_after": 0.8,
                                                          "items_reviewed": 18}))
    return sources


def test_results_page_shows_every_number_of_the_json(tmp_path):
    """The key-numbers and headline tables show each number of the results files, rounded, and nothing else."""
    sources = _results_sources(tmp_path)
    results = gather_results(sources, root=tmp_path)
    assert results.missing == []
    shown = results.to_markdown()
    for source in sources:
        for key, value in json.loads(source.path.read_text()).items():
            if isinstance(value, float) and key != "val":
                assert f"| {key} | {format_value(value)} |" in shown, (source.section, key)
    assert "val.f1" not in shown  # the validation report (a setting of the page) stays out
    headline = results.headline_markdown()
    assert "| test AUPRC (chips of the held-out town) | 0.988 | 2 |" in headline
    assert "| school chips in the test town | 34 | 2 |" in headline  # counts stay integers
    assert "| precision after that round | 0.800 | 8 |" in headline  # precision beside recall
    assert "| test metrics | training_precision | fp32 |" in shown  # how the numbers were made, one click away
    assert "efficientnet_lite0" not in shown  # other text settings stay out
    (sources[0].path).unlink()
    assert any("written by chapter 02_training" in m for m in gather_results(sources).missing)


def test_committed_results_page_is_one_consistent_table():
    """The committed page shows one key-numbers table, and each headline value is one of its numbers.

    It is not compared with the run folders on disk: those are whatever build the user made last.
    """
    page = ROOT / "book" / "07_results.ipynb"
    if not _executed(page):
        pytest.skip("results page not executed yet (make book)")
    nb = nbformat.read(page, as_version=4)
    markdown = [o["data"]["text/markdown"] for c in nb.cells for o in c.get("outputs", [])
                if "text/markdown" in o.get("data", {})]
    tables = [m for m in markdown if "| section |" in m]
    assert len(tables) == 1, "the results page should show one key-numbers table"
    values = {line.split("|")[3].strip() for line in tables[0].splitlines()[2:]}
    headline = [m for m in markdown if "| figure |" in m]
    assert len(headline) == 1
    for line in headline[0].splitlines()[2:]:
        value = line.split("|")[2].strip()
        assert value == "—" or value in values, f"headline value {value} is in no results file: {line}"




CHECKS_TAG = "checks"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_every_chapter_checks_its_claims(source):
    """A `checks` cell (compared by nbval) states the prose's claims as formulas over the glued values."""
    cells = [c for c in book.read_source(source).cells
             if c.cell_type == "code" and CHECKS_TAG in c.metadata.get("tags", [])]
    assert len(cells) == 1, "one cell tagged checks per chapter"
    assert NBVAL_TAG in cells[0].metadata["tags"], "nbval must compare the checks cell"
    assert "check_claims(" in cells[0].source


def test_claims_are_formulas_over_glued_values():
    values = {"a": 1.0, "b": 2.0, "name": "fp32"}
    assert notebook.claim_holds("a < b and abs(a - b) == 1", values)
    assert notebook.claim_holds("name == 'fp32'", values)
    assert not notebook.claim_holds("a > b", values)
    for bad in ("__import__('os')", "a.real > 0", "c > 0", "[x for x in (a,)]"):
        with pytest.raises(ValueError):
            notebook.claim_holds(bad, values)


def _claims_notebook(path: Path, a: float) -> Path:
    """A two-cell chapter: glued values, then its checks cell with the outputs of a run where a < b held."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("from schoolvision.book.notebook import check_claims\n"
                                  f"values = {{'a': {a}, 'b': 2.0}}",
                                  execution_count=1),
        nbformat.v4.new_code_cell("ok = check_claims(values, {'a is below b': 'a < b'})", execution_count=2,
                                  metadata={"tags": [CHECKS_TAG, NBVAL_TAG]},
                                  outputs=[nbformat.v4.new_output("stream", name="stdout",
                                                                  text="holds: a is below b\n")]),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_a_planted_wrong_claim_fails_nbval(tmp_path):
    """nbval passes the checks cell while the claim holds and fails it once a value makes the claim false."""
    run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "-o", "addopts="]
    good = subprocess.run([*run, str(_claims_notebook(tmp_path / "good.ipynb", 1.0))], capture_output=True, text=True,
                          cwd=tmp_path)
    assert good.returncode == 0, good.stdout[-2000:]
    planted = subprocess.run([*run, str(_claims_notebook(tmp_path / "planted.ipynb", 3.0))], capture_output=True,
                             text=True, cwd=tmp_path)
    assert planted.returncode == 1 and "DOES NOT HOLD: a is below b" in planted.stdout, planted.stdout[-2000:]


def test_claims_on_values_a_build_did_not_make_are_not_measured(capsys):
    assert notebook.check_claims({"a": 1.0}, {"a is positive": "a > 0", "b is small": "b < 1"})
    assert capsys.readouterr().out == "holds: a is positive\nnot measured here: b is small\n"
    assert not notebook.check_claims({"a": 1.0}, {"a is negative": "a < 0"})


def test_a_claim_that_does_not_hold_prints_its_advice(capsys):
    claims = {"a is positive": ("a > 0", "raise a"), "a is small": ("a < 5", "lower a")}
    assert not notebook.check_claims({"a": -1.0}, claims)
    assert capsys.readouterr().out == "DOES NOT HOLD: a is positive\n  what to try: raise a\nholds: a is small\n"


def test_reproduced_reads_the_committed_intervals_and_this_machines_run(tmp_path):
    """``build_tools.book reproduced``: the committed chapter 2's glued intervals against the run on disk."""
    import subprocess

    from build_tools.book import glued_values, reproduced

    def record(name, value):
        return {"output_type": "display_data", "metadata": {"scrapbook": {"name": name}},
                "data": {"application/papermill.record/text/plain": repr(value)}}

    glued = {"ch2_test_auprc": 0.95, "ch2_auprc_lo": 0.9, "ch2_auprc_hi": 0.99, "ch2_test_f1": 0.8, "ch2_f1_lo": 0.7,
             "ch2_f1_hi": 0.9, "ch2_training_precision": "fp32"}
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("glue")
    cell.outputs = [nbformat.from_dict(record(k, v)) for k, v in glued.items()]
    nb.cells = [cell]
    (tmp_path / "book" / "params").mkdir(parents=True)
    (tmp_path / "book" / "02_training.ipynb").write_text(nbformat.writes(nb))
    (tmp_path / "book" / "params" / "cpu.yaml").write_text("common:\n  run_dir: runs/here\n")
    assert glued_values((tmp_path / "book" / "02_training.ipynb").read_text()) == glued
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "book"], check=True)
    (tmp_path / "runs" / "here").mkdir(parents=True)
    (tmp_path / "runs" / "here" / "metrics.json").write_text(json.dumps({"auprc": 0.93, "f1": 0.95}))
    report = reproduced(root=tmp_path)
    assert report["auprc"]["inside"] and report["auprc"]["interval"] == [0.9, 0.99]
    assert not report["f1"]["inside"] and report["f1"]["here"] == 0.95  # above the book's interval
