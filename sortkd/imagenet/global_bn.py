"""Batch norm over the global batch, so that N processes compute what one process computes.

Per-rank batch norm would normalize each rank's slice (b = G/W samples) with its own
statistics, so results would depend on the number of processes. On CUDA this module uses
torch's ``SyncBatchNorm``; torch supports that only on accelerators, so on the CPU (gloo) the
``GlobalBatchNorm2d`` below does the same: two all-reduces per layer (sum, then sum of squared
deviations) whose backward pass sums the gradients of the statistics across ranks. Parameter
and buffer names are those of ``nn.BatchNorm2d``: checkpoints are interchangeable.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


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
