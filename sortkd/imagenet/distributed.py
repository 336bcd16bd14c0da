"""The process group of one ImageNet run: torchrun's environment, or a plain single process.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE. Without them the run is one
process and no process group is created. Backends: gloo on the CPU, nccl on CUDA, where rank
r uses ``cuda:LOCAL_RANK`` of the GPUs it was given (CUDA_VISIBLE_DEVICES).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..engine.device import resolve_device


@dataclass(frozen=True)
class Ranks:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str | None       # None for a single process
    bn_group: object = None   # a process group of its own for the batch-norm statistics

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def init_ranks(device_kind: str) -> Ranks:
    world = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    device = resolve_device(device_kind)  # a clear error when CUDA is asked for but absent
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise RuntimeError(f"local rank {local_rank} needs GPU {local_rank} but only {count} GPU(s) are "
                               f"visible (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); "
                               f"run at most {count} process(es) per node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world == 1:
        return Ranks(rank, 1, local_rank, 1, device, None)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Ranks(rank, world, local_rank, local_world, device, backend, dist.new_group(backend=backend))


def all_reduce_sum(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """In-place sum over the ranks (no-op for one process); returns the tensor."""
    if ranks.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        if ranks.backend == "nccl":
            dist.barrier(device_ids=[ranks.local_rank])
        else:
            dist.barrier()


def shutdown(ranks: Ranks) -> None:
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()
