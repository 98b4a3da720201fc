"""Which layer an explanation looks at: the model's own ``target_layer``, or a finer one for tiny inputs.

The choice depends on the model and the input size only, never on labels.
"""

from __future__ import annotations

import torch
from torch import nn

from schoolvision.errors import UserError
from schoolvision.model.backbones import conv_layer_names

MIN_CAM_CELLS = 4
"""A CAM map coarser than this many cells a side cannot point at anything (a 64 px input gives 2 x 2)."""


def resolve_layer(model: nn.Module, name: str | None = None, image_size: int | None = None) -> tuple[str, nn.Module]:
    """The layer to explain: ``name`` if given, else the model's ``target_layer``.

    Args:
        model: a classifier with ``target_layer`` and ``target_layer_name``.
        name: a module name of ``model``; ``"target"`` forces ``target_layer``.
        image_size: with it, a ``target_layer`` whose map would be coarser than
            :data:`MIN_CAM_CELLS` a side is replaced by the deepest trunk block that is not
            (see :func:`auto_layer`).

    Returns:
        The layer's name and module.

    Raises:
        UserError: ``name`` is not a module of ``model`` (the message lists its convolutions).
    """
    if name is None and image_size is not None:
        name = auto_layer(model, image_size)
    if name is None or name == "target":
        return model.target_layer_name, model.target_layer
    modules = dict(model.named_modules())
    if not name or name not in modules:
        convs = ", ".join(conv_layer_names(model))
        raise UserError(f"layer {name!r} is not in the model; convolutional layers: {convs}")
    return name, modules[name]


def linear_cam_weights(model: nn.Module, layer: nn.Module | None = None) -> torch.Tensor | None:
    """The head's weights, (classes, C), when Grad-CAM at ``layer`` is the plain CAM; else None.

    When ``layer`` (default ``target_layer``) is the trunk's last module and pooling plus head are a
    global average pool and one linear layer (dropout is the identity in eval mode), the gradient of
    logit c w.r.t. the map is ``W[c] / (h w)`` at every cell, so Grad-CAM's channel weights are that
    row and Grad-CAM equals CAM (Selvaraju et al. 2017, section 3.1): a forward pass's feature map
    suffices (:func:`schoolvision.explain.maps.cam_from_features`), and a fast runtime can give it.
    Any other head (a Linear + Hardswish in the pool, a LayerNorm) keeps the gradients.
    """
    layer = getattr(model, "target_layer", None) if layer is None else layer
    trunk, pool, head = (getattr(model, name, None) for name in ("trunk", "pool", "head"))
    if not all(isinstance(m, nn.Sequential) and len(m) for m in (trunk, pool, head)) or layer is not trunk[-1]:
        return None
    pools = list(pool)
    if not (len(pools) == 2 and isinstance(pools[0], nn.AdaptiveAvgPool2d) and isinstance(pools[1], nn.Flatten)
            and pools[0].output_size in (1, (1, 1))):
        return None
    *dropouts, linear = list(head)
    if not isinstance(linear, nn.Linear) or not all(isinstance(m, nn.Dropout) for m in dropouts):
        return None
    return linear.weight.detach().float()


def auto_layer(model: nn.Module, image_size: int, min_cells: int = MIN_CAM_CELLS) -> str:
    """The layer whose CAM map has at least ``min_cells`` a side at ``image_size``.

    ``target_layer`` if its map does, else the last trunk block holding a convolution (``trunk.X`` or
    ``trunk.X.Y``, in execution order) whose map does.
    """
    sizes: dict[str, tuple[int, int]] = {}

    def record(name: str):
        def hook(module, inputs, output):
            if torch.is_tensor(output) and output.ndim == 4:
                sizes.setdefault(name, tuple(output.shape[-2:]))

        return hook

    handles = [
        module.register_forward_hook(record(name))
        for name, module in model.named_modules()
        if name == model.target_layer_name
        or (name.startswith("trunk.") and name.count(".") <= 2
            and any(isinstance(m, nn.Conv2d) for m in module.modules()))
    ]
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for h in handles:
            h.remove()
    if min(sizes.get(model.target_layer_name, (0, 0))) >= min_cells:
        return model.target_layer_name
    fine = [n for n, hw in sizes.items() if min(hw) >= min_cells]  # dict order = execution order
    return fine[-1] if fine else model.target_layer_name
