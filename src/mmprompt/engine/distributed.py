"""Data-parallel helpers: who am I, set up / tear down the process group, reduce counts.

A run started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) trains with DistributedDataParallel:
every process holds the same learner, reads its shard of each global batch, and gradients are averaged,
so the result equals one process with the global batch. Only rank 0 writes files.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "all_reduce_sum", "barrier", "broadcast_object", "init_distributed", "resolve_device"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; other names as given.

    Raises :class:`~mmprompt.errors.DeviceError` for a malformed name or a device this machine lacks.
    """
    from ..errors import DeviceError

    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise DeviceError(f"--device {name} is not a device name; use auto, cpu, cuda or cuda:N ({exc})") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__}); "
                              "use --device cpu or auto")
        if device.index is not None and device.index >= count:
            raise DeviceError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DeviceError(f"--device {name}: MPS is not available on this machine; use --device cpu or auto")
    return device


def init_distributed(device: str = "auto", backend: str | None = None, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group when launched by ``torchrun`` (or already initialised); else one process.

    The backend defaults to NCCL on CUDA and gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return DistContext(rank, world, local, resolve_device(device, local))
    if world <= 1:
        return DistContext(device=resolve_device(device, 0))
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    dev = resolve_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    chosen = backend or ("nccl" if dev.type == "cuda" else "gloo")
    dist.init_process_group(chosen, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    logger.info("process %d of %d joined the %s process group on %s", rank, world, chosen, dev)
    return DistContext(rank, world, local, dev)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over processes in place (no-op for one process)."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: object, ctx: DistContext) -> object:
    """Rank 0's ``obj`` on every process."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
