"""`schoolvision review build|import`: a ranked review queue with an offline page, and the decisions back as labels.

``review build --scan DIR --out DIR`` writes the queue (:mod:`schoolvision.review.queue`: items,
their chip, grad-CAM and surroundings images, ``review.html``); open ``review.html`` in a browser,
decide, Export. ``review import decisions.geojson --queue DIR --out LABELS`` writes the decisions as
school and hard-negative points (:mod:`schoolvision.review.decisions`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from schoolvision.commands import OVERWRITE_HELP, default_of
from schoolvision.errors import UserError
from schoolvision.review.decisions import import_decisions
from schoolvision.review.queue import ORDERS, RULES, ReviewConfig, build_queue
from schoolvision.review.sample import SampleConfig, sample_items


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
    return 0


def _import(args: argparse.Namespace) -> int:
    s = import_decisions(args.decisions, args.queue, args.out, overwrite=args.overwrite)
    c = s.counts
    print(f"{s.decisions} decision(s): {c['school']} school, {c['not_school']} not a school, {c['unsure']} unsure "
          f"(dropped); {s.duplicates} duplicate(s) replaced by the latest; {s.labels} label(s) -> {s.out}")
    return 0
