"""What a training run is asked to do: :class:`TrainConfig` and the constants its checks use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from schoolvision.errors import UserError, check_ranges

MIN_EVAL_SCHOOL_CHIPS = 20
"""``train`` warns when the validation or test split holds fewer school chips: the model is chosen, its threshold
tuned and its metrics measured on them, and a handful of schools gives a perfect score by luck."""

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""Training precisions. ``bf16`` on a CPU is opt-in: on CPUs with AMX it trained 1.6x faster at 224 px, but it
changes the recipe's numbers (benchmarks/train_precision.py; README), and where the CPU lacks native bfloat16
it is emulated and ~10x slower than float32."""

# Settings that may differ between an interrupted run and its resumption.
RESUME_FREE = {"resume", "overwrite", "device", "num_workers", "log_every"}
SPLITS = ("train", "val", "test")


@dataclass
class TrainConfig:
    """Every training parameter; written to ``RUN/config.json``."""

    chips_dir: Path
    out_dir: Path
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    epochs: int = 6  # with early stopping (patience) on the validation AUPRC
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0
    freeze_backbone_epochs: int = 0
    freeze_stem: bool | None = None  # None: keep the layers up to output stride 4 at their starting weights when
    # those are learnt (ImageNet or --init-from), train them from random weights: see backbones.stem_modules
    image_size: int | None = None  # None: the backbone's pretraining size (224) if pretrained, else the chip size
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    num_workers: int | None = None  # None: 0 on CPU (data is in memory), min(4, cores) on CUDA
    patience: int | None = 5  # epochs without a better validation AUPRC before stopping; None = never
    threshold_beta: float = 1.0  # 1 tunes the threshold for F1, 2 for F2 (favours recall)
    precision: str = "auto"  # one of PRECISIONS. auto: bf16 autocast on CUDA (fp16 + GradScaler where bf16 is
    # not supported), float32 on every CPU, so that the same command trains the same recipe on any CPU
    channels_last: bool | None = None  # None: on for CUDA and CPU (2-3x faster training steps on CPU, measured)
    preload: bool | None = None  # None: decode the training chips into memory when they fit in 2 GiB
    log_every: int = 10  # batches between progress-bar updates
    overwrite: bool = False
    n_boot: int = 1000  # bootstrap resamples for the F1 / AUPRC intervals
    init_from: Path | None = None  # fine-tune: start from this earlier run's best.pt (or a checkpoint file)

    def __post_init__(self) -> None:
        self.chips_dir = Path(self.chips_dir)
        self.out_dir = Path(self.out_dir)
        if self.init_from is not None:
            self.init_from = Path(self.init_from)
        check_ranges(self, "--epochs >= 1", "--batch-size >= 1", "--lr > 0", "--image-size >= 32",
                     "--freeze-epochs (freeze_backbone_epochs) >= 0", "--beta (threshold_beta) > 0", "--patience >= 1",
                     "--num-workers >= 0", "weight_decay >= 0", "warmup_epochs >= 0", "log_every >= 1", "n_boot >= 1")
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")

