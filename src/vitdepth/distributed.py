"""Process-group helpers: the same code runs as one process or under torchrun (design §8).

``torchrun --nproc-per-node N -m vitdepth ...`` describes the group in the environment (``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, rendezvous variables); :func:`init_distributed` joins it with gloo on the CPU and
NCCL on CUDA. Everything else here is a thin wrapper over ``torch.distributed`` collectives that is a no-op
in a single process, so callers never branch on the world size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Rank and world size of this process (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    owns_group: bool = False  # this code joined the group (and leaves it); else the caller's group is used

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes files and logs."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world_size > 1

    @property
    def comm_device(self) -> torch.device:
        """Where tensors must live for a collective: the rank's GPU under NCCL, else the CPU."""
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def init_distributed(device: str) -> DistContext:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), local, dist.get_backend(), owns)


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ctx.enabled:
        dist.barrier()


def all_reduce_sum(ctx: DistContext, t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (no-op in a single process)."""
    if ctx.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def reduce_sum_to_main(ctx: DistContext, t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks into rank 0's copy (others keep theirs); returns ``t`` on its own device."""
    if not ctx.enabled:
        return t
    buf = t.to(ctx.comm_device).contiguous()
    dist.reduce(buf, dst=0, op=dist.ReduceOp.SUM)
    if ctx.is_main:
        t.copy_(buf.to(t.device))
    return t


def broadcast_object(ctx: DistContext, obj=None, src: int = 0):
    """``obj`` of rank ``src`` on every rank (picklable objects; small ones: settings, messages, paths)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=ctx.comm_device if ctx.backend == "nccl" else None)
    return box[0]


def gather_objects(ctx: DistContext, obj) -> list | None:
    """Every rank's ``obj`` in rank order on rank 0 (None elsewhere); ``[obj]`` in a single process."""
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def send_array(ctx: DistContext, a: np.ndarray, dst: int = 0) -> None:
    """Send a numpy array to ``dst`` (which calls :func:`recv_array` with the same shape and dtype)."""
    t = torch.from_numpy(np.ascontiguousarray(a)).to(ctx.comm_device)
    dist.send(t, dst=dst)


def recv_array(ctx: DistContext, shape: tuple[int, ...], dtype, src: int) -> np.ndarray:
    """Receive what rank ``src`` sent with :func:`send_array`."""
    t = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype=dtype)).dtype, device=ctx.comm_device)
    dist.recv(t, src=src)
    return t.cpu().numpy()


def destroy(ctx: DistContext) -> None:
    """Leave the process group if :func:`init_distributed` joined it (a caller's own group stays)."""
    if ctx.enabled and ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()
