"""Logit standardization (LSKD): KD and DKD on per-row z-scored logits."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sortkd.losses.dkd import dkd_loss, warmup_factor
from sortkd.losses.kd import kd_loss
from sortkd.losses.registry import Method, register

EPS = 1e-7


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """(z − mean(z)) / (1e-7 + std(z)) per row, with the unbiased std."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True, unbiased=True)
    # The epsilon sits outside the std, as in the method's definition.
    return (logits - mean) / (EPS + std)


@register
class LSKD(Method):
    name = "lskd"
    label = "KD+LS"
    description = "KD on standardized logits"
    defaults = {"temperature": 2.0, "ce_weight": 0.1, "kd_weight": 9.0}

    def terms(self, student, teacher, target, hp, schedule, state):
        kd = kd_loss(standardize(student), standardize(teacher), hp["temperature"])
        return {"ce": hp["ce_weight"] * F.cross_entropy(student, target), "kd": hp["kd_weight"] * kd}, {}


@register
class DKDLS(Method):
    name = "dkd_ls"
    label = "DKD+LS"
    description = "DKD on standardized logits (α, β scaled by weight)"
    defaults = {"temperature": 2.0, "weight": 9.0, "ce_weight": 1.0, "alpha": 1.0, "beta": 8.0,
                "warmup": 20}

    def schedule(self, epoch, hp):
        return {"warmup": warmup_factor(epoch, hp["warmup"])}

    def terms(self, student, teacher, target, hp, schedule, state):
        w = hp["weight"]
        kd = dkd_loss(standardize(student), standardize(teacher), target,
                      hp["alpha"] * w, hp["beta"] * w, hp["temperature"])
        return {"ce": hp["ce_weight"] * F.cross_entropy(student, target), "dkd": schedule["warmup"] * kd}, {}
