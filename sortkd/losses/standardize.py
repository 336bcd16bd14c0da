"""Logit standardization (LSKD): per-row z-score with the unbiased std."""
from __future__ import annotations

import torch

EPS = 1e-7


def standardize(logits: torch.Tensor) -> torch.Tensor:
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True, unbiased=True)
    # The epsilon sits outside the std, as in the method's definition.
    return (logits - mean) / (EPS + std)
