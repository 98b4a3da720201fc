"""`schoolvision estimate`: the schools the registry lacks, with 95% intervals, from a reviewed sample.

``estimate --queue DIR --decisions decisions.geojson [more.geojson ...]`` reads a queue made by
``review build --sample N`` and the decisions exported from its page (one file per mapper or round),
writes ``estimate.json`` and prints the measures (:mod:`schoolvision.review.estimate`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from schoolvision.review.estimate import COVERS, estimate, table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queue", required=True, type=Path, help="a sampled review queue (review build --sample N)")
    parser.add_argument("--decisions", required=True, type=Path, nargs="+", metavar="GEOJSON",
                        help="decisions.geojson exported from the queue's review.html; several files (mappers, "
                             "rounds) combine by majority, a tie counting as unsure")
    parser.add_argument("--out", type=Path, default=None, help="JSON to write (default: QUEUE/estimate.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def run(args: argparse.Namespace) -> int:
    r = estimate(args.queue, args.decisions, args.out, overwrite=args.overwrite)
    c = r["counts"]
    print(f"{r['decided']} of {r['items']} sampled windows decided ({c['school']} school, {c['not_school']} not, "
          f"{c['unsure']} unsure: not counted); {r['mappers']} file(s), disagreement rate "
          f"{r['disagreement_rate']:.1%} over {r['items_with_several_votes']} item(s)")
    print(table(r))
    if r["strata_without_decisions"]:
        print(f"no decided item in {', '.join(r['strata_without_decisions'])}: their windows widen the intervals")
    print(f"({COVERS}) -> {r['out']}")
    return 0
