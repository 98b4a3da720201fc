"""Static int8 quantisation of the runtime's ONNX graph, scored when it is made and cached beside the float32 one.

The float32 graph of :func:`~schoolvision.model.export.cached_onnx` (``logits``, ``embedding``,
``feature_map``) goes through ONNX Runtime's own tools: ``quant_pre_process`` (shape inference and
graph optimisation), then ``quantize_static`` in the QDQ format with per-channel int8 weights and
uint8 activations (the u8 x s8 products that VNNI / AMX compute), activation ranges calibrated
(min / max) on up to :data:`CALIBRATION_CHIPS` of the run's own validation chips.

The Pads of "same" padding are folded into their convolutions first (:func:`fold_pads`). Only the
trunk's operators on image tensors are quantised (:data:`QUANTIZED_OPS` with a 4-D input): the input
normalisation, the head (pooling and the linear layer, whose logits become P(school)) and any
arithmetic on shapes stay float32 (quantising a padding computed from shapes changes the padding).

The int8 graph is then scored against the float32 one on the run's test split: AUPRC and F1 at the
run's threshold of both, and the largest |P(school) change|, written in the file's metadata
(``int8_accuracy``). ``--runtime auto`` uses int8 only when :meth:`Int8Accuracy.shortfall` finds the
AUPRC drop within :data:`AUPRC_TOLERANCE`, and only on a CPU that runs int8 natively
(:func:`int8_native`).

The file is ``RUN/onnx/<checkpoint stem>-<sha12>-<size>-int8.onnx``, reused while the checkpoint's
checksum, the input size and :data:`FORMAT` stay the same; int8 files of other weights are deleted
when a new one is made.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from schoolvision.data.dataset import ChipDataset
from schoolvision.errors import UserError
from schoolvision.io.atomic import write_bytes
from schoolvision.io.folders import RunFolder
from schoolvision.io.folders import sha256 as file_sha256
from schoolvision.model.checkpoint import CheckpointMeta
from schoolvision.model.export import (
    INPUT,
    OUTPUTS,
    cache_path,
    cached_onnx,
    cached_record,
    read_metadata,
    require_onnx,
    with_metadata,
)
from schoolvision.model.inference import school_probability

AUPRC_TOLERANCE = 0.005
"""Largest test-AUPRC drop (float32 minus int8) with which ``auto`` still picks int8 (the demo run: 0.0018).
F1 is measured and recorded but not gated: it moves in steps of one chip crossing the threshold, ~0.03
with the demo's 34 test schools."""

CALIBRATION_CHIPS = 128
"""Validation chips whose activation ranges set the int8 scales (min / max calibration)."""

QUANTIZED_OPS = ("Conv", "Add", "Clip", "Pad")
"""Operators quantised when their first input is an image tensor (N, C, H, W)."""

NATIVE_INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni", "asimddp", "i8mm")
"""``/proc/cpuinfo`` flags of CPUs with int8 dot-product instructions (x86 AMX / VNNI, Arm dot product);
without them ONNX Runtime emulates the u8 x s8 products and int8 gains little."""

FORMAT = "QDQ, per-channel int8 weights, uint8 activations, min/max calibration, pads folded"
"""Recorded as ``int8`` in the file's metadata: a file made another way (an older release) is made again."""
BATCH = 32


@dataclass(frozen=True)
class Int8Accuracy:
    """The int8 graph beside the float32 one on a run's test split (school = positive)."""

    fp32_auprc: float
    int8_auprc: float
    fp32_f1: float
    int8_f1: float
    max_abs_dprob: float
    mean_abs_dprob: float
    n_chips: int
    calibration_chips: int

    def shortfall(self, tolerance: float | None = None) -> str | None:
        """Why int8 is not good enough (one line), or None when the AUPRC drop is within ``tolerance``.

        ``tolerance`` defaults to :data:`AUPRC_TOLERANCE` (read when called). A NaN AUPRC (a test
        split of one class) cannot show int8 is good enough.
        """
        tolerance = AUPRC_TOLERANCE if tolerance is None else tolerance
        drop = self.fp32_auprc - self.int8_auprc
        if drop <= tolerance:
            return None
        return (f"test AUPRC {self.int8_auprc:.4f} int8 vs {self.fp32_auprc:.4f} float32, "
                f"a drop over the tolerance of {tolerance}")


def int8_native(cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """The first of :data:`NATIVE_INT8_FLAGS` this CPU reports, or None (also where there is no ``/proc/cpuinfo``)."""
    try:
        words = set(Path(cpuinfo).read_text(errors="replace").split())
    except OSError:
        return None
    return next((flag for flag in NATIVE_INT8_FLAGS if flag in words), None)


def int8_path(checkpoint: str | Path, sha256: str, image_size: int) -> Path:
    """``RUN/onnx/<stem>-<sha12>-<size>-int8.onnx``: beside the float32 graph of the same weights and size."""
    fp32 = cache_path(checkpoint, sha256, image_size)
    return fp32.with_name(f"{fp32.stem}-int8.onnx")


def chips_of(checkpoint: str | Path) -> Path:
    """The chips folder the run of ``checkpoint`` was trained on (its ``config.json``), for calibration and scoring.

    Raises:
        UserError: when the run does not record it or it is gone.
    """
    run = RunFolder(Path(checkpoint).parent)
    chips = run.read_config().get("chips_dir")
    if not chips or not (Path(chips) / "chips.csv").is_file():
        raise UserError("int8 quantisation calibrates on the run's validation chips, which are not found "
                        f"({chips or 'no chips_dir in config.json'})", run.root / "config.json")
    return Path(chips)


def _batches(chips_dir: Path, split: str, image_size: int,
             limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(images (B, 3, S, S) float32, labels (B,))`` of ``split``'s chips, in chips.csv order."""
    ds = ChipDataset(chips_dir, split=split, augment=False, image_size=image_size)
    n = len(ds) if limit is None else min(limit, len(ds))
    if n == 0:
        raise UserError(f"split {split!r} has no chips to quantise with", chips_dir / "chips.csv")
    for start in range(0, n, BATCH):
        items = [ds[i] for i in range(start, min(n, start + BATCH))]
        yield torch.stack([it["image"] for it in items]).numpy(), ds.class_ids[start : start + len(items)]


def _image_nodes(onnx_model) -> list[str]:
    """Names of the :data:`QUANTIZED_OPS` nodes whose first input is 4-D (shapes from ``quant_pre_process``)."""
    graph = onnx_model.graph
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in [*graph.value_info, *graph.input]}
    return [n.name for n in graph.node if n.op_type in QUANTIZED_OPS and n.input and rank.get(n.input[0]) == 4]


def fold_pads(model, image_size: int):
    """``model`` (an ``onnx.ModelProto``, changed in place) with each zero Pad before a Conv folded into its pads.

    The TF-ported backbones ("same" padding) compute the padding of their strided convolutions from the
    input's shape at run time, with a Pad before the Conv. At a fixed input size it is a constant, and a
    Conv pads with zeros itself (a quantised one with its zero point), so the Pad, the float32 round trip
    it forces between two int8 operators (a third of the int8 graph's time before) and the shape
    arithmetic go; the outputs stay the same (to float rounding).
    """
    onnx, ort = require_onnx()
    graph = model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    modes = {n.name: next((a.s for a in n.attribute if a.name == "mode"), b"constant") for n in graph.node}
    pads = [n for n in graph.node if n.op_type == "Pad" and modes[n.name] == b"constant" and len(n.input) <= 3
            and [c.op_type for c in consumers.get(n.output[0], [])] == ["Conv"]]
    if not pads:
        return model
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    wanted = [name for n in pads for name in n.input[1:] if name]
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in wanted)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip(wanted, session.run(wanted, {INPUT: np.zeros((1, 3, image_size, image_size), np.float32)})))
    for pad in pads:
        amounts = values[pad.input[1]].tolist()
        fill = values[pad.input[2]] if len(pad.input) == 3 and pad.input[2] else np.zeros(1)
        if len(amounts) != 8 or any(amounts[i] for i in (0, 1, 4, 5)) or min(amounts) < 0 or np.any(fill != 0):
            continue  # not a zero padding of H and W only: leave it
        conv = consumers[pad.output[0]][0]
        old = next((a for a in conv.attribute if a.name == "pads"), None)
        before = list(old.ints) if old is not None else [0, 0, 0, 0]
        if old is not None:
            conv.attribute.remove(old)
        conv.attribute.append(onnx.helper.make_attribute(
            "pads", [before[0] + amounts[2], before[1] + amounts[3], before[2] + amounts[6], before[3] + amounts[7]]))
        conv.input[0] = pad.input[0]
        graph.node.remove(pad)
    needed, kept = {o.name for o in graph.output}, []  # drop what only fed the Pads (the shape arithmetic)
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    return model


def quantize_graph(fp32: Path, chips_dir: Path, image_size: int) -> bytes:
    """The int8 QDQ graph of the float32 graph ``fp32``, calibrated on ``chips_dir``'s validation chips."""
    onnx, _ = require_onnx()
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = (images for images, _ in _batches(chips_dir, "val", image_size, CALIBRATION_CHIPS))

        def get_next(self) -> dict[str, np.ndarray] | None:
            images = next(self.batches, None)
            return None if images is None else {INPUT: images}

    with tempfile.TemporaryDirectory(prefix="schoolvision-int8-") as tmp:
        folded, pre, out = Path(tmp) / "folded.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        onnx.save(fold_pads(onnx.load(str(fp32)), image_size), str(folded))
        quant_pre_process(str(folded), str(pre))
        nodes = _image_nodes(onnx.load(str(pre)))
        quantize_static(str(pre), str(out), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                        calibrate_method=CalibrationMethod.MinMax)
        return out.read_bytes()


def session(source: str | Path | bytes, threads: int | None = None, profile: str | None = None):
    """A CPU inference session of an ONNX graph with all graph optimisations (QDQ pairs fused into int8 kernels).

    ``profile``: a file prefix for ONNX Runtime's per-operator profile (benchmarks).
    """
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads() if threads is None else threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    source = str(source) if isinstance(source, Path) else source
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def score_int8(fp32, int8, chips_dir: Path, meta: CheckpointMeta, image_size: int,
               calibration_chips: int = CALIBRATION_CHIPS) -> Int8Accuracy:
    """AUPRC, F1 and P(school) changes of the ``int8`` session against the ``fp32`` one on the test split."""
    from sklearn.metrics import average_precision_score, f1_score

    labels, p32, p8 = [], [], []
    for images, y in _batches(chips_dir, "test", image_size):
        labels.append(y)
        p32.append(school_probability(fp32.run([OUTPUTS[0]], {INPUT: images})[0], meta.temperature))
        p8.append(school_probability(int8.run([OUTPUTS[0]], {INPUT: images})[0], meta.temperature))
    y, a, b = np.concatenate(labels), np.concatenate(p32), np.concatenate(p8)
    both = y.min() != y.max()

    def auprc(p: np.ndarray) -> float:
        return float(average_precision_score(y, p)) if both else float("nan")

    def f1(p: np.ndarray) -> float:
        return float(f1_score(y, p >= meta.threshold, zero_division=0.0))

    return Int8Accuracy(auprc(a), auprc(b), f1(a), f1(b), float(np.abs(a - b).max()), float(np.abs(a - b).mean()),
                        len(y), calibration_chips)


def cached_int8(model: nn.Module, meta: CheckpointMeta, checkpoint: str | Path,
                image_size: int | None = None) -> tuple[Path, Int8Accuracy]:
    """The int8 graph of ``checkpoint`` at ``image_size`` and its accuracy: made once, reused while the weights stay.

    A cached file is used only when its recorded checksum, size, :data:`FORMAT` and accuracy are there; otherwise it
    is made from the float32 graph (exported first if needed), calibrated on the run's validation
    chips and scored on its test chips (a minute or so on a CPU). Int8 files of the same checkpoint
    name with another checksum are deleted.

    Raises:
        UserError: when the run's chips are not found (:func:`chips_of`) or the extra is not installed.
        OSError: when ``RUN/onnx`` cannot be written.
    """
    checkpoint = RunFolder.checkpoint(checkpoint)
    size = int(image_size or meta.image_size)
    sha = file_sha256(checkpoint)
    path = int8_path(checkpoint, sha, size)
    recorded = cached_record(path, sha, size)
    if recorded.get("int8") == FORMAT:
        try:
            return path, Int8Accuracy(**recorded["int8_accuracy"])
        except (KeyError, TypeError):  # an older file without its accuracy is simply made again
            pass
    chips_dir = chips_of(checkpoint)
    fp32 = cached_onnx(model, meta, checkpoint, size)
    graph = quantize_graph(fp32, chips_dir, size)
    n_calibration = min(CALIBRATION_CHIPS, len(ChipDataset(chips_dir, split="val")))
    accuracy = score_int8(session(fp32), session(graph), chips_dir, meta, size, n_calibration)
    metadata = {**read_metadata(fp32), "int8": FORMAT, "int8_accuracy": asdict(accuracy)}
    write_bytes(path, with_metadata(graph, metadata))
    other_weights = re.compile(rf"{re.escape(checkpoint.stem)}-(?!{sha[:12]})[0-9a-f]{{12}}-\d+-int8\.onnx")
    for stale in path.parent.iterdir():
        if other_weights.fullmatch(stale.name):
            stale.unlink(missing_ok=True)
    return path, accuracy
