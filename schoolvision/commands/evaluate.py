"""`schoolvision evaluate`: recompute a run's metrics from its best checkpoint, with bootstrap CIs."""

from __future__ import annotations

import argparse
from pathlib import Path

from schoolvision.commands import default_of
from schoolvision.model.runtime import RUNTIME_CHOICES
from schoolvision.train.evaluation import EvalConfig, evaluate_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="run folder (holds best.pt)")
    parser.add_argument("--chips", required=True, type=Path, help="chips folder the run was trained on")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--batch-size", type=int, default=None, help="default: the run's batch size")
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the intervals")
    parser.add_argument(
        "--runtime", default=default_of(EvalConfig, "runtime"), choices=RUNTIME_CHOICES,
        help="forward passes: auto (float32 ONNX Runtime on CPU when the onnx extra is installed), torch "
        "(reproduces the run's predictions bit for bit), torch-fast, onnx or onnx-int8 (the int8 graph's "
        "metrics) (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    m = evaluate_run(EvalConfig(args.run, args.chips, args.split, args.batch_size, args.device, args.n_boot,
                                runtime=args.runtime))
    ci = m["bootstrap"]
    print(
        f"{args.split}: auprc={m['auprc']:.3f} [{ci['auprc'][0]:.3f}, {ci['auprc'][1]:.3f}]  "
        f"f1={m['f1']:.3f} [{ci['f1'][0]:.3f}, {ci['f1'][1]:.3f}]  threshold={m['threshold']:.3f}  "
        f"predictions match the run: {m['predictions_match']}"
    )
    return 0
