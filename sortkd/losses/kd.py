"""Hinton-style knowledge distillation: T² · batch-mean KL(p_T(teacher) ‖ p_T(student))."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature) -> torch.Tensor:
    """Unweighted KD term. ``temperature`` may be a float or a 0-d tensor carrying a graph (CTKD)."""
    log_p_student = F.log_softmax(student / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=1)
    # Sum over classes, mean over samples; written out so T may carry gradients.
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1).mean()
    return kl * temperature**2
