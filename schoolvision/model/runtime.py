"""Inference runtimes: one small class per way of running a trained classifier forward.

A runtime takes a batch of chips, float (N, 3, H, W) RGB in [0, 1] as a tensor or an array (the
model normalises inside), and returns logits as float32 numpy. Gradients (SHAP, guided backprop,
Grad-CAM on any layer) stay with the torch model; runtimes are for the forward passes only, and
:meth:`Runtime.feature_maps` gives the trunk's map that a CAM of a linear head needs (the scan's
CAM peaks: :mod:`schoolvision.scan.peaks`).

========== =====================================================================================
name       what runs
========== =====================================================================================
torch      the model as loaded, float32, eager (what scan, explain and features used until now)
torch-fast channels_last; plus autocast where the hardware computes it natively: bfloat16 on a CPU
           with avx512_bf16 / AMX (oneDNN reports it), bfloat16 or float16 on CUDA. The first
           batch is run both ways, and autocast is dropped (with a warning) if P(school) moves
           by more than :data:`AUTOCAST_TOLERANCE`.
onnx       ONNX Runtime on the exported graph (CPU; CUDA when onnxruntime-gpu is installed), cached
           beside the checkpoint by :func:`~schoolvision.model.export.cached_onnx`
onnx-int8  ONNX Runtime on the run's int8 graph (CPU): static QDQ quantisation calibrated on the run's
           validation chips, scored on its test chips, cached beside the float32 graph
           (:mod:`schoolvision.model.quantize`)
auto       on CPU with onnx and onnxruntime installed: ``onnx-int8`` where the CPU runs int8
           natively (VNNI / AMX / Arm dot product) and its measured drop is within tolerance, else
           ``onnx`` (one warning and :meth:`Runtime.describe` say why); elsewhere ``torch-fast``
========== =====================================================================================

A new runtime is a subclass of :class:`Runtime` with a ``name`` that overrides ``_forward``,
registered with :func:`register`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from schoolvision.errors import UserError
from schoolvision.model.checkpoint import CheckpointMeta
from schoolvision.model.device import resolve_device
from schoolvision.model.export import FEATURE_MAP, INPUT, OUTPUTS, cached_onnx, onnx_bytes, require_onnx
from schoolvision.model.inference import school_probability
from schoolvision.model.quantize import NATIVE_INT8_FLAGS, Int8Accuracy, cached_int8, int8_native

AUTOCAST_TOLERANCE = 0.02
"""Largest |P(school) - float32 P(school)| accepted from autocast on the first batch.

Measured with ``benchmarks/inference_runtimes.py`` on demo chips (efficientnet_lite0 with a head
fitted to the demo labels, so P(school) spans [0, 1]): bfloat16 autocast moved P(school) by at most
0.007 at 128 px and 0.011 at 224 px (32 chips, bfloat16 emulated on a CPU without native support,
where it is never chosen); channels_last float32 and ONNX Runtime by less than 1e-6. Twice the
largest measured shift, so a model that is as robust as this one keeps its speed-up and one that
is clearly less robust falls back to float32.
"""

PRECISION_TOLERANCE: dict[str, float] = {"float32": 1e-5, "bfloat16": 0.05, "float16": 0.01, "int8": 0.1}
"""Largest |difference| from float32 expected of a runtime's features and logits, by the precision it ran at
(:attr:`Runtime.precision`), relative to the values' own scale (``atol = rtol = tolerance``). float32 runtimes
agree to float noise (~1e-6); bfloat16 keeps 8 bits of mantissa (relative rounding 2**-8 per operation,
accumulated over the trunk: features moved by up to 0.008 at a scale of ~1 on the demo model), float16 10 bits;
int8 quantises weights and activations (P(school) moved by 0.06 at most, 0.02 on average, on a demo run).
Tests that compare a runtime with float32 take their tolerance from here, so that they hold on every CPU."""

Input = torch.Tensor | np.ndarray


BF16_ENV = "SCHOOLVISION_BF16"
"""Environment switch of the CPU bfloat16 paths (``torch-fast`` autocast, ``--precision bf16`` training):
``force`` takes them on any CPU (emulated, ~15x slower, where the CPU lacks bfloat16: so that a machine without
AMX runs, and its tests check, what an AMX machine runs; CI does), ``off`` never, unset or ``auto``: where
oneDNN computes bfloat16 natively."""


def bf16_native() -> bool:
    """True when the CPU bfloat16 paths are taken: natively computed (avx512_bf16 / AMX), or forced by :data:`BF16_ENV`.

    Raises:
        UserError: an unknown value of :data:`BF16_ENV`.
    """
    mode = os.environ.get(BF16_ENV, "auto").strip().lower()
    if mode in ("force", "on", "1"):
        return True
    if mode in ("off", "0"):
        return False
    if mode not in ("auto", ""):
        raise UserError(f"{BF16_ENV}={mode!r}: use force, off or auto")
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype the hardware runs natively, or None (stay in float32)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and bf16_native():
        return torch.bfloat16
    return None


def onnx_available() -> bool:
    """Both packages of the ``onnx`` extra are importable (checked without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


class Runtime:
    """Runs one classifier forward on batches of chips.

    Args:
        model: the classifier (a :class:`~schoolvision.model.backbones.SchoolClassifier`), on ``device``.
        meta: its checkpoint meta (temperature for :meth:`probability`).
        device: where the batches run.
        checkpoint: the checkpoint file or run folder the model came from (the ONNX cache key);
            without it the ONNX graph is exported in memory on every construction.
    """

    name: ClassVar[str] = ""
    note: str = ""  # why ``auto`` chose this runtime, shown by describe()

    def __init__(self, model: torch.nn.Module, meta: CheckpointMeta, device: str | torch.device = "cpu",
                 checkpoint: str | Path | None = None):
        self.model = getattr(model, "module", model).eval()
        self.meta = meta
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.checkpoint = checkpoint

    def logits(self, x: Input) -> np.ndarray:
        """Logits (N, classes), float32."""
        return self._forward(x, embed=False)[1]

    __call__ = logits

    def features(self, x: Input) -> tuple[np.ndarray, np.ndarray]:
        """``(embedding (N, D), logits (N, classes))`` from one pass, float32."""
        emb, logits = self._forward(x, embed=True)
        return emb, logits

    def probability(self, x: Input) -> np.ndarray:
        """Calibrated P(school) (N,), float64."""
        return school_probability(self.logits(x), self.meta.temperature)

    def feature_maps(self, x: Input) -> tuple[np.ndarray, np.ndarray]:
        """``(feature map (N, C, h, w), logits (N, classes))`` from one float32 pass, float32.

        The trunk's map before pooling: with the head's weights, the class activation map (equal to
        Grad-CAM at that map for a linear head; see :func:`schoolvision.explain.layers.linear_cam_weights`).
        Always float32, also where :meth:`logits` runs in autocast, so the maps equal the gradient ones.
        """
        return _torch_feature_maps(self.model, self._tensor(x).contiguous(memory_format=torch.channels_last))

    @property
    def precision(self) -> str:
        """The arithmetic of the forward passes run so far: ``float32``, ``bfloat16`` or ``float16``."""
        return "float32"

    def describe(self) -> str:
        """One line for logs and benchmark reports."""
        return f"{self.name} on {self.device}"

    def _forward(self, x: Input, embed: bool) -> tuple[np.ndarray | None, np.ndarray]:
        raise NotImplementedError

    def _tensor(self, x: Input) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x
        return x.to(self.device, dtype=torch.float32, non_blocking=True)


RUNTIMES: dict[str, type[Runtime]] = {}
"""Registered runtimes by name (``auto`` is resolved by :func:`resolve_runtime`)."""


def register(cls: type[Runtime]) -> type[Runtime]:
    """Class decorator: make a :class:`Runtime` subclass available under its ``name``."""
    RUNTIMES[cls.name] = cls
    return cls


def _numpy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.float().cpu().numpy()


@torch.inference_mode()
def _torch_feature_maps(model: torch.nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    fmap = model.feature_map(x)
    return _numpy(fmap), _numpy(model.head(model.pool(fmap)))


@register
class TorchRuntime(Runtime):
    """float32 eager, exactly the forward pass scan / explain / features ran before runtimes existed."""

    name = "torch"

    @torch.inference_mode()
    def _forward(self, x: Input, embed: bool) -> tuple[np.ndarray | None, np.ndarray]:
        x = self._tensor(x)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        if not embed:
            return None, _numpy(self.model(x))
        emb = self.model.embed(x)
        return _numpy(emb), _numpy(self.model.head(emb))


@register
class FastTorchRuntime(Runtime):
    """channels_last, with autocast only where native and only while it stays within :data:`AUTOCAST_TOLERANCE`.

    The model's weights are converted to channels_last in place (gradient methods run on them
    unchanged). ``self.dtype`` is the autocast dtype in use (None: float32); ``self.autocast_error``
    the max |dP(school)| measured on the first batch.
    """

    name = "torch-fast"

    def __init__(self, model, meta, device="cpu", checkpoint=None, dtype: torch.dtype | None | str = "native"):
        super().__init__(model, meta, device, checkpoint)
        self.model.to(memory_format=torch.channels_last)
        self.dtype = autocast_dtype(self.device) if dtype == "native" else dtype
        self.autocast_error: float | None = None
        self._checked = self.dtype is None

    @property
    def precision(self) -> str:
        """The autocast dtype in use (``float32`` when none, or after a fall-back on the first batch)."""
        return "float32" if self.dtype is None else str(self.dtype).removeprefix("torch.")

    def describe(self) -> str:
        """Name, device, layout and the autocast dtype in use."""
        return f"{self.name} on {self.device} (channels_last, {self.precision})"

    def _autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.inference_mode()
    def _run(self, x: torch.Tensor, embed: bool, autocast: bool):
        with self._autocast() if autocast else contextlib.nullcontext():
            if not embed:
                return None, self.model(x)
            emb = self.model.embed(x)
            return emb, self.model.head(emb)

    def _forward(self, x: Input, embed: bool) -> tuple[np.ndarray | None, np.ndarray]:
        x = self._tensor(x).contiguous(memory_format=torch.channels_last)
        if self._checked:
            emb, logits = self._run(x, embed, autocast=self.dtype is not None)
            return _numpy(emb), _numpy(logits)
        # first batch: float32 is the reference; keep autocast only if it agrees
        emb, logits = self._run(x, embed, autocast=False)
        _, fast = self._run(x, False, autocast=True)
        t = self.meta.temperature
        moved = school_probability(_numpy(fast), t) - school_probability(_numpy(logits), t)
        self.autocast_error = float(np.abs(moved).max(initial=0.0))
        self._checked = True
        if self.autocast_error > AUTOCAST_TOLERANCE:
            warnings.warn(f"{self.dtype} autocast moved P(school) by {self.autocast_error:.4f} "
                          f"(> {AUTOCAST_TOLERANCE}) on the first batch; running in float32", stacklevel=3)
            self.dtype = None
        return _numpy(emb), _numpy(logits)


@register
class OnnxRuntime(Runtime):
    """ONNX Runtime on the exported graph; one session per input size, graph cached beside the checkpoint.

    Uses as many intra-op threads as torch (``torch.get_num_threads()``), so ``--threads``-style
    limits apply to both.
    """

    name = "onnx"

    def __init__(self, model, meta, device="cpu", checkpoint=None):
        super().__init__(model, meta, device, checkpoint)
        _, self._ort = require_onnx()
        providers = self._ort.get_available_providers()
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in providers:
                raise UserError("--runtime onnx on CUDA needs onnxruntime-gpu; on a GPU use --runtime torch-fast")
            self.providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            self.providers = ["CPUExecutionProvider"]
        self._sessions: dict[int, object] = {}
        self.paths: dict[int, Path] = {}

    def describe(self) -> str:
        """Name, device, onnxruntime version and execution provider."""
        note = f"; {self.note}" if self.note else ""
        return f"{self.name} on {self.device} (onnxruntime {self._ort.__version__}, {self.providers[0]}){note}"

    def session(self, image_size: int):
        """The inference session for inputs of ``image_size`` pixels (exported on first use)."""
        if image_size not in self._sessions:
            options = self._ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.inter_op_num_threads = 1
            options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._sessions[image_size] = self._ort.InferenceSession(self._source(image_size), sess_options=options,
                                                                    providers=self.providers)
        return self._sessions[image_size]

    def _source(self, image_size: int) -> str | bytes:
        """The graph to run: the cached file, or bytes exported in memory (no checkpoint, read-only run folder)."""
        if self.checkpoint is not None:
            try:
                self.paths[image_size] = cached_onnx(self.model, self.meta, self.checkpoint, image_size)
                return str(self.paths[image_size])
            except OSError:
                pass
        return onnx_bytes(self.model, self.meta, image_size, feature_map=True)

    def _forward(self, x: Input, embed: bool) -> tuple[np.ndarray | None, np.ndarray]:
        arr = x.detach().cpu().numpy() if torch.is_tensor(x) else x
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if arr.shape[-1] != arr.shape[-2]:
            raise ValueError(f"chips must be square, got {arr.shape}")
        if len(arr) == 0:
            n = getattr(self.model, "num_classes", len(self.meta.classes))
            return np.zeros((0, getattr(self.model, "feature_dim", 0)), np.float32), np.zeros((0, n), np.float32)
        names = list(OUTPUTS) if embed else [OUTPUTS[0]]
        out = self.session(int(arr.shape[-1])).run(names, {INPUT: arr})
        return (out[1], out[0]) if embed else (None, out[0])

    def feature_maps(self, x: Input) -> tuple[np.ndarray, np.ndarray]:
        """``(feature map, logits)`` from the cached graph's ``feature_map`` output (same session as :meth:`logits`)."""
        arr = np.ascontiguousarray(x.detach().cpu().numpy() if torch.is_tensor(x) else x, dtype=np.float32)
        logits, fmap = self.session(int(arr.shape[-1])).run([OUTPUTS[0], FEATURE_MAP], {INPUT: arr})
        return fmap, logits


@register
class OnnxInt8Runtime(OnnxRuntime):
    """ONNX Runtime on the run's int8 graph (:mod:`schoolvision.model.quantize`), CPU only.

    The graph is calibrated on the run's validation chips, so it needs the checkpoint of a run folder
    whose chips are still there. ``accuracy[size]`` is what was measured when the graph was made (test
    AUPRC / F1 beside float32). :meth:`feature_maps` come from the same int8 graph. ``dtype`` keys
    caches of its outputs apart from float32 ones (cluster features).
    """

    name = "onnx-int8"
    dtype = torch.qint8

    @property
    def precision(self) -> str:
        """``int8``: weights and activations quantised (the head stays float32)."""
        return "int8"

    def __init__(self, model, meta, device="cpu", checkpoint=None):
        super().__init__(model, meta, device, checkpoint)
        if self.device.type != "cpu":
            raise UserError("--runtime onnx-int8 runs on the CPU; on a GPU use --runtime torch-fast")
        self.accuracy: dict[int, Int8Accuracy] = {}

    def describe(self) -> str:
        """As :class:`OnnxRuntime`, with the quantisation and its measured test AUPRC."""
        acc = self.accuracy.get(self.meta.image_size)
        measured = "" if acc is None else f", test AUPRC {acc.int8_auprc:.4f} vs float32 {acc.fp32_auprc:.4f}"
        return f"{self.name} on {self.device} (onnxruntime {self._ort.__version__}, int8 QDQ{measured})"

    def _source(self, image_size: int) -> str:
        if self.checkpoint is None:
            raise UserError("--runtime onnx-int8 needs the run folder: its graph is calibrated on the run's chips")
        try:
            self.paths[image_size], self.accuracy[image_size] = cached_int8(self.model, self.meta, self.checkpoint,
                                                                            image_size)
        except OSError as exc:
            raise UserError(f"the int8 graph is cached in RUN/onnx, which cannot be written ({exc.strerror})",
                            self.checkpoint) from exc
        return str(self.paths[image_size])


def resolve_runtime(name: str, device: str | torch.device = "cpu", int8: bool = True) -> str:
    """The concrete runtime ``name`` stands for on ``device`` (``auto`` is decided here).

    ``auto`` on a CPU is ``onnx-int8`` where the CPU runs int8 natively (:func:`int8_native`) and
    ``int8`` allows it, else ``onnx``; :func:`make_runtime` still falls back to ``onnx`` when the
    int8 graph's measured accuracy is not within tolerance.

    Raises:
        UserError: for an unknown name, or ``onnx`` / ``onnx-int8`` without the extra installed.
    """
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    if name == "auto":
        if device.type != "cpu" or not onnx_available():
            return "torch-fast"
        return OnnxInt8Runtime.name if int8 and int8_native() else OnnxRuntime.name
    if name not in RUNTIMES:
        raise UserError(f"unknown runtime {name!r}; use one of {', '.join(RUNTIME_CHOICES)}")
    if name in (OnnxRuntime.name, OnnxInt8Runtime.name):
        require_onnx()
    return name


def runtime_precision(name: str, device: str | torch.device = "cpu") -> torch.dtype | None:
    """The reduced precision runtime ``name`` will try on ``device``, or None for float32.

    float32 runtimes (``torch``, ``onnx``, ``torch-fast`` without native autocast) agree to float
    noise (~1e-6), so results cached from one serve the others; an autocast dtype moves outputs by
    up to :data:`AUTOCAST_TOLERANCE` and keys its own cache. ``torch-fast`` may still fall back to
    float32 on its first batch (its ``dtype`` then becomes None).

    Raises:
        UserError: as :func:`resolve_runtime`.
    """
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    resolved = resolve_runtime(name, device)
    if resolved == OnnxInt8Runtime.name:
        return OnnxInt8Runtime.dtype
    return autocast_dtype(device) if resolved == FastTorchRuntime.name else None


def make_runtime(name: str, model: torch.nn.Module, meta: CheckpointMeta, device: str | torch.device = "cpu",
                 checkpoint: str | Path | None = None, int8: bool = True) -> Runtime:
    """Build the runtime ``name`` (``auto``, ``torch``, ``torch-fast``, ``onnx`` or ``onnx-int8``) for a loaded model.

    ``auto`` tries int8 where :func:`resolve_runtime` says so (``int8`` false: never) and keeps it
    only when its measured drop is within tolerance (:meth:`Int8Accuracy.shortfall`); otherwise it
    runs float32 ONNX with one warning saying why, and :meth:`Runtime.describe` says why too.

    Args:
        name: a registered runtime name or ``auto``.
        model: the classifier, already on ``device``.
        meta: its checkpoint meta.
        device: where batches run.
        checkpoint: the checkpoint file or run folder (ONNX cache key); optional, except for ``onnx-int8``.
        int8: whether ``auto`` may pick int8 (evaluate keeps the run's float32 numbers).

    Returns:
        The runtime.

    Raises:
        UserError: unknown name; ``onnx`` without onnx/onnxruntime (names the extra); ``onnx`` on
            CUDA without onnxruntime-gpu; ``onnx-int8`` on CUDA, without a run folder or its chips.
    """
    resolved = resolve_runtime(name, device, int8)
    if name != "auto" or resolved == FastTorchRuntime.name:
        return RUNTIMES[resolved](model, meta, device, checkpoint)
    if resolved == OnnxRuntime.name:
        fp32 = OnnxRuntime(model, meta, device, checkpoint)
        if int8:
            fp32.note = f"float32, int8 not used: this CPU has none of {', '.join(NATIVE_INT8_FLAGS)}"
        return fp32
    quantized = OnnxInt8Runtime(model, meta, device, checkpoint)
    expected = True  # a run folder whose chips are there: int8 was to be had, so a fall-back is worth a warning
    try:
        quantized.session(meta.image_size)  # made, calibrated and scored here on first use
        why = quantized.accuracy[meta.image_size].shortfall()
        expected = False  # measured and found short: a choice auto made as documented, said in describe()
    except UserError as exc:  # no run folder or no chips to calibrate on: nothing the user asked for is lost
        why, expected = str(exc).splitlines()[0], False
    except Exception as exc:  # noqa: BLE001 - read-only, a graph the tools cannot quantise:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__  # auto runs float32 where that works
    if why is None:
        return quantized
    if checkpoint is not None and expected:  # the note below says why in describe() either way
        warnings.warn(f"--runtime auto: float32 ONNX Runtime, not int8: {why}", stacklevel=2)
    fp32 = OnnxRuntime(model, meta, device, checkpoint)
    fp32.note = f"float32, int8 not used: {why}"
    return fp32


RUNTIME_CHOICES: tuple[str, ...] = ("auto", *RUNTIMES)
"""Values for a ``--runtime`` option."""
