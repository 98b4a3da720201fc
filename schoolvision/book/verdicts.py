"""What a clustering says, in tables and sentences for the chapter's prose (chapter 5)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from schoolvision import CLASSES, SCHOOL


def cluster_profile(table: pd.DataFrame) -> pd.DataFrame:
    """One row per cluster: size, share of true schools and of false positives, mean P(school), towns."""
    school = CLASSES[SCHOOL]
    t = table.assign(
        true_school=table["label"] == school,
        false_positive=(table["prediction"] == school) & (table["label"] != school),
    )
    return t.groupby("cluster").agg(
        chips=("chip_id", "size"),
        true_school=("true_school", "mean"),
        false_positive=("false_positive", "mean"),
        mean_prob=("prob", "mean"),
        towns=("scene", "nunique"),
        main_town=("scene", lambda s: s.value_counts().idxmax()),
    ).round(3)


WHOLE_SCHOOL = 0.95
"""Share of its school's footprint (``school_fraction`` of chips.csv) above which a chip holds the whole school."""

CLEAR_STRUCTURE = 0.5
"""Silhouette above which clusters are separate groups (Rousseeuw's rule of thumb; below 0.25: no substantial
structure, k-means then cuts a continuum into pieces)."""


def framing_profile(table: pd.DataFrame, whole: float = WHOLE_SCHOOL) -> pd.DataFrame:
    """One row per cluster: how its chips frame their school.

    ``centred``: share of windows cut around the school (chips.csv ``view``), the rest are grid windows
    where the school sits anywhere; ``whole_school``: share holding at least ``whole`` of the school's
    footprint (the others cut it at the chip edge); ``school_fraction``: the mean share. Clusters that
    differ in these columns are at least partly clusters of framing, not of kinds of school.
    """
    missing = pd.Series(np.nan, index=table.index)
    fraction = table.get("school_fraction", missing).astype(float)
    t = table.assign(
        centred=(table["view"].astype(str) == "centred").astype(float) if "view" in table else missing,
        whole_school=(fraction >= whole).astype(float).where(fraction.notna()),
        school_fraction=fraction,
    )
    return t.groupby("cluster").agg(
        chips=("chip_id", "size"),
        centred=("centred", "mean"),
        whole_school=("whole_school", "mean"),
        school_fraction=("school_fraction", "mean"),
    ).round(3)


def structure_verdict(silhouette: float | None) -> str:
    """A phrase for prose: what a silhouette says about the clusters (see :data:`CLEAR_STRUCTURE`)."""
    if silhouette is None or not np.isfinite(silhouette):
        return "no measurable structure"
    if silhouette >= CLEAR_STRUCTURE:
        return "a clear structure: the chips fall into separate groups"
    if silhouette >= 0.25:
        return "a weak structure: the groups overlap, so read them as tendencies, not kinds"
    return "no substantial structure: k-means cuts a continuum into pieces, which are not kinds of school"


def framing_verdict(profile: pd.DataFrame, spread: float = 0.15) -> str:
    """A phrase for prose: whether the clusters of :func:`framing_profile` differ in how chips frame schools.

    They do when the share of centred views or of whole schools differs by ``spread`` or more between
    two clusters.
    """
    ranges = [profile[c].max() - profile[c].min() for c in ("centred", "whole_school") if profile[c].notna().any()]
    if not ranges or len(profile) < 2:
        return "cannot be told apart by framing here"
    if max(ranges) >= spread:
        return "differ in how the chip frames the school: the clusters partly separate framings, not kinds of school"
    return "frame their schools alike: framing does not separate them"
