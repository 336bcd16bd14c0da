"""Hinton-style knowledge distillation, and the cross-entropy-only training of the teachers."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sortkd.losses.registry import Method, register


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature) -> torch.Tensor:
    """T² · batch-mean KL(p_T(teacher) ‖ p_T(student)), unweighted.

    ``temperature`` may be a float or a 0-d tensor carrying a graph (CTKD).
    """
    log_p_student = F.log_softmax(student / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=1)
    # Sum over classes, mean over samples; written out so T may carry gradients.
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1).mean()
    return kl * temperature**2


@register
class Vanilla(Method):
    name = "vanilla"
    label = "CE"
    description = "cross-entropy only (teachers)"
    defaults = {}
    needs_teacher = False

    def terms(self, student, teacher, target, hp, schedule, state):
        return {"ce": F.cross_entropy(student, target)}, {}


@register
class KD(Method):
    name = "kd"
    label = "KD"
    description = "Hinton KD"
    defaults = {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9}

    def terms(self, student, teacher, target, hp, schedule, state):
        return {
            "ce": hp["ce_weight"] * F.cross_entropy(student, target),
            "kd": hp["kd_weight"] * kd_loss(student, teacher, hp["temperature"]),
        }, {}
