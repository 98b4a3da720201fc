"""One process per GPU under ``torchrun``: which rank this process is, and its device.

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; without it every helper here is a
no-op, so training and scanning keep one code path for a laptop and for a multi-GPU machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from schoolvision.model.device import resolve_device


@dataclass(frozen=True)
class Distributed:
    """This process's place in the group: (0, 1, 0) when not started by ``torchrun``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 writes the shared files."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for in a single process)."""
        if self.world > 1:
            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a single process)."""
        if self.world == 1:
            return [obj]
        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, obj)
        return parts


def init_distributed(device_name: str = "auto") -> tuple[Distributed, torch.device]:
    """Join the ``torchrun`` process group (NCCL on CUDA, else gloo) and pick this rank's device.

    Args:
        device_name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; under ``torchrun`` a CUDA device
            becomes ``cuda:LOCAL_RANK``, one GPU per process.

    Returns:
        (the process's place in the group, its device).

    Raises:
        UserError: ``device_name`` asks for CUDA where there is none, or is unknown.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(), resolve_device(device_name)
    info = Distributed(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device
