"""Decoupled KD: w_ce · CE + min(epoch / warmup, 1) · (α · TCKD + β · NCKD)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sortkd.losses.registry import Method, register

# The target is masked out of the non-target distribution by this offset after dividing by T.
_MASK_OFFSET = 1000.0


def _binary_log_probs(logits: torch.Tensor, target_mask: torch.Tensor, temperature) -> torch.Tensor:
    """log [p_y, Σ_{c≠y} p_c] per row, from the full softmax at temperature T."""
    p = F.softmax(logits / temperature, dim=1)
    p_target = (p * target_mask).sum(dim=1, keepdim=True)
    p_other = (p * (1.0 - target_mask)).sum(dim=1, keepdim=True)
    return torch.cat([p_target, p_other], dim=1).log()


def dkd_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
             alpha: float, beta: float, temperature) -> torch.Tensor:
    """α · TCKD + β · NCKD, both scaled by T² (no CE, no warm-up)."""
    target_mask = F.one_hot(target, student.shape[1]).to(student.dtype)
    # TCKD: KL between the binary (target vs rest) distributions.
    log_b_student = _binary_log_probs(student, target_mask, temperature)
    log_b_teacher = _binary_log_probs(teacher, target_mask, temperature)
    tckd = (log_b_teacher.exp() * (log_b_teacher - log_b_student)).sum(dim=1).mean()
    # NCKD: KL among the non-target classes only.
    log_q_student = F.log_softmax(student / temperature - _MASK_OFFSET * target_mask, dim=1)
    log_q_teacher = F.log_softmax(teacher / temperature - _MASK_OFFSET * target_mask, dim=1)
    nckd = (log_q_teacher.exp() * (log_q_teacher - log_q_student)).sum(dim=1).mean()
    scale = temperature**2
    return alpha * scale * tckd + beta * scale * nckd


def warmup_factor(epoch: int, warmup) -> float:
    """min(epoch / warmup, 1), epoch counted from 1; no warm-up when ``warmup`` is 0."""
    return min(epoch / warmup, 1.0) if warmup > 0 else 1.0


@register
class DKD(Method):
    name = "dkd"
    label = "DKD"
    description = "Decoupled KD"
    defaults = {"temperature": 4.0, "ce_weight": 1.0, "alpha": 1.0, "beta": 8.0, "warmup": 20}

    def schedule(self, epoch, hp):
        return {"warmup": warmup_factor(epoch, hp["warmup"])}

    def terms(self, student, teacher, target, hp, schedule, state):
        # Operation order kept from the first implementation: it fixes autograd's summation order.
        kd = dkd_loss(student, teacher, target, hp["alpha"], hp["beta"], hp["temperature"])
        return {"ce": hp["ce_weight"] * F.cross_entropy(student, target), "dkd": schedule["warmup"] * kd}, {}
