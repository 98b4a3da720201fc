"""Command line: ``schoolvision <command> ...``.

Each command lives in ``schoolvision/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``. A :class:`~schoolvision.errors.UserError` becomes one line on stderr and exit
code 2; nothing else is caught.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from schoolvision.commands import use_defaults_help
from schoolvision.errors import UserError
from schoolvision.io import manifest

COMMANDS: dict[str, str] = {
    "demo": "Generate synthetic georeferenced towns with known school footprints.",
    "chips": "Cut labelled chips from imagery and school labels.",
    "train": "Train a school / not_school classifier.",
    "evaluate": "Recompute test metrics of a run from its best checkpoint.",
    "explain": "Explain predictions with CAM methods or SHAP; write georeferenced heatmaps.",
    "cluster": "Cluster penultimate-layer features of chips.",
    "scan": "Scan whole scenes; write a probability raster and school candidates.",
    "novelty": "Summarise what a run was trained on (novelty.npz), so its scans write a trust map.",
    "export": "Export a run's classifier to ONNX, with a P(school) map model for QGIS's Deepness plugin.",
    "review": "Rank a scan's items for review (review build), offline page review.html; decisions back as labels "
              "(review import).",
    "estimate": "Estimate the schools missing from the registry, with 95% intervals, from a reviewed sample "
                "(review build --sample).",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``schoolvision`` parser with one sub-command per module of :mod:`schoolvision.commands`."""
    parser = argparse.ArgumentParser(prog="schoolvision", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"schoolvision.commands.{name}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    use_defaults_help(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a :class:`UserError` is one line on stderr and exit code 2.

    A command that fails before writing anything leaves no ``--out`` folder it made behind (an empty
    folder with a manifest would read as a half-finished output).
    """
    args = build_parser().parse_args(argv)
    previous = warnings.formatwarning
    warnings.formatwarning = _warning_line(args.command)
    out = getattr(args, "out", None)
    fresh = out is not None and not os.path.lexists(out)
    code = 1
    try:
        code = int(args._run(args) or 0)
        return code
    except UserError as exc:
        print(f"schoolvision {args.command}: error: {exc}", file=sys.stderr)
        code = 2
        return code
    except KeyboardInterrupt:
        print(f"schoolvision {args.command}: interrupted", file=sys.stderr)
        code = 130
        return code
    finally:
        warnings.formatwarning = previous
        if fresh and code != 0:
            manifest.discard_unwritten(out)


def _warning_line(command: str):
    """Warnings as one line, ``schoolvision <command>: warning: ...``, not Python's two (file, line, source)."""

    def format_warning(message, category, filename, lineno, line=None) -> str:
        return f"schoolvision {command}: warning: {message}\n"

    return format_warning


if __name__ == "__main__":
    sys.exit(main())
