"""Packaging and book configuration: the two dependency lists agree, the book config is what the build needs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _spec(requirement: str) -> str:
    return requirement.replace(" ", "").lower().replace("_", "-")


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def conda_pip() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return [r for r in pip if not r.startswith("-e")]


def test_runtime_dependencies_match_environment_yml(pyproject, conda_pip):
    runtime = {_spec(r) for r in pyproject["project"]["dependencies"]}
    extras = {_spec(r) for group in pyproject["project"]["optional-dependencies"].values() for r in group}
    conda = {_spec(r) for r in conda_pip}
    assert runtime - conda == set(), "runtime dependencies missing (or with other bounds) in environment.yml"
    assert conda - runtime - extras == set(), "environment.yml lists packages pyproject.toml does not"


def test_every_dependency_is_bounded_and_listed_once(pyproject):
    requirements = pyproject["project"]["dependencies"] + [
        r for group in pyproject["project"]["optional-dependencies"].values() for r in group
    ]
    names = [_name(r) for r in requirements]
    assert len(names) == len(set(names)), "a package appears twice in pyproject.toml"
    assert all(re.search(r"[<>=~]", r) for r in requirements), "every dependency needs a version bound"


def test_jupyter_book_is_pinned_to_1x(pyproject, conda_pip):
    book = [r for r in pyproject["project"]["optional-dependencies"]["book"] if _name(r) == "jupyter-book"]
    conda = [r for r in conda_pip if _name(r) == "jupyter-book"]
    for requirement in book + conda:
        assert _spec(requirement) == "jupyter-book>=1.0.4,<2"
    assert book and conda


def test_config_never_executes_and_off_is_quoted():
    text = (ROOT / "_config.yml").read_text()
    assert re.search(r'^\s*execute_notebooks:\s*"off"', text, re.M), 'execute_notebooks must be the quoted string "off"'
    config = yaml.safe_load(text)
    assert config["execute"]["execute_notebooks"] == "off"  # unquoted off would load as False
    assert config["only_build_toc_files"] is True
    assert config["sphinx"]["config"]["nb_execution_raise_on_error"] is True
    excluded = set(config["exclude_patterns"])
    assert {"_build", ".venv", "data/**", "runs/**", "outputs/**", "**/*.py"} <= excluded


def test_every_toc_entry_exists():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    entries = [toc["root"]] + [c["file"] for c in toc["chapters"]]
    assert entries[0] == "book/intro"
    for entry in entries:
        page = [ROOT / f"{entry}{suffix}" for suffix in (".md", ".ipynb")]
        assert any(p.is_file() for p in page), f"{entry} in _toc.yml has no .md or .ipynb"
        if (ROOT / f"{entry}.ipynb").exists():
            assert (ROOT / f"{entry}.py").is_file(), f"{entry}.ipynb has no jupytext source {entry}.py"


def test_toc_lists_every_chapter_once_in_order():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    chapters = [Path(c["file"]).name for c in toc["chapters"]]
    # the results page gathers every chapter's figures, so it comes (and runs) last; the others in number order
    assert chapters[-1] == "07_results"
    assert chapters[:-1] == sorted(chapters[:-1]) and len(set(chapters)) == len(chapters)
    on_disk = sorted(p.stem for p in (ROOT / "book").glob("[0-9][0-9]_*.py"))
    assert set(on_disk) <= set(chapters), "a chapter source in book/ is missing from _toc.yml"


def test_makefile_has_the_two_commands():
    text = (ROOT / "Makefile").read_text()
    for target in ("book:", "test:", "clean:"):
        assert re.search(rf"^{target}", text, re.M)
    assert "--warningiserror" in text and "--nbval-lax" in text


def test_plain_pytest_is_fast_and_make_test_and_ci_run_everything(pyproject):
    addopts = pyproject["tool"]["pytest"]["ini_options"]["addopts"]
    assert " ".join(addopts) == "-m not slow", "plain pytest should deselect the slow tests"
    recipe = re.search(r"^test-lib:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    runs_all = recipe and re.search(r"pytest .*-m [\"']slow or not slow[\"']", recipe.group(1))
    assert runs_all, "make test must run the slow tests too"
    assert re.search(r"^test: .*\btest-lib\b", (ROOT / "Makefile").read_text(), re.M)
    assert re.search(r'^step "make test" make test$', (ROOT / ".ci" / "run").read_text(), re.M), "CI must run make test"


def test_readme_layout_names_every_module_of_the_package():
    """The README's layout section is the map a new developer reads: every subpackage and module is on it."""
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("```\nschoolvision/\n"):readme.index("build_tools/book.py")]
    sections: dict[str, str] = {}
    current = None
    for line in block.splitlines()[2:]:
        head = line[2:].split(" ", 1)[0] if line.startswith("  ") and not line.startswith("   ") else ""
        if head.endswith("/"):
            current = head.rstrip("/")
            sections[current] = ""
        if current is not None:
            sections[current] += line + "\n"
    package = ROOT / "schoolvision"
    subpackages = {p.parent.name for p in package.glob("*/__init__.py")}
    assert subpackages <= set(sections), subpackages - set(sections)
    assert set(sections) <= subpackages, set(sections) - subpackages  # no folder that is gone
    for name in sorted(subpackages):
        modules = {p.stem for p in (package / name).glob("*.py")} - {"__init__"}
        missing = sorted(m for m in modules if name != "commands" and f"{m}.py" not in sections[name])
        assert not missing, f"README layout: schoolvision/{name}/ does not name {missing}"


def test_package_data_ships_every_data_file_the_package_reads(pyproject):
    """A data file the code opens (the demo's regions.toml) is in the package data, or a wheel install breaks."""
    patterns = pyproject["tool"]["setuptools"]["package-data"]["schoolvision"]
    package = ROOT / "schoolvision"
    data = [p for p in package.rglob("*") if p.is_file() and p.suffix in {".toml", ".json", ".yaml", ".csv"}]
    assert data, "the demo's regions.toml should be found"
    for path in data:
        rel = path.relative_to(package)
        assert any(rel.match(pattern) for pattern in patterns), f"{rel} is not in [tool.setuptools.package-data]"
