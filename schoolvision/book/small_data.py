"""What chapter 2 says about a small test split, and how many folds it then cross-validates with."""

from __future__ import annotations

from pathlib import Path

from schoolvision.train.folds import count_schools

SMALL_TEST_SCHOOLS = 10
"""Fewer schools than this in the test split make its metrics a coin toss: one school found or missed
moves recall by a tenth or more, and the bootstrap interval spans most of the scale. The book then
says so above the metrics and cross-validates (:func:`~schoolvision.train.folds.cross_validate`)."""


def small_data_notice(n_schools: int, folds: int = 0) -> str | None:
    """One paragraph for a test split of fewer than :data:`SMALL_TEST_SCHOOLS` schools; None otherwise."""
    if n_schools >= SMALL_TEST_SCHOOLS:
        return None
    then = (f"the {folds}-fold spatial cross-validation below scores every chip once, by a model that never saw "
            "it" if folds >= 2 else "cross-validate (schoolvision train --folds 3) before you trust them")
    return (f"Small data: the test split holds {n_schools} school(s), fewer than {SMALL_TEST_SCHOOLS}. Its metrics "
            f"can move by a large step with one school more or less found: read the bootstrap interval first; "
            f"{then}.")


def small_data_folds(chips_dir: str | Path, folds: int) -> int:
    """How many folds the book cross-validates with: ``folds`` on small data, 0 otherwise.

    0 when the test split holds :data:`SMALL_TEST_SCHOOLS` schools or more, or ``folds`` is below 2
    (the profile's way to turn cross-validation off); never more folds than the chips hold schools.
    """
    if folds < 2 or count_schools(chips_dir) >= SMALL_TEST_SCHOOLS:
        return 0
    total = sum(count_schools(chips_dir, split) for split in ("train", "val", "test"))
    return min(folds, total) if total >= 2 else 0
