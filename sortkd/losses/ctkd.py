"""Curriculum Temperature KD: a learnable global temperature trained adversarially.

The temperature parameter ascends the distillation loss through a gradient-reversal layer
whose strength λ follows a cosine schedule over epochs. Two methods use it: ``ctkd`` (KD with
the learned temperature) and ``dkd_ctkd`` (DKD with it, no warm-up).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sortkd.losses.dkd import dkd_loss
from sortkd.losses.kd import kd_loss
from sortkd.losses.registry import Method, register


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lambda_):
        # A Python λ stays a Python number: making a device tensor of it every step would be a
        # blocking host-to-device copy on CUDA (one host sync per CTKD step).
        ctx.lambda_ = lambda_ if isinstance(lambda_, torch.Tensor) else float(lambda_)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        # λ ≤ 0: the gradient is flipped and scaled, so the input ascends the loss.
        return grad * ctx.lambda_, None


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


class _CurriculumTemperature(Method):
    """The learned temperature shared by ``ctkd`` and ``dkd_ctkd``: state, λ schedule, diagnostics."""

    temperature_defaults = {"init": 1.0, "t_min": 1.0, "t_range": 20.0,
                            "lambda_min": -1.0, "lambda_max": 0.0, "lambda_epochs": 10}

    def make_state(self, hp):
        return GlobalTemperature(hp["init"], hp["t_min"], hp["t_range"])

    def schedule(self, epoch, hp):
        return {"lambda": cosine_lambda(epoch, int(hp["lambda_epochs"]), hp["lambda_min"], hp["lambda_max"])}

    @staticmethod
    def temperature(state, schedule) -> torch.Tensor:
        if state is None:
            raise ValueError("CTKD needs its GlobalTemperature state (Method.make_state)")
        return state(schedule["lambda"])

    @staticmethod
    def diagnostics(temperature, schedule) -> dict[str, torch.Tensor]:
        return {"ctkd_temperature": temperature.detach(), "ctkd_lambda": torch.as_tensor(schedule["lambda"])}


@register
class CTKD(_CurriculumTemperature):
    name = "ctkd"
    label = "CTKD"
    description = "KD with a curriculum (global, learnable) temperature"
    defaults = {"ce_weight": 0.1, "kd_weight": 0.9, **_CurriculumTemperature.temperature_defaults}

    def terms(self, student, teacher, target, hp, schedule, state):
        temperature = self.temperature(state, schedule)
        terms = {
            "ce": hp["ce_weight"] * F.cross_entropy(student, target),
            "kd": hp["kd_weight"] * kd_loss(student, teacher, temperature),
        }
        return terms, self.diagnostics(temperature, schedule)


@register
class DKDCTKD(_CurriculumTemperature):
    name = "dkd_ctkd"
    label = "DKD+CTKD"
    description = "DKD with the curriculum temperature"
    defaults = {"ce_weight": 1.0, "alpha": 1.0, "beta": 2.0, **_CurriculumTemperature.temperature_defaults}

    def terms(self, student, teacher, target, hp, schedule, state):
        temperature = self.temperature(state, schedule)
        kd = dkd_loss(student, teacher, target, hp["alpha"], hp["beta"], temperature)
        return {"ce": hp["ce_weight"] * F.cross_entropy(student, target), "dkd": kd}, \
            self.diagnostics(temperature, schedule)
