"""How a scan scores windows and draws candidates: one frozen options object, from the command line down.

:class:`ScanOptions` is what every level below the driver needs (the unit, the scene scanner, the candidate
functions); :class:`~schoolvision.scan.runner.ScanConfig` adds the inputs, the outputs and the driver's
own options to it. ``schoolvision scan`` builds one ``ScanConfig`` from its arguments (same names, same
defaults: ``tests/test_options.py``) and hands it down unchanged; no level restates an option with a
default of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from schoolvision.errors import check_ranges
from schoolvision.scan.candidates import MIN_AREA_M2


@dataclass(frozen=True, kw_only=True)
class ScanOptions:
    """The options of a scene's scan and of its candidates (``scan --help`` says each)."""

    stride: int | None = None  # pixels at the scan GSD; default chip_size // 2
    batch_size: int = 32
    threshold: float | None = None  # default: the run's tuned threshold
    device: str = "auto"
    runtime: str = "auto"  # forward passes of the windows: auto, torch, torch-fast, onnx or onnx-int8 (model.runtime)
    match_distance: float = 50.0  # metres between a candidate and a school
    min_area_m2: float = MIN_AREA_M2  # candidate regions smaller than this (m^2) are dropped (scan.candidates)
    min_separation: float | None = None  # m: peaks this far apart are two candidates; None: 3/4 chip; 0: off
    native_resolution: bool = False  # scan at the scene's GSD, not the run's
    cam_peaks: bool = True  # place candidates at their grad-CAM peak (else the probability peak)
    prefetch_depth: int = 4  # batches read ahead of the model
    progress: bool = True  # progress bars

    def __post_init__(self) -> None:
        check_ranges(self, "--stride >= 1", "--batch-size >= 1", "--threshold in (0, 1)", "--match-distance > 0",
                     "--min-area (min_area_m2) >= 0", "--min-separation >= 0", "prefetch_depth >= 0")
