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
from sortkd.training.loop import resolve_device
from torch import nn
from sortkd.training.loop import EpochMeter


# --- distributed --------------------------------------------------------------

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


def broadcast_buffers(module: nn.Module, ranks: Ranks) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank.

    DDP hands rank 0's buffers to every training forward; with per-process batch norm each rank
    then updates its own copy, so before an evaluation the ranks hold different statistics. Upstream's
    DataParallel keeps those of its first device: so does this.
    """
    if ranks.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def shutdown(ranks: Ranks) -> None:
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()


# --- global_bn ----------------------------------------------------------------

class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced (summed) gradient."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total

    @staticmethod
    def backward(ctx, grad):
        total = grad.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return total, None


def sum_over_ranks(tensor: torch.Tensor, group) -> torch.Tensor:
    return _SumOverRanks.apply(tensor, group)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    def __init__(self, num_features: int, eps: float, momentum: float, group, device=None, dtype=None):
        super().__init__(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        if self.momentum is None:
            raise ValueError("GlobalBatchNorm2d needs a numeric momentum")
        channels = x.shape[1]
        local_count = torch.tensor([x.numel() // channels], dtype=x.dtype, device=x.device)
        totals = sum_over_ranks(torch.cat([x.sum(dim=(0, 2, 3)), local_count]), self.group)
        count = totals[-1].detach()
        mean = totals[:channels] / count
        centered = x - mean.view(1, channels, 1, 1)
        var = sum_over_ranks((centered * centered).sum(dim=(0, 2, 3)), self.group) / count
        scale = torch.rsqrt(var + self.eps) * self.weight
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * count / (count - 1), self.momentum)
        return centered * scale.view(1, channels, 1, 1) + self.bias.view(1, channels, 1, 1)


def _to_global(module: nn.Module, group) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d):
        replacement = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, group,
                                        device=module.weight.device, dtype=module.weight.dtype)
        replacement.load_state_dict(module.state_dict())
        replacement.train(module.training)
        return replacement
    for name, child in module.named_children():
        setattr(module, name, _to_global(child, group))
    return module


def synchronize_batch_norm(model: nn.Module, device: torch.device, group) -> nn.Module:
    """Every BatchNorm2d of ``model`` normalizes with the statistics of the global batch."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=group)
    return _to_global(model, group)


# --- epoch_sums ---------------------------------------------------------------

_NO_BAD_STEP = torch.iinfo(torch.int64).max


def reduce_meter(meter: EpochMeter, ranks: Ranks) -> tuple[dict[str, float], int]:
    """The epoch's metrics over all ranks, and the first non-finite step of any rank (-1: none)."""
    if ranks.distributed:
        keys = list(meter.sums)  # same insertion order on every rank: same code path
        totals = all_reduce_sum(torch.stack([meter.sums[k] for k in keys] + [meter.samples]), ranks)
        for i, key in enumerate(keys):
            meter.sums[key] = totals[i]
        meter.samples = totals[-1]
        bad = torch.where(meter.first_bad_step < 0, torch.full_like(meter.first_bad_step, _NO_BAD_STEP),
                          meter.first_bad_step)
        dist.all_reduce(bad, op=dist.ReduceOp.MIN)
        meter.first_bad_step = torch.where(bad == _NO_BAD_STEP, torch.full_like(bad, -1), bad)
    return meter.read()


class DataOrderChecksum:
    """Σ (sample index + 1) · (step + 1) over the epoch, summed across ranks.

    Equal between runs exactly when every step's global batch holds the same samples (as a
    checksum): the proof, recorded in metrics.jsonl, that N processes read what 1 process reads.
    """

    def __init__(self, device: torch.device):
        self.total = torch.zeros((), dtype=torch.int64, device=device)

    def update(self, step: int, indices: torch.Tensor) -> None:
        self.total += ((indices.to(torch.int64) + 1) * (step + 1)).sum()

    def read(self, ranks: Ranks) -> int:
        return int(all_reduce_sum(self.total.clone(), ranks).item())
