"""One review round on the user's own data (chapter 8 without the demo).

The demo simulates a mapper on a synthetic region; a user has a person instead, and a school list.
The round here is what that person runs: the user's imagery scanned with their school list as the
registry (``scan --registry``: each listed school confirmed or not seen), the review queue and its
page (``review build``), and, once the page's decisions are exported, ``review import``, chips of the
reviewed places (``chips --negatives``) and a fine-tuning (``train --init-from``). Without decisions the
round stops after the page, with the commands to run next.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schoolvision.book.simulate import training_labels
from schoolvision.data.chips import ChipConfig, ChipSummary, make_chips
from schoolvision.data.sources import chips_scenes
from schoolvision.io.folders import ChipsFolder, ScanFolder
from schoolvision.review.decisions import ImportSummary, import_decisions
from schoolvision.review.queue import ReviewConfig, ReviewSummary, build_queue
from schoolvision.scan.runner import ScanConfig, ScanSummary, run_scan
from schoolvision.train.fit import TrainConfig, fit


@dataclass
class OwnRoundConfig:
    """What a review round on the user's data needs (the chapter's parameters)."""

    run_dir: Path  # the model to review with and fine-tune (chapter 2)
    chips_dir: Path  # the chips it was trained on: their scenes are scanned, their schools are the registry
    out_dir: Path
    decisions: Path | None = None  # decisions.geojson exported from review.html; None: stop after the page
    order: str = "uncertainty"
    k: int = 100  # review budget: items in the queue
    floor: float = 0.05
    epochs: int = 3
    lr: float = 1e-3
    match_distance: float = 50.0
    seed: int = 0
    device: str = "auto"


@dataclass
class OwnRound:
    """What the round wrote: the scan, the queue and page, and (with decisions) the labels, chips and run."""

    scan: ScanSummary
    queue: ReviewSummary
    imported: ImportSummary | None = None
    chips: ChipSummary | None = None
    metrics: dict[str, Any] | None = None

    def summary(self, config: OwnRoundConfig) -> str:
        """What the round did, in a few lines, ending with :meth:`next_step`."""
        audit = ScanFolder(self.scan.out_dir).read_summary().get("registry") or {}
        counts = ", ".join(f"{n} {kind}" for kind, n in self.queue.counts.items())
        lines = [f"scan of {len(self.scan.scenes)} scene(s): {self.scan.candidates} candidates at threshold "
                 f"{self.scan.threshold:.3f}; your school list as the registry: {audit.get('confirmed', 0)} of "
                 f"{audit.get('in_scenes', 0)} listed schools confirmed, {audit.get('candidates_new', 0)} "
                 "candidates not in it",
                 f"review queue: {counts}; page: {Path(self.queue.page)}"]
        if self.imported is not None:
            lines.append(f"decisions imported: {self.imported.counts}")
        if self.metrics is not None:
            lines.append(f"fine-tuned run {Path(config.out_dir) / 'run'}: test AUPRC {self.metrics['auprc']:.3f}, "
                         f"F1 {self.metrics['f1']:.3f} (the same test split as chapter 2)")
        return "\n".join([*lines, self.next_step(config)])

    def next_step(self, config: OwnRoundConfig) -> str:
        """What to do next, as commands: review on the page, or measure the fine-tuned run."""
        queue, out = Path(self.queue.out_dir), Path(config.out_dir)
        if self.imported is None:
            return (f"Next: open {queue / 'review.html'} in a browser, decide the items (s: school, n: not a school), "
                    f"press Export, and rerun this chapter with -p decisions PATH/TO/decisions.geojson. Or, on "
                    f"the command line:\n"
                    f"  schoolvision review import decisions.geojson --queue {queue} --out labels.geojson\n"
                    f"  schoolvision chips --imagery ... --schools labels.geojson --schools-where label=school "
                    f"--negatives labels.geojson --negatives-where label=not_school --out {out / 'chips'}\n"
                    f"  schoolvision train --chips {out / 'chips'} --out {out / 'run'} --init-from {config.run_dir}")
        return (f"Next: scan with the fine-tuned run ({out / 'run'}) where nobody reviewed, and measure it on "
                f"known schools before trusting it there; then review again.")


def review_own_data(config: OwnRoundConfig) -> OwnRound:
    """Scan the chips' scenes against the user's school list, build the review queue and, with decisions, fine-tune.

    Writes under ``config.out_dir``: ``scan/`` (with the registry audit), ``queue/`` (``review.html``)
    and, with ``config.decisions``: ``labels.geojson``, ``train_labels.geojson``, ``chips/`` (the chips'
    scenes, their schools plus the accepted places, a hard negative at each rejected place, the same
    chip settings and split as the home chips) and ``run/`` (fine-tuned from ``config.run_dir``).

    Raises:
        UserError: as the commands it runs (a decisions file of another queue, unreadable files ...).
    """
    out = Path(config.out_dir)
    chips = ChipsFolder(config.chips_dir)
    schools = chips.schools_path()
    scenes = [s.path for s in chips_scenes(config.chips_dir).values()]
    scan = run_scan(ScanConfig(run=Path(config.run_dir), imagery=scenes, out_dir=out / "scan", schools=schools,
                               registry=schools, match_distance=config.match_distance, device=config.device,
                               overwrite=True, make_map=False, progress=False))
    review = ReviewConfig(out / "scan", out / "queue", order=config.order, limit=config.k, floor=config.floor,
                          device=config.device, overwrite=True)
    queue = build_queue(review)
    if not config.decisions:
        return OwnRound(scan, queue)
    labels = out / "labels.geojson"
    imported = import_decisions(config.decisions, out / "queue", labels, overwrite=True)
    train_schools = training_labels(labels, schools, out / "train_labels.geojson", imported.counts.get("school", 0))
    meta = chips.read_meta(required=True)
    fields = set(ChipConfig.__dataclass_fields__)
    recorded = {k: v for k, v in meta.get("config", {}).items() if k in fields}
    # the home chips' planned stride and split blocks, so that the reviewed chips keep the home split
    recorded.update({key: meta[name] for key, name in (("stride", "stride"), ("block_size", "block_size_m"))
                     if meta.get(name) is not None})
    chip_config = ChipConfig(**{**recorded, "schools_where": "label=school", "schools_layer": None,
                                "lonlat_columns": None})
    negatives = labels if imported.counts.get("not_school", 0) else None
    tuned_chips = make_chips(scenes, train_schools, out / "chips", chip_config, overwrite=True, negatives=negatives,
                             negatives_where="label=not_school" if negatives else None)
    tuned = TrainConfig(out / "chips", out / "run", epochs=config.epochs, lr=config.lr, seed=config.seed,
                        device=config.device, init_from=Path(config.run_dir), overwrite=True)
    return OwnRound(scan, queue, imported, tuned_chips, fit(tuned))
