"""torch.distributed plumbing for DDP training and sharded evaluation.

Launch with ``torchrun --nproc_per_node=N -m m2s2l train ...`` (or ``m2s2l train --gpus N``, which re-executes
itself under ``torch.distributed.run --standalone``). Backend: NCCL on CUDA, gloo on CPU. Each rank holds the
whole (small) uint8 frame cache and takes its slice of every global batch, so the global batch is
``--batch-size * world_size`` and one step on N ranks equals one step on 1 rank with the N-times batch.
"""
import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self):
        return self.rank == 0

    @property
    def enabled(self):
        return self.world > 1


def resolve_device(name):
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def init_distributed(device="auto"):
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1); return the rank's DistInfo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world <= 1:
        return DistInfo(device=dev)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        atexit.register(_destroy)
    return DistInfo(rank, world, local, dev)


def _destroy():
    if tdist.is_initialized():
        tdist.destroy_process_group()


def shutdown(info):
    """End of a command: synchronise the ranks. The process group itself is kept for a following command in
    the same process (re-creating it under torchrun's agent store can pick up stale rendezvous keys) and
    destroyed at exit."""
    if info.enabled and tdist.is_initialized():
        tdist.barrier()


def all_reduce_sum(info, t):
    if info.enabled:
        tdist.all_reduce(t)
    return t


def broadcast_flag(info, flag):
    """Rank 0's boolean decision, shared with every rank (so all stop at the same step)."""
    if not info.enabled:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    tdist.broadcast(t, 0)
    return bool(t.item())


def gather_strided(info, local, n):
    """Inverse of sharding ``positions[rank::world]``: all ranks get the full length-``n`` 1-D tensor."""
    if not info.enabled:
        return local[:n]
    per = -(-n // info.world)
    buf = torch.zeros(per, dtype=local.dtype, device=info.device)
    buf[:local.numel()] = local.to(info.device)
    parts = [torch.zeros_like(buf) for _ in range(info.world)]
    tdist.all_gather(parts, buf)
    return torch.stack(parts, 1).reshape(-1)[:n]
