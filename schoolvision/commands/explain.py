"""`schoolvision explain`: heatmaps for a run's predictions on a chips split, with faithfulness scores.

The runner writes heatmaps, overlays and tables; the galleries (true positives, false positives,
false negatives per method) are drawn here, by :func:`write_galleries`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt

from schoolvision.commands import OVERWRITE_HELP, config_from_args, default_of
from schoolvision.explain.faithfulness import format_table
from schoolvision.explain.methods import METHODS
from schoolvision.explain.runner import ExplainConfig, ExplainSummary, explain_chips
from schoolvision.io.atomic import atomic_path
from schoolvision.model.runtime import RUNTIME_CHOICES
from schoolvision.plotting.explain import plot_gallery


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="run folder (or checkpoint .pt)")
    parser.add_argument("--chips", required=True, type=Path, help="chips folder (chips.csv, dataset.json)")
    parser.add_argument("--method", required=True, help=f"one or more, comma-separated, or 'all': {', '.join(METHODS)}")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--split", default=default_of(ExplainConfig, "split"), help="split to explain (default: %(default)s)"
    )
    parser.add_argument(
        "--limit", type=int, default=default_of(ExplainConfig, "limit"), help="explain at most N chips (seeded sample)"
    )
    parser.add_argument(
        "--layer",
        default=default_of(ExplainConfig, "layer"),
        help="layer to explain (default: the model's last conv block, or the deepest block with a 4x4 "
        "map when the input is too small for that; 'target' forces the last block)",
    )
    parser.add_argument(
        "--target-class",
        default=default_of(ExplainConfig, "target_class"),
        help="class to explain (default: %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, default=default_of(ExplainConfig, "batch_size"))
    parser.add_argument("--device", default=default_of(ExplainConfig, "device"))
    parser.add_argument("--seed", type=int, default=default_of(ExplainConfig, "seed"))
    parser.add_argument(
        "--shap-nsamples",
        type=int,
        default=default_of(ExplainConfig, "shap_nsamples"),
        help="expected-gradients samples per chip",
    )
    parser.add_argument(
        "--runtime", default=default_of(ExplainConfig, "runtime"), choices=RUNTIME_CHOICES,
        help="forward passes (P(school), ROAD): auto (ONNX Runtime on CPU when the onnx extra is installed; int8 "
        "where native and within tolerance), torch, torch-fast, onnx or onnx-int8; the gradient methods always "
        "run in torch (default: %(default)s)",
    )
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def _methods(value: str) -> list[str]:
    """``--method``: ``all`` or a comma-separated list of method names."""
    return list(METHODS) if value == "all" else [m.strip() for m in value.split(",") if m.strip()]


def run(args: argparse.Namespace) -> int:
    config = config_from_args(ExplainConfig, args, renamed={"chips": "chips_dir", "out": "out_dir",
                                                            "method": "methods"}, parsed={"methods": _methods})
    summary = explain_chips(config)
    write_galleries(summary)
    outcomes = ", ".join(f"{k} {v}" for k, v in summary.outcomes.items())
    print(f"explained {summary.n_chips} chips of split {args.split} ({outcomes})")
    print(format_table(summary.table))
    print(f"wrote {summary.out_dir}/faithfulness.json and heatmaps per method")
    return 0


def write_galleries(summary: ExplainSummary) -> list[Path]:
    """Save ``<method>/gallery_<outcome>.png`` for every non-empty gallery of ``summary``.

    Each figure is saved (atomically) and closed before the next is drawn, so a notebook that calls
    this shows none of them.

    Args:
        summary: what :func:`~schoolvision.explain.runner.explain_chips` returned.

    Returns:
        The paths written.
    """
    paths = []
    for method, by_outcome in summary.galleries.items():
        for outcome, items in by_outcome.items():
            if not items:
                continue
            path = Path(summary.out_dir) / method / f"gallery_{outcome.lower()}.png"
            fig = plot_gallery(items, title=f"{method}: {outcome} ({summary.split} split)")
            with atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=110)
            plt.close(fig)
            paths.append(path)
    return paths
