"""One review round on the user's own data (chapter 8 without the demo).

The demo simulates a mapper on a synthetic region; a user has a person instead, and a school list.
The round here is what that person runs: the user's imagery scanned with their school list as the
registry (``scan --registry``: each listed school confirmed or not seen), the review queue and its
page (``review build``), and, once the page's decisions are exported, ``review retrain``: the product's
one way from decisions to a fine-tuned model (chips only where the mapper looked, the home chips
replayed, the home validation and test splits kept). Without decisions the round stops after the page,
with the command to run next.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from schoolvision.data.sources import chips_scenes
from schoolvision.io.atomic import write_json
from schoolvision.io.folders import ChipsFolder, ScanFolder
from schoolvision.review.queue import ReviewConfig, ReviewSummary, build_queue
from schoolvision.rounds.retrain import EPOCHS, LR, REPLAY_SHARE, RetrainConfig, RoundSummary, retrain
from schoolvision.scan.runner import ScanConfig, ScanSummary, run_scan


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
    epochs: int = EPOCHS
    lr: float = LR
    replay: float = REPLAY_SHARE
    match_distance: float = 50.0
    seed: int = 0
    device: str = "auto"


@dataclass
class OwnRound:
    """What the round wrote: the scan, the queue and page, and (with decisions) the round of ``review retrain``."""

    scan: ScanSummary
    queue: ReviewSummary
    round: RoundSummary | None = None

    def registry_audit(self) -> dict:
        """The scan's registry audit (``scan.json``'s ``registry``): the user's list against the candidates."""
        return ScanFolder(self.scan.out_dir).read_summary().get("registry") or {}

    def summary(self, config: OwnRoundConfig) -> str:
        """What the round did, in a few lines, ending with :meth:`next_step`."""
        audit = self.registry_audit()
        counts = ", ".join(f"{n} {kind}" for kind, n in self.queue.counts.items())
        lines = [f"scan of {len(self.scan.scenes)} scene(s): {self.scan.candidates} candidates at threshold "
                 f"{self.scan.threshold:.3f}; your school list as the registry: {audit.get('confirmed', 0)} of "
                 f"{audit.get('in_scenes', 0)} listed schools confirmed, {audit.get('candidates_new', 0)} "
                 "candidates not in it",
                 f"review queue: {counts}; page: {Path(self.queue.page)}"]
        if self.round is not None:
            record = self.round.record
            before, after = record["home_test"]["before"], record["home_test"]["after"]
            lines += [f"decisions: {record['decided']}; chips of the round: {record['chips']}",
                      f"fine-tuned run {self.round.run}: home test AUPRC {before.get('auprc', float('nan')):.3f} -> "
                      f"{after.get('auprc', float('nan')):.3f}, F1 {before.get('f1', float('nan')):.3f} -> "
                      f"{after.get('f1', float('nan')):.3f} (the same test split as chapter 2)"]
        return "\n".join([*lines, self.next_step(config)])

    def next_step(self, config: OwnRoundConfig) -> str:
        """What to do next, as commands: review on the page, or measure the fine-tuned run."""
        queue, out = Path(self.queue.out_dir), Path(config.out_dir)
        if self.round is None:
            return (f"Next: open {queue / 'review.html'} in a browser, decide the items (s: school, n: not a school), "
                    f"press Export, and rerun this chapter with -p decisions PATH/TO/decisions.geojson. Or, on "
                    f"the command line:\n"
                    f"  schoolvision review retrain --queue {queue} --decisions decisions.geojson "
                    f"--run {config.run_dir} --out {out / 'round'}")
        return (f"Next: scan with the fine-tuned run ({self.round.run}) where nobody reviewed, and measure it on "
                f"known schools before trusting it there; then review again.")


def review_own_data(config: OwnRoundConfig) -> OwnRound:
    """Scan the chips' scenes against the user's school list, build the review queue and, with decisions, fine-tune.

    Writes under ``config.out_dir``: ``scan/`` (with the registry audit), ``queue/`` (``review.html``)
    and, with ``config.decisions``, ``round/``: ``review retrain``'s round (its labels, chips and the
    run fine-tuned from ``config.run_dir``, with ``round.json``); and ``review_round.json``
    (:func:`write_own_round`), the figures the results page reads.

    Raises:
        UserError: as the commands it runs (a decisions file of another queue, no accepted school ...).
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
    round_ = None
    if config.decisions:
        round_ = retrain(RetrainConfig(out / "queue", Path(config.decisions), Path(config.run_dir), out / "round",
                                       epochs=config.epochs, replay=config.replay, lr=config.lr, seed=config.seed,
                                       device=config.device, overwrite=True))
    own = OwnRound(scan, queue, round_)
    write_own_round(out / "review_round.json", own)
    return own


def write_own_round(out: str | Path, own: OwnRound) -> Path:
    """``review_round.json`` of a round on the user's data: where the round stands and what it measured.

    The demo's round measures recall on towns nobody reviewed; a user's round has no such truth, so
    this records what there is: the registry audit, the queue, and (once decisions came back) the
    decisions, the round's chips and chapter 2's test split before and after fine-tuning. ``status``
    says which: the results page then shows a round waiting for its review as such, not as missing.
    """
    audit = own.registry_audit()
    result = {
        "status": "fine-tuned on the review's decisions" if own.round else "review queue built; waiting for decisions",
        "registry": {k: v for k, v in audit.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        "candidates": own.scan.candidates, "threshold": own.scan.threshold,
        "queue": {"items": own.queue.items, **own.queue.counts}, "queue_id": own.queue.queue_id,
    }
    if own.round is not None:
        record = own.round.record
        result |= {
            "decided": record["decided"], "thresholds": record["thresholds"],
            # one level per split and time: the results page reads two levels deep
            **{f"home_test_{w}": {k: v for k, v in record["home_test"][w].items() if k != "bootstrap"}
               for w in ("before", "after")},
            "run": own.round.run,
        }
    return write_json(out, result)
