"""Why does the model call a chip a school? CAM methods, guided backprop and SHAP, as heatmaps.

Each method is a small :class:`Explainer` subclass in pytorch-grad-cam's style: used in a ``with``
block (hooks are released on exit, so explaining thousands of chips does not leak) and called as
``maps = explain(x)``, where ``x`` is a batch of RGB chips in [0, 1], shape (B, 3, H, W), and ``maps``
a float32 array (B, H, W) in which positive values are evidence *for* the target class. CAM maps are
in [0, 1]; SHAP maps are signed. A new method is one subclass overriding :meth:`Explainer.explain`,
added to :data:`METHODS`.

The layer is the model's own ``target_layer`` or one the user names (see
:func:`schoolvision.explain.layers.resolve_layer`). CAM methods and guided backprop explain the
class logit (pytorch-grad-cam's ``ClassifierOutputTarget``); SHAP explains the class log-odds (one
output, see :mod:`schoolvision.explain.shap_values`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from schoolvision import CLASSES, SCHOOL
from schoolvision.errors import UserError
from schoolvision.explain.layers import resolve_layer
from schoolvision.explain.maps import normalise
from schoolvision.explain.shap_values import gradient_shap

# Activations whose backward pass guided backprop rectifies.
GUIDED_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.SiLU, nn.GELU)


def class_index(target_class: str | int) -> int:
    """Index of a class given by name (``school``) or number."""
    if isinstance(target_class, int) or str(target_class).isdigit():
        idx = int(target_class)
        if 0 <= idx < len(CLASSES):
            return idx
    elif target_class in CLASSES:
        return CLASSES.index(target_class)
    raise UserError(f"unknown target class {target_class!r}; available: {', '.join(CLASSES)}")


# --- hooks --------------------------------------------------------------------------------------


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients (explanations need input or activation gradients only)."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


@contextlib.contextmanager
def graph_from(model: nn.Module, layer: nn.Module) -> Iterator[None]:
    """Start the autograd graph at ``layer``'s output: CAM gradients then cost a head's backward only.

    Must be entered before the CAM object registers its own hooks (they see the new leaf tensor).
    Passes that need gradients down to the input (:func:`guided_backprop`) run inside
    :func:`full_graph`, which switches every such cut off.
    """

    def hook(module, inputs, output):
        if getattr(model, "_explain_full_graph", False) or (output.requires_grad and output.grad_fn is None):
            return None  # a full-graph pass, or already a leaf (another explainer cut here)
        return output.detach().requires_grad_(True)

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def full_graph(model: nn.Module) -> Iterator[None]:
    """Disable :func:`graph_from` cuts on ``model`` for the duration (gradients reach the input)."""
    previous = getattr(model, "_explain_full_graph", False)
    model._explain_full_graph = True
    try:
        yield
    finally:
        model._explain_full_graph = previous


@contextlib.contextmanager
def guided_activations(model: nn.Module) -> Iterator[None]:
    """Guided backprop: only positive gradients pass back through each activation.

    A forward hook clamps the gradient arriving at every activation's output; the activation's own
    derivative then masks negative inputs. In-place activations are switched off while active
    (their outputs cannot carry hooks) and restored on exit.
    """
    handles, inplace = [], []
    for m in model.modules():
        if isinstance(m, GUIDED_ACTIVATIONS):
            if getattr(m, "inplace", False):
                inplace.append(m)
                m.inplace = False
            handles.append(m.register_forward_hook(_clamp_gradient))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for m in inplace:
            m.inplace = True


def _clamp_gradient(module, inputs, output):
    if output.requires_grad:
        output.register_hook(lambda g: g.clamp(min=0))


def guided_backprop(model: nn.Module, x: torch.Tensor, target: int = SCHOOL) -> np.ndarray:
    """Guided-backprop gradients of the class logit w.r.t. the input, (B, 3, H, W)."""
    device = next(model.parameters()).device
    with frozen(model), guided_activations(model), full_graph(model):
        x = x.to(device).clone().requires_grad_(True)
        score = model(x)[:, target].sum()
        (grad,) = torch.autograd.grad(score, x)
    return grad.detach().cpu().numpy().astype(np.float32)


def saliency_from_gradients(grad: np.ndarray) -> np.ndarray:
    """A (B, H, W) map in [0, 1] from input gradients: the largest positive channel gradient."""
    return normalise(grad.max(axis=1))


# --- the methods --------------------------------------------------------------------------------


class Explainer:
    """One explanation method: ``with Method(model) as explain: maps = explain(x)``.

    Subclasses set :attr:`name` and override :meth:`explain`; those that keep hooks on the model
    while open register them in :meth:`hooks`. The model is frozen (eval mode, no parameter
    gradients) while the block is open and restored on exit, also after an error.

    Gradients run in channels_last: the model's weights are converted in place (once; the same
    numbers in another layout, as :class:`~schoolvision.model.runtime.FastTorchRuntime` does) and
    ``explain(x)`` passes ``x`` in that layout, which oneDNN and cuDNN run faster than NCHW. The maps
    equal NCHW maps within float noise (``tests/test_explain.py`` holds stored values).
    """

    name: ClassVar[str] = ""

    def __init__(self, model: nn.Module, *, target: int = SCHOOL, layer: str | None = None,
                 image_size: int | None = None):
        self.model = model
        self.target = target
        self.layer = layer
        self.layer_name, self.module = resolve_layer(model, layer, image_size)
        self.device = next(model.parameters()).device
        self._open = contextlib.ExitStack()
        model.to(memory_format=torch.channels_last)

    def __enter__(self) -> Explainer:
        with contextlib.ExitStack() as stack:  # an error while registering releases what was registered
            stack.enter_context(frozen(self.model))
            self.hooks(stack)
            self._open = stack.pop_all()
        return self

    def __exit__(self, *exc) -> bool | None:
        return self._open.__exit__(*exc)

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        """``explain(x)``: an open explainer is the callable the runner and chapters use (channels_last)."""
        return self.explain(x.to(self.device).contiguous(memory_format=torch.channels_last))

    def hooks(self, stack: contextlib.ExitStack) -> None:
        """Register what stays on the model while the block is open, on ``stack`` (released on exit)."""

    def explain(self, x: torch.Tensor) -> np.ndarray:
        """Maps (B, H, W) float32 for chips ``x`` (B, 3, H, W) in [0, 1]."""
        raise NotImplementedError


class CamExplainer(Explainer):
    """A pytorch-grad-cam CAM on :attr:`layer_name`; subclasses name the CAM class."""

    cam_class: ClassVar[type[BaseCAM]]

    def hooks(self, stack: contextlib.ExitStack) -> None:
        """Cut the graph at the layer, then let the CAM hook it (in that order: it must see the cut)."""
        stack.enter_context(graph_from(self.model, self.module))
        self.cam = stack.enter_context(self.cam_class(model=self.model, target_layers=[self.module]))

    def explain(self, x: torch.Tensor) -> np.ndarray:
        """CAM maps of the target class logit, in [0, 1]."""
        x = x.to(self.device)
        maps = self.cam(x, targets=[ClassifierOutputTarget(self.target)] * len(x)).astype(np.float32)
        self.cam.activations_and_grads.clear()  # drop the batch's activations now, not at the next call
        return maps


class GradCam(CamExplainer):
    """Grad-CAM: channel weights from the mean gradient at the last conv block."""

    name = "gradcam"
    cam_class = GradCAM


class GradCamPlusPlus(CamExplainer):
    """Grad-CAM++: second-order channel weights, better for several objects."""

    name = "gradcam++"
    cam_class = GradCAMPlusPlus


class EigenCam(CamExplainer):
    """EigenCAM: first principal component of the activations (gradient-free)."""

    name = "eigencam"
    cam_class = EigenCAM


class GuidedBackprop(Explainer):
    """Guided backpropagation: positive gradients to the input pixels."""

    name = "guided-backprop"

    def explain(self, x: torch.Tensor) -> np.ndarray:
        """The largest positive channel gradient per pixel, in [0, 1]."""
        return saliency_from_gradients(guided_backprop(self.model, x, self.target))


class GuidedGradCam(GradCam):
    """Guided backprop times Grad-CAM: fine detail, class-discriminative."""

    name = "guided-gradcam"

    def explain(self, x: torch.Tensor) -> np.ndarray:
        """Guided-backprop saliency times the Grad-CAM map, rescaled to [0, 1]."""
        cam = super().explain(x)
        maps = normalise(saliency_from_gradients(guided_backprop(self.model, x.to(self.device), self.target)) * cam)
        self.cam.activations_and_grads.clear()
        return maps


class Shap(Explainer):
    """SHAP GradientExplainer (expected gradients) against a training background."""

    name = "shap"

    def __init__(self, model: nn.Module, *, background: torch.Tensor | None = None, nsamples: int = 64, seed: int = 0,
                 **common):
        super().__init__(model, **common)
        if background is None:
            raise UserError("the shap method needs background chips (from the training split)")
        self.background, self.nsamples, self.seed = background, nsamples, seed

    def explain(self, x: torch.Tensor) -> np.ndarray:
        """SHAP values summed over the colour channels (signed)."""
        values = gradient_shap(self.model, x, self.background, nsamples=self.nsamples, seed=self.seed,
                               target=self.target, layer=self.layer)
        return values.sum(axis=1).astype(np.float32) if values.ndim == 4 else values


METHODS: dict[str, type[Explainer]] = {
    cls.name: cls for cls in (GradCam, GradCamPlusPlus, EigenCam, GuidedBackprop, GuidedGradCam, Shap)
}
"""The registry: method name -> class, in the order ``--method all`` runs them."""


def check_method(name: str) -> str:
    """Return ``name`` if it is a known method, else a :class:`UserError` listing them."""
    if name not in METHODS:
        raise UserError(f"unknown explanation method {name!r}; available: {', '.join(METHODS)}")
    return name


def explainer(
    model: nn.Module,
    method: str,
    *,
    layer: str | None = None,
    target: int = SCHOOL,
    background: torch.Tensor | None = None,
    shap_nsamples: int = 64,
    seed: int = 0,
    image_size: int | None = None,
) -> Explainer:
    """An :class:`Explainer` of ``method``, to open in a ``with`` block.

    Args:
        model: the classifier.
        method: a name of :data:`METHODS`.
        layer: the layer to explain (default: the model's ``target_layer``).
        target: the class index to explain.
        background: chips of the training split; ``shap`` only.
        shap_nsamples: expected-gradients samples per chip; ``shap`` only.
        seed: seeds the SHAP samples.
        image_size: lets the default layer adapt to small inputs (see :func:`resolve_layer`).

    Returns:
        An :class:`Explainer`; ``explain(x)`` gives maps (B, H, W) float32.

    Raises:
        UserError: unknown method or layer; ``shap`` without ``background``.
    """
    cls = METHODS[check_method(method)]
    common = {"target": target, "layer": layer, "image_size": image_size}
    if issubclass(cls, Shap):
        return cls(model, background=background, nsamples=shap_nsamples, seed=seed, **common)
    return cls(model, **common)


def explain_batch(model: nn.Module, x: torch.Tensor, method: str, **kwargs) -> np.ndarray:
    """One-shot convenience: maps (B, H, W) for ``x`` (opens and closes the explainer)."""
    kwargs.setdefault("image_size", int(x.shape[-1]))
    with explainer(model, method, **kwargs) as explain:
        return explain(x)
