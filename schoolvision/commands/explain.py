"""`schoolvision explain`: heatmaps for a run's predictions on a chips split, with faithfulness scores."""

from __future__ import annotations

import argparse
from pathlib import Path

from schoolvision.explain.methods import METHODS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="run folder (or checkpoint .pt)")
    parser.add_argument("--chips", required=True, type=Path, help="chips folder (chips.csv, dataset.json)")
    parser.add_argument("--method", required=True, help=f"one or more, comma-separated, or 'all': {', '.join(METHODS)}")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--split", default="test", help="split to explain (default: test)")
    parser.add_argument("--limit", type=int, default=None, help="explain at most N chips (seeded sample)")
    parser.add_argument("--layer", default=None, help="layer to explain (default: the model's last conv block, or the deepest block with a 4x4 map "
                        "when the input is too small for that; 'target' forces the last block)")
    parser.add_argument("--target-class", default="school", help="class to explain (default: school)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shap-nsamples", type=int, default=64, help="expected-gradients samples per chip")
    parser.add_argument("--overwrite", action="store_true", help="replace the content of --out")


def run(args: argparse.Namespace) -> int:
    from schoolvision.explain.methods import ExplainConfig, explain_chips
    from schoolvision.explain.faithfulness import format_table

    methods = list(METHODS) if args.method == "all" else [m.strip() for m in args.method.split(",") if m.strip()]
    config = ExplainConfig(
        run=args.run, chips_dir=args.chips, out_dir=args.out, methods=methods, split=args.split, limit=args.limit,
        layer=args.layer, target_class=args.target_class, batch_size=args.batch_size, device=args.device,
        seed=args.seed, shap_nsamples=args.shap_nsamples, overwrite=args.overwrite,
    )
    summary = explain_chips(config)
    print(f"explained {summary.n_chips} chips of split {args.split} ({', '.join(f'{k} {v}' for k, v in summary.outcomes.items())})")
    print(format_table(summary.table))
    print(f"wrote {summary.out_dir}/faithfulness.json and heatmaps per method")
    return 0
