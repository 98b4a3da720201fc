"""`schoolvision train`: train a school / not_school classifier into a run folder.

Under ``torchrun --nproc_per_node=N`` the same command trains with DistributedDataParallel.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from schoolvision.model.backbones import available_backbones


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chips", required=True, type=Path, help="chips folder (from `schoolvision chips`)")
    parser.add_argument("--out", required=True, type=Path, help="run folder to write")
    parser.add_argument("--backbone", default="efficientnet_lite0", help=f"one of: {', '.join(available_backbones())}")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--image-size", type=int, default=None, help="model input size (default: chip size)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    parser.add_argument("--no-pretrained", dest="pretrained", action="store_false", help="random initial weights")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    parser.add_argument("--freeze-epochs", type=int, default=0, help="epochs with a frozen backbone")
    parser.add_argument("--beta", type=float, default=1.0, help="tune the threshold for F-beta (1 = F1, 2 = F2)")
    parser.add_argument("--patience", type=int, default=5, help="early stopping: epochs without better val AUPRC")
    parser.add_argument("--num-workers", type=int, default=None, help="data loader workers (default: 0 on CPU)")


def run(args: argparse.Namespace) -> int:
    from schoolvision.train.fit import TrainConfig, fit

    config = TrainConfig(
        chips_dir=args.chips, out_dir=args.out, backbone=args.backbone, pretrained=args.pretrained,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, image_size=args.image_size,
        device=args.device, seed=args.seed, resume=args.resume, overwrite=args.overwrite,
        freeze_backbone_epochs=args.freeze_epochs, threshold_beta=args.beta, patience=args.patience,
        num_workers=args.num_workers,
    )
    metrics = fit(config)
    if int(os.environ.get("RANK", "0")) == 0:
        keys = ("auprc", "f1", "f2", "precision", "recall", "roc_auc", "threshold")
        print(f"test: {'  '.join(f'{k}={metrics[k]:.3f}' for k in keys)}  (best epoch {metrics['best_epoch']})")
        print(f"run folder: {args.out}  (tensorboard --logdir {args.out / 'tensorboard'})")
    return 0
