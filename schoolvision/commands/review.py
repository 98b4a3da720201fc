"""`schoolvision review build|import`: a ranked review queue with an offline page, and the decisions back as labels.

``review build --scan DIR --out DIR`` writes the queue (:mod:`schoolvision.review.queue`: items,
their chip, grad-CAM and surroundings images, ``review.html``); open ``review.html`` in a browser,
decide, Export. ``review import decisions.geojson --queue DIR --out LABELS`` writes the decisions as
school and hard-negative points (:mod:`schoolvision.review.decisions`). ``review retrain --queue DIR --decisions
FILE --run RUN --out ROUND`` cuts chips where a person looked and fine-tunes RUN into ``ROUND/run``
(:mod:`schoolvision.rounds.retrain`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from schoolvision.commands import OVERWRITE_HELP, default_of
from schoolvision.errors import UserError
from schoolvision.io.folders import ReviewFolder
from schoolvision.review.decisions import import_decisions
from schoolvision.review.queue import ORDERS, RULES, ReviewConfig, build_queue
from schoolvision.review.sample import SampleConfig, sample_items
from schoolvision.rounds.retrain import RetrainConfig, retrain


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="review_command", required=True, metavar="step")
    build = sub.add_parser("build", help="rank a scan's items for review and write review.html",
                           description="Rank a scan's candidates, near misses and unseen registry schools; write "
                                       "their images and the offline page review.html.")
    build.add_argument("--scan", required=True, type=Path, help="scan folder (schoolvision scan --out)")
    build.add_argument("--out", required=True, type=Path, help="output folder of the queue")
    build.add_argument("--order", choices=ORDERS, default=default_of(ReviewConfig, "order"),
                       help="; ".join(f"{k}: {v}" for k, v in RULES.items()) + " (default: %(default)s)")
    build.add_argument("--limit", type=int, default=default_of(ReviewConfig, "limit"), metavar="N",
                       help="queue the first N items only (default: all)")
    build.add_argument("--floor", type=float, default=default_of(ReviewConfig, "floor"),
                       help="also queue probability peaks between this P(school) and the scan's threshold "
                            "(default: %(default)s; the threshold or above: candidates only)")
    build.add_argument("--run", type=Path, default=default_of(ReviewConfig, "run"),
                       help="run for the chips' P(school) and grad-CAM (default: the run scan.json names)")
    build.add_argument("--context", type=int, default=default_of(ReviewConfig, "context"),
                       help="the surroundings image covers this many chip sides (default: %(default)s)")
    build.add_argument("--device", default=default_of(ReviewConfig, "device"), help="auto, cpu or cuda")
    build.add_argument("--sample", type=int, default=None, metavar="N",
                       help="queue a stratified random sample of N chip-sized windows of the scanned area instead of "
                            "a ranking, for `schoolvision estimate` (replaces --order and --limit)")
    build.add_argument("--seed", type=int, default=default_of(SampleConfig, "seed"),
                       help="seed of --sample's draw (default: %(default)s)")
    build.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    build.set_defaults(_review=_build)
    imp = sub.add_parser("import", help="turn decisions.geojson into school / hard-negative labels",
                         description="Turn the decisions exported from review.html into labels with provenance.")
    imp.add_argument("decisions", type=Path, help="decisions.geojson exported from review.html")
    imp.add_argument("--queue", required=True, type=Path, help="the review queue folder (review build --out)")
    imp.add_argument("--out", required=True, type=Path,
                     help="labels GeoJSON to write (label=school / label=not_school points)")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    imp.set_defaults(_review=_import)
    rt = sub.add_parser("retrain", help="fine-tune the run on the decisions, where a person looked only",
                        description="Cut chips where a person looked (accepted places: schools; rejected: hard "
                                    "negatives; not_school grid chips only from rejected neighbourhoods no other item "
                                    "touches), replay the home run's train chips, keep its val and test splits, "
                                    "fine-tune the run; print before / after. Rules: schoolvision.rounds.retrain.")
    rt.add_argument("--queue", required=True, type=Path, help="the review queue folder (review build --out)")
    rt.add_argument("--decisions", required=True, type=Path, help="decisions.geojson exported from its review.html")
    rt.add_argument("--run", required=True, type=Path, help="the run that made the scan (the home run)")
    rt.add_argument("--out", required=True, type=Path,
                    help="round folder to write: labels, crops, chips and the new run OUT/run (scan --run OUT/run)")
    rt.add_argument("--epochs", type=int, default=default_of(RetrainConfig, "epochs"), help="fine-tuning epochs")
    rt.add_argument("--replay", type=float, default=default_of(RetrainConfig, "replay"), metavar="SHARE",
                    help="share of the home run's train chips trained on again, per class (0-1)")
    rt.add_argument("--lr", type=float, default=default_of(RetrainConfig, "lr"), help="fine-tuning learning rate")
    rt.add_argument("--batch-size", type=int, default=default_of(RetrainConfig, "batch_size"))
    rt.add_argument("--device", default=default_of(RetrainConfig, "device"), help="auto, cpu or cuda")
    rt.add_argument("--seed", type=int, default=default_of(RetrainConfig, "seed"))
    rt.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    rt.set_defaults(_review=_retrain)


def run(args: argparse.Namespace) -> int:
    return args._review(args)


def _build(args: argparse.Namespace) -> int:
    config = ReviewConfig(scan_dir=args.scan, out_dir=args.out, order=args.order, limit=args.limit,
                          floor=args.floor, run=args.run, context=args.context, device=args.device,
                          overwrite=args.overwrite)
    selection = None
    if args.sample is not None:
        if args.limit is not None:
            raise UserError("--sample N sets the queue's size; leave out --limit")
        selection = sample_items(args.scan, SampleConfig(size=args.sample, seed=args.seed, floor=args.floor))
    s = build_queue(config, selection=selection)
    kinds = ", ".join(f"{n} {k}" for k, n in s.counts.items() if n)
    print(f"queued {s.items} item(s) ({kinds or 'none'}) by {s.order}; queue {s.queue_id} -> {s.page}")
    made_by = ReviewFolder(s.out_dir).read_queue().get("model_round")
    if made_by:
        print(f"the model is from the review round of queue {made_by['queue_id']} (fine-tuned from "
              f"{made_by['parent_run']})")
    return 0


def _import(args: argparse.Namespace) -> int:
    s = import_decisions(args.decisions, args.queue, args.out, overwrite=args.overwrite)
    c = s.counts
    print(f"{s.decisions} decision(s): {c['school']} school, {c['not_school']} not a school, {c['unsure']} unsure "
          f"(dropped); {s.duplicates} duplicate(s) replaced by the latest; {s.labels} label(s) -> {s.out}")
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from schoolvision.plotting.theme import apply_theme
    from schoolvision.plotting.training import tensorboard_figures

    apply_theme()
    s = retrain(RetrainConfig(queue=args.queue, decisions=args.decisions, run=args.run, out=args.out,
                              epochs=args.epochs, replay=args.replay, lr=args.lr, batch_size=args.batch_size,
                              device=args.device, seed=args.seed, overwrite=args.overwrite),
                figures=tensorboard_figures)
    r = s.record
    d, c = r["decided"], r["chips"]
    print(f"round: {d['school']} school, {d['not_school']} not a school, {d['unsure']} unsure (no chip); chips from "
          f"{r['places']} places: {c['reviewed_school']} school, {c['reviewed_not_school']} not_school "
          f"({c['hard_negatives']} hard negatives; grid negatives from {r['neighbourhoods_with_grid_negatives']} "
          f"rejected neighbourhoods, {c['undersampled_grid_negatives']} more left out by the negative ratio); "
          f"replayed {sum(c['replayed'].values())} of {sum(c['home_train'].values())} "
          "home train chips")
    for when in ("before", "after"):
        h, p = r["home_test"][when], r["reviewed_places"][when]
        home = "  ".join(f"{k}={h[k]:.3f}" for k in ("auprc", "f1", "recall", "precision", "threshold")
                         if h.get(k) is not None)
        print(f"{when:6s} home test: {home or 'no metrics.json'} | reviewed places: {p['schools_found']}/"
              f"{p['schools']} schools and {p['rejected_flagged']}/{p['rejected']} rejected at P >= "
              f"{p['threshold']:.3f}")
    print(f"new run: {s.run} (its round.json; reviewed places are training data, not a held-out test); "
          f"rescan with --run {s.run}")
    return 0
