"""The one look of every figure: seaborn's theme, applied once by whoever draws (the command line, a chapter)."""

from __future__ import annotations

import seaborn as sns


def apply_theme() -> None:
    """Set seaborn's theme (notebook context, white grid) for every figure drawn after it."""
    sns.set_theme(context="notebook", style="whitegrid")
