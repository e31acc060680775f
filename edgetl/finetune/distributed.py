"""Data-parallel plumbing for ``torchrun``: process group, samplers, DDP wrapping, reductions.

Outside torchrun every helper degrades to a single-process no-op, so the trainer has one code path.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: its rank, the world size, and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes checkpoints, metrics and logs."""
        return self.rank == 0

    def local(self) -> DistContext:
        """This process alone (for work every rank repeats identically, like training a linear head)."""
        return DistContext(0, 1, 0, self.device)


def resolve_device(device: str | None, local_rank: int = 0) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


@contextmanager
def distributed_context(device: str | None = None) -> Iterator[DistContext]:
    """Join the torchrun process group from its env vars (gloo on CPU, nccl on CUDA) and leave it cleanly.

    A group the caller already initialised is used as is and left open.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    owns = False
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        owns = True
    if dist.is_initialized():
        ctx = DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev)
    else:
        ctx = DistContext(device=dev)
    try:
        yield ctx
    finally:  # no barrier here: after an error on one rank, the others would wait forever
        if owns:
            dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP around ``model`` when distributed. BN buffers are averaged per epoch instead of broadcast per step."""
    if not ctx.enabled:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # torch >= 2.14 renames broadcast_buffers to forward_sync_buffers (both still sync once at wrap time).
    renamed = "forward_sync_buffers" in inspect.signature(ddp).parameters
    no_sync = "forward_sync_buffers" if renamed else "broadcast_buffers"
    options: dict[str, Any] = {no_sync: False}
    return ddp(model, device_ids=ids, **options)


def broadcast_state(module: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every rank (DDP does this on wrap; the linear probe never wraps)."""
    if ctx.enabled:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum over ranks (in place) and return the tensor; identity when not distributed."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_bn_stats(model: nn.Module, ctx: DistContext) -> None:
    """Average BatchNorm running stats over ranks so every rank (and the checkpoint) holds the same model."""
    if not ctx.enabled:
        return
    for module in model.modules():
        if isinstance(module, _BatchNorm) and module.track_running_stats and module.running_mean is not None:
            for buf in (module.running_mean, module.running_var):
                if buf is not None:
                    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                    buf.div_(ctx.world_size)


def gather_rows(local: torch.Tensor, total: int, ctx: DistContext) -> torch.Tensor:
    """Reassemble rows computed round-robin (rank r owns rows r, r+W, ...) into ``(total, ...)`` on every rank."""
    if not ctx.enabled:
        return local
    per_rank = -(-total // ctx.world_size)
    padded = local.new_zeros((per_rank, *local.shape[1:]))
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    out = local.new_empty((total, *local.shape[1:]))
    for r, part in enumerate(parts):
        rows = range(r, total, ctx.world_size)
        out[r :: ctx.world_size] = part[: len(rows)]
    return out
