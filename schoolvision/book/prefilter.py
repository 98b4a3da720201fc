"""What a footprint prefilter (``scan --mask``) saves on a scan that was already made, and what it costs.

Chapter 6 scans a town once with every window, then again with building footprints as the mask, and
compares: windows skipped, time saved, known schools found by both. Only with footprints the user
gives (``mask_file``): a mask drawn from anything else (another place, the demo's roofs over the
user's imagery) would measure nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from schoolvision.io.imagery import ImagerySource
from schoolvision.scan.mask import ScanMask
from schoolvision.scan.runner import ScanConfig, ScanSummary, run_scan

SKIPPED = ("prefilter section skipped: no mask_file given. Set mask_file to building footprints of the "
           "scanned area (Google Open Buildings, Microsoft footprints, an OSM buildings extract) to compare a "
           "masked scan with this one.")


@dataclass
class PrefilterStudy:
    """The comparison of a masked scan with the full one (``masked`` is None when no mask was given)."""

    note: str
    figures: dict[str, Any] = field(default_factory=dict)  # the chapter's glue values
    masked: ScanSummary | None = None
    same_schools_found: bool | None = None


def prefilter_study(config: ScanConfig, full: ScanSummary, source: ImagerySource, mask: str | Path | None,
                    min_area: float | None, out_dir: str | Path, **scan_kwargs) -> PrefilterStudy:
    """Count the windows ``mask`` keeps, scan again with it into ``out_dir``, compare with ``full``.

    Args:
        config: the full scan's config (the masked scan is the same but for the mask, without a map).
        full: what the full scan returned.
        source: the scanned scene (as ``chips_scenes`` reads it), whose windows the mask is counted on.
        mask: building footprints (any file ``scan --mask`` reads); None or "": nothing is done.
        min_area: ``--mask-min-area``: footprints smaller than this (m2) are left out of the masked scan.
        out_dir: the masked scan's folder.
        **scan_kwargs: passed to :func:`~schoolvision.scan.runner.run_scan`: ``model`` and ``meta`` (required).

    Returns:
        The note to print, and the figures: ``every_roof_share`` (windows a mask of every footprint
        would skip), ``scan_windows``, ``mask_min_area``, ``mask_share`` (windows the masked scan
        skipped), ``mask_speedup`` (time of the windows, full over masked), ``mask_found`` and
        ``all_found`` (known schools found).
    """
    if not mask:
        return PrefilterStudy(SKIPPED)
    mask = Path(mask)
    n_windows, n_near = ScanMask.read(mask).count(source, scan_kwargs["meta"], config.stride)
    masked = run_scan(replace(config, out_dir=Path(out_dir), mask=mask, mask_distance=None, mask_min_area=min_area,
                              make_map=False, progress=False), **scan_kwargs)
    missed = [{m["name"] for m in s.evaluation.get("missed_schools", [])} for s in (full, masked)]
    figures = {
        "every_roof_share": 1 - n_near / n_windows, "scan_windows": n_windows, "mask_min_area": min_area,
        "mask_share": masked.scenes[0].masked_windows / n_windows,
        "mask_speedup": full.seconds["windows"] / max(masked.seconds["windows"], 1e-9),
        "mask_found": masked.evaluation.get("true_positives"), "all_found": full.evaluation.get("true_positives"),
    }
    return PrefilterStudy(f"prefilter mask: {mask}", figures, masked, missed[0] == missed[1])

