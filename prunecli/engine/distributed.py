"""Devices and torchrun/DDP setup (NCCL on GPUs, gloo on CPU)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from prunecli.errors import OptionError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``; under torchrun ``auto``/``cuda`` mean this rank's GPU."""
    name = (name or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise OptionError(f"{{device}} {name}: CUDA is not available on this machine (use {{device}} cpu)")
        if name == "cuda":
            return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        try:
            index = int(name.split(":", 1)[1])
        except (IndexError, ValueError):
            raise OptionError(f"{{device}} {name!r}: expected auto, cpu, cuda or cuda:N") from None
        if index >= torch.cuda.device_count():
            raise OptionError(f"{{device}} {name}: only {torch.cuda.device_count()} CUDA device(s) here")
        return torch.device("cuda", index)
    raise OptionError(f"{{device}} {name!r}: expected auto, cpu, cuda or cuda:N")


def init_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Read torchrun's environment; start the process group when there is more than one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    info = DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)
    device = resolve_device(device_name, local_rank)
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return info, device


def shutdown_distributed() -> None:
    """Destroy the process group; on a normal exit, once every rank has got here.

    Without the barrier a rank that finished first could destroy the group while a
    collective of the other (DDP's last reduction, the test set's all-reduce) was still in
    Gloo's worker threads, and the process died with "terminate called without an active
    exception" (SIGABRT) after its work was done: 1 run in 8-10 of tests/test_distributed.py's
    2-process fit. Called from a ``finally`` while an exception propagates, it skips the
    barrier: the other ranks may never arrive, and waiting would hang the failing one.
    """
    if dist.is_available() and dist.is_initialized():
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device, info: DistInfo) -> list[float]:
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
