"""`schoolvision novelty`: give a run trained without one its novelty summary (the scans' trust map), no training."""

from __future__ import annotations

import argparse
from pathlib import Path

from schoolvision.commands import default_of
from schoolvision.model.runtime import RUNTIME_CHOICES
from schoolvision.train.novelty import FLAG_PERCENTILE, SCORERS, NoveltyConfig, build_run_summary, read_summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="run folder (holds best.pt)")
    parser.add_argument("--chips", type=Path, default=None,
                        help="chips folder the run was trained on (default: the one its config.json records); "
                             "its train split is summarised, its val and test splits (held out) are the home reference")
    parser.add_argument("--method", default=default_of(NoveltyConfig, "method"), choices=tuple(SCORERS),
                        help="knn: distance to the k-th nearest training embedding; gaussian: Mahalanobis distance "
                             "to the nearest class mean, shrunk covariance (default: %(default)s)")
    parser.add_argument("--k", type=int, default=default_of(NoveltyConfig, "k"),
                        help="the neighbour whose distance is the knn score (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--runtime", default="auto", choices=RUNTIME_CHOICES,
                        help="forward passes of the chips (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace the run's novelty.npz")


def run(args: argparse.Namespace) -> int:
    path = build_run_summary(args.run, args.chips, NoveltyConfig(method=args.method, k=args.k), device=args.device,
                             runtime=args.runtime, overwrite=args.overwrite)
    record = read_summary(args.run).record
    print(f"novelty summary ({record['method']}) of {record['train_chips']} training chip(s), home reference "
          f"{record['reference_chips']} held-out chip(s); windows above its {FLAG_PERCENTILE:g}th percentile are "
          f"flagged -> {path}")
    return 0
