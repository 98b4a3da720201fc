"""The key numbers of a book build, read from the run folders' JSON (never typed by hand).

The results page (``book/07_results``) shows them next to the reference project's published
figures; a test checks that the page shows exactly what the JSON files hold.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from schoolvision.io.folders import ClusterFolder, ExplainFolder, RunFolder, ScanFolder

# Figures published by the project this one follows, on its own data (real imagery of Colombian
# schools). A different data set: they say what a good result looks like, they are not a target.
REFERENCE = pd.DataFrame(
    [
        ("test accuracy", "about 0.84", "chip classifier, held-out tiles"),
        ("school F1", "about 0.77-0.80", "chip classifier, held-out tiles"),
    ],
    columns=["metric", "reference value", "what"],
).set_index("metric")

# Sub-trees that are settings or lists rather than results.
SKIP_KEYS = frozenset({"config", "val", "cluster_sizes", "stability_ari", "messages", "table", "table_all_school_chips",
                       "files", "labelling", "scenes", "grid"})


# Text settings that are results too: they say how the numbers were made (shown, never compared as numbers).
TEXT_KEYS = frozenset({"training_precision", "runtime_precision", "status"})


# The results page's headline table: (section, metric, what a reader calls it), about fifteen rows so
# that it fits one screen; every other number is one click away on the page.
HEADLINES = (
    ("test metrics", "auprc", "test AUPRC (chips of the held-out town)"),
    ("test metrics", "f1", "test F1 at the tuned threshold"),
    ("test metrics", "precision", "test precision"),
    ("test metrics", "recall", "test recall"),
    ("test metrics", "ece", "expected calibration error (test)"),
    ("test metrics", "threshold", "decision threshold (tuned on validation)"),
    ("test metrics", "n_chips.school", "school chips in the test town"),
    ("explanation faithfulness", "n_chips", "chips explained (grad-CAM)"),
    ("clustering", "k", "clusters chosen (k)"),
    ("clustering", "silhouette", "silhouette of those clusters"),
    ("scan", "schools", "schools in the scanned town"),
    ("scan", "true_positives", "schools found by the scan"),
    ("scan", "candidates", "candidates the scan reported"),
    ("scan", "precision", "scan precision (candidates on a school)"),
    ("scan", "recall", "scan recall (schools found)"),
    ("review", "recall_before", "new region, towns nobody reviewed: recall before review"),
    ("review", "precision_before", "the same: precision before review"),
    ("review", "recall_after", "recall after one review round (its own threshold)"),
    ("review", "precision_after", "precision after that round"),
)


@dataclass(frozen=True)
class Source:
    """One results file: which page section it feeds and which chapter writes it.

    ``read`` is the folder class's reader for a format one owns (``metrics.json``, ``evaluation.json``);
    other files are read as plain JSON.
    """

    section: str
    path: Path
    chapter: str
    read: Callable[[], dict] | None = None


@dataclass
class Results:
    """Key numbers (one row per metric), extra tables, and what could not be found."""

    key_numbers: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def table(self, section: str) -> pd.DataFrame:
        """The extra table of ``section`` (e.g. the faithfulness table), or a one-row note when absent."""
        if section in self.tables:
            return self.tables[section]
        return pd.DataFrame({"note": [f"no {section} table in this build"]})

    def value(self, section: str, metric: str) -> Any:
        """One key number, or ``None`` when this build has no such file or metric."""
        rows = self.key_numbers[(self.key_numbers["section"] == section) & (self.key_numbers["metric"] == metric)]
        return rows["value"].iloc[0] if len(rows) else None

    def headline(self, headlines: tuple = HEADLINES) -> pd.DataFrame:
        """The page's short table: one row per headline figure, with the chapter that makes it."""
        chapters = {"test metrics": 2, "explanation faithfulness": 3, "clustering": 5, "scan": 6, "review": 8}
        rows = [(label, self.value(section, metric), chapters.get(section, "")) for section, metric, label in headlines]
        columns = ["figure", "value", "chapter"]  # object dtype: counts stay integers next to the metrics
        frame = pd.DataFrame({name: pd.Series([r[i] for r in rows], dtype=object) for i, name in enumerate(columns)})
        return frame.set_index("figure")

    def headline_markdown(self, digits: int = 3) -> str:
        """:meth:`headline` as a Markdown table (no file column: the page stays one screen high)."""
        lines = ["| figure | value | chapter |", "| --- | ---: | ---: |"]
        for figure, value, chapter in self.headline().itertuples():
            lines.append(f"| {figure} | {format_value(value, digits)} | {chapter} |")
        return "\n".join(lines) + "\n"

    def to_markdown(self, digits: int = 3) -> str:
        """The key numbers as a Markdown table (what the results page displays)."""
        lines = ["| section | metric | value | file |", "| --- | --- | --- | --- |"]
        for row in self.key_numbers.itertuples(index=False):
            lines.append(f"| {row.section} | {row.metric} | {format_value(row.value, digits)} | `{row.file}` |")
        return "\n".join(lines) + "\n"


def format_value(value: Any, digits: int = 3) -> str:
    """Integers as they are, floats rounded to ``digits``, missing as an em dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, (bool, str)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.{digits}f}"


def flatten_numbers(obj: dict, prefix: str = "", depth: int = 2) -> dict[str, float | int | str]:
    """Numeric leaves (and :data:`TEXT_KEYS`) of a JSON object as ``{"a.b": value}``, ``depth`` levels deep."""
    out: dict[str, float | int | str] = {}
    for key, value in obj.items():
        if key in SKIP_KEYS:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) or (key in TEXT_KEYS and isinstance(value, str)):
            out[name] = value
        elif isinstance(value, dict) and depth > 1:
            out.update(flatten_numbers(value, f"{name}.", depth - 1))
    return out


def default_sources(
    run_dir: str | Path = "runs/quick",
    gradcam_dir: str | Path = "outputs/gradcam",
    clustering_dir: str | Path = "outputs/clustering",
    mapping_dir: str | Path = "outputs/mapping",
    review_dir: str | Path | None = None,
) -> list[Source]:
    """The results files of a build, in book order (chapter 8's ``review_round.json`` when ``review_dir``)."""
    run, scan = RunFolder(run_dir), ScanFolder(mapping_dir)
    explained, clustered = ExplainFolder(gradcam_dir), ClusterFolder(clustering_dir)
    return [
        Source("test metrics", run.metrics_path(), "02_training", run.read_metrics),
        Source("explanation faithfulness", explained.faithfulness_path, "03_gradcam", explained.read_faithfulness),
        Source("clustering", clustered.summary_path, "05_clustering", clustered.read_summary),
        Source("scan", scan.evaluation_path, "06_mapping", scan.read_evaluation),
    ] + ([] if review_dir is None else [Source("review", Path(review_dir) / "review_round.json", "08_review")])


def gather_results(sources: list[Source], root: str | Path | None = None) -> Results:
    """Read every source that exists; list the others in ``missing`` with the chapter that writes them.

    ``root`` is used only to shorten the file names shown on the page.
    """
    rows, tables, missing = [], {}, []
    for source in sources:
        shown = _shown(source.path, root)
        if not source.path.is_file():
            missing.append(f"{source.section}: {shown} not found (written by chapter {source.chapter})")
            continue
        data = source.read() if source.read is not None else json.loads(source.path.read_text())
        rows += [(source.section, metric, value, shown) for metric, value in flatten_numbers(data).items()]
        table = data.get("table") if isinstance(data, dict) else None
        if isinstance(table, dict) and table and all(isinstance(v, dict) for v in table.values()):
            tables[source.section] = pd.DataFrame.from_dict(table, orient="index")
    columns = ["section", "metric", "value", "file"]
    # object dtype: counts stay integers instead of becoming floats next to the metrics
    frame = pd.DataFrame({name: pd.Series([r[i] for r in rows], dtype=object) for i, name in enumerate(columns)})
    return Results(frame, tables, missing)


def _shown(path: Path, root: str | Path | None) -> str:
    if root is not None:
        try:
            return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return Path(path).as_posix()
