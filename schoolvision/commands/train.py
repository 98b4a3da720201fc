"""`schoolvision train`: train a school / not_school classifier into a run folder.

Under ``torchrun --nproc_per_node=N`` the same command trains with DistributedDataParallel. The
TensorBoard figures (confusion matrices, test chips) are drawn here and handed to ``fit``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from schoolvision.commands import OVERWRITE_HELP, default_of
from schoolvision.model.backbones import available_backbones
from schoolvision.plotting.theme import apply_theme
from schoolvision.plotting.training import tensorboard_figures
from schoolvision.train.fit import PRECISIONS, TrainConfig, fit
from schoolvision.train.folds import cross_validate, fold_lines

RECIPE = """\
recommended recipe (the book's): the defaults. An ImageNet backbone fine-tuned at its pretraining input size
(224 px; 128 px chips are upsampled), 6 epochs with early stopping, threshold tuned for F1 on validation.
Its time and test metrics on the demo chips are on the book's results page (chapter 2 prints their intervals);
at the chips' own 128 px (--image-size 128) it trains about 3x faster but misses small schools.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = RECIPE
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--chips", required=True, type=Path, help="chips folder (from `schoolvision chips`)")
    parser.add_argument("--out", required=True, type=Path, help="run folder to write")
    parser.add_argument(
        "--backbone", default=default_of(TrainConfig, "backbone"), help=f"one of: {', '.join(available_backbones())}"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=default_of(TrainConfig, "epochs"),
        help="passes over the training chips (default %(default)s, with early stopping)",
    )
    parser.add_argument("--batch-size", type=int, default=default_of(TrainConfig, "batch_size"))
    parser.add_argument("--lr", type=float, default=default_of(TrainConfig, "lr"))
    parser.add_argument(
        "--image-size",
        type=int,
        default=default_of(TrainConfig, "image_size"),
        help="model input size in px (default: the backbone's pretraining size, 224, with the chips "
        "upsampled; the chip size with --no-pretrained)",
    )
    parser.add_argument("--device", default=default_of(TrainConfig, "device"), help="auto, cpu or cuda")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=default_of(TrainConfig, "precision"),
        help="training arithmetic (default %(default)s: float32 on every CPU, so any CPU trains the same recipe; "
        "bf16 autocast on CUDA). bf16 on a CPU is opt-in: faster with AMX, slightly different numbers",
    )
    parser.add_argument("--seed", type=int, default=default_of(TrainConfig, "seed"))
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    parser.add_argument(
        "--init-from",
        type=Path,
        default=default_of(TrainConfig, "init_from"),
        metavar="RUN",
        help="fine-tune: start from the weights of an earlier run (its best.pt, or a checkpoint file) instead of "
        "ImageNet's, e.g. for a few epochs on chips cut from reviewed labels; its backbone and classes must be "
        "this run's, and its input size is kept unless --image-size is given",
    )
    parser.add_argument("--no-pretrained", dest="pretrained", action="store_false", help="random initial weights")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument(
        "--folds",
        type=int,
        default=None,
        metavar="K",
        help="spatial cross-validation: train K models on spatial folds of every chip (whole scenes, or ground "
        "blocks of one mosaic), each tested on its fold, and write out-of-fold predictions (every chip scored "
        "once by a model that never saw it), one row per fold and the pooled metrics to metrics.json; for a "
        "test split of a few schools",
    )
    parser.add_argument(
        "--freeze-epochs",
        type=int,
        default=default_of(TrainConfig, "freeze_backbone_epochs"),
        help="epochs with a frozen backbone",
    )
    parser.add_argument(
        "--freeze-stem",
        action=argparse.BooleanOptionalAction,
        default=default_of(TrainConfig, "freeze_stem"),
        help="keep the backbone's layers up to output stride 4 at their starting weights (default: when those "
        "are learnt, i.e. unless --no-pretrained): about 1.9x faster steps on CPU, same test metrics on the demo",
    )
    parser.add_argument(
        "--beta",
        type=float,
        default=default_of(TrainConfig, "threshold_beta"),
        help="tune the threshold for F-beta (1 = F1, 2 = F2)",
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=default_of(TrainConfig, "patience"),
        help="early stopping: epochs without better val AUPRC",
    )
    parser.add_argument(
        "--num-workers",
        type=int,
        default=default_of(TrainConfig, "num_workers"),
        help="data loader workers (default: 0 on CPU)",
    )


OPTIONS = {
    "backbone": "--backbone", "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr",
    "image_size": "--image-size", "device": "--device", "seed": "--seed", "freeze_backbone_epochs": "--freeze-epochs",
    "threshold_beta": "--beta", "patience": "--patience", "init_from": "--init-from", "precision": "--precision",
}
"""TrainConfig field -> its ``schoolvision train`` option (the fields :func:`command_line` writes out)."""


def command_line(config: TrainConfig, chips: str | Path | None = None, out: str | Path | None = None) -> str:
    """The ``schoolvision train`` command that trains ``config``: its folders and its non-default options.

    A chapter prints it, so the command it shows is the run it made, whatever the profile. ``chips`` and
    ``out`` replace the config's (absolute) folders in the text, e.g. by the chapter's own.
    """
    parts = ["schoolvision train", f"--chips {chips or config.chips_dir}", f"--out {out or config.out_dir}"]
    for name, option in OPTIONS.items():
        value = getattr(config, name)
        if value != default_of(TrainConfig, name):
            parts.append(f"{option} {value:g}" if isinstance(value, float) else f"{option} {value}")
    if not config.pretrained:
        parts.append("--no-pretrained")
    if config.freeze_stem is not None:
        parts.append("--freeze-stem" if config.freeze_stem else "--no-freeze-stem")
    return " ".join(parts)


def metric_line(metrics: dict) -> str:
    """``auprc=0.950 [0.910-0.980]  f1=...``: each test metric with its bootstrap interval, then the threshold."""
    ci = metrics.get("bootstrap") or {}
    parts = [f"{k}={metrics[k]:.3f}" + (f" [{ci[k][0]:.3f}-{ci[k][1]:.3f}]" if k in ci else "")
             for k in ("auprc", "f1", "f2", "precision", "recall", "roc_auc")]
    level = f" ({ci['level']:.0%} bootstrap intervals)" if "level" in ci else ""
    return "  ".join(parts) + f"  threshold={metrics['threshold']:.3f}{level}"


def run(args: argparse.Namespace) -> int:
    config = TrainConfig(
        chips_dir=args.chips,
        out_dir=args.out,
        backbone=args.backbone,
        pretrained=args.pretrained,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        image_size=args.image_size,
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        resume=args.resume,
        overwrite=args.overwrite,
        freeze_backbone_epochs=args.freeze_epochs,
        freeze_stem=args.freeze_stem,
        threshold_beta=args.beta,
        patience=args.patience,
        num_workers=args.num_workers,
        init_from=args.init_from,
    )
    apply_theme()
    if args.folds is not None:
        return _report_folds(cross_validate(config, args.folds, figures=tensorboard_figures), args.out)
    metrics = fit(config, figures=tensorboard_figures)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"test: {metric_line(metrics)}  (best epoch {metrics['best_epoch']}, {metrics['training_precision']})")
        print(f"run folder: {args.out}  (tensorboard --logdir {args.out / 'tensorboard'})")
    return 0


def _report_folds(metrics: dict, out: Path) -> int:
    """Print one line per fold and the pooled out-of-fold metrics with their bootstrap interval."""
    print("\n".join(fold_lines(metrics)))
    print(f"run folder: {out}  (one run per fold: {out / 'fold_1'} ...)")
    return 0
