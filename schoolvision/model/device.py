"""Pick the compute device, and keep the CPU's memory allocator out of the way of training."""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Iterator

import torch

from schoolvision.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """Return the device for ``name`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``).

    ``auto`` takes CUDA when present so that the same command runs on a laptop and on a GPU box.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but CUDA is not available here; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"unknown device {name!r} (use auto, cpu or cuda)") from exc


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_GLIBC_MMAP_MAX, _GLIBC_TRIM_THRESHOLD = 65536, 128 * 1024  # glibc's defaults, restored on exit


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - musl and others lack it
        return libc
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def kept_heap() -> Iterator[bool]:
    """Keep freed CPU tensors in the process heap for the block, then give the memory back.

    glibc serves every allocation above 32 MB (a 224 px batch's activations) with a fresh ``mmap``
    and returns it on free, so each training step page-faults its activations in again, which on a few
    CPU cores is a large share of the step (``benchmarks/train_precision.py`` measures it). Inside the
    block large blocks come from the heap and stay there for the next step; on exit glibc's defaults
    return and ``malloc_trim`` releases the heap.
    Yields whether the setting applied (glibc only; elsewhere the block runs unchanged).
    """
    libc = _glibc()
    if libc is None:
        yield False
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    try:
        yield True
    finally:
        libc.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_TRIM_THRESHOLD)
        libc.malloc_trim(0)
