"""Curriculum Temperature KD: a learnable global temperature trained adversarially.

The temperature parameter ascends the distillation loss through a gradient-
reversal layer whose strength follows a cosine schedule over epochs.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lambda_):
        ctx.save_for_backward(torch.as_tensor(lambda_, dtype=x.dtype, device=x.device))
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (lambda_,) = ctx.saved_tensors
        # λ ≤ 0: the gradient is flipped and scaled, so the input ascends the loss.
        return grad * lambda_, None


def gradient_reversal(x: torch.Tensor, lambda_) -> torch.Tensor:
    """Identity forward; backward multiplies the gradient by ``lambda_`` (a float or 0-d tensor)."""
    return _GradientReversal.apply(x, lambda_)


def cosine_lambda(epoch: int, epochs: int = 10, lambda_min: float = -1.0,
                  lambda_max: float = 0.0) -> float:
    """λ(e) = λ_min + (λ_max − λ_min)·(cos(π·min(e, L)/L) + 1)/2, epoch counted from 1."""
    progress = min(epoch, epochs) / epochs
    return lambda_min + (lambda_max - lambda_min) * (math.cos(math.pi * progress) + 1.0) / 2.0


class GlobalTemperature(nn.Module):
    """T = T_min + T_range · sigmoid(GRL(θ, λ)), one scalar θ shared by all samples."""

    def __init__(self, init: float = 1.0, t_min: float = 1.0, t_range: float = 20.0):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(float(init)))
        self.t_min = t_min
        self.t_range = t_range

    def forward(self, lambda_) -> torch.Tensor:
        return self.t_min + self.t_range * torch.sigmoid(gradient_reversal(self.theta, lambda_))
