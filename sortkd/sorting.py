"""The SortKD teacher-logit transform and its "swap" ablation.

Both rewrite a batch of teacher logits so that the true class holds the row's
largest value. They only permute values within a row, so every permutation-
invariant statistic of the row (mean, std, logsumexp, entropy at any
temperature) is unchanged: the transforms have no parameters to tune.
"""
from __future__ import annotations

import torch


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D (batch, classes), got shape {tuple(logits.shape)}")
    if target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"target must be 1-D with one label per row: logits {tuple(logits.shape)}, "
            f"target {tuple(target.shape)}"
        )


@torch.no_grad()
def sort_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Give the target class the row maximum; shift the classes ranked above it down one place.

    For one row with values sorted descending ``v1 >= v2 >= ... >= vC`` and the
    target at 1-based rank ``r``: the target receives ``v1``, the class at rank
    ``k < r`` receives ``v(k+1)``, and classes ranked below the target keep their
    values. Rows where the teacher is already right come back bit-identical.

    Exact in every dtype (the order is computed by index arithmetic, never by
    adding a large constant) and free of host syncs and data-dependent shapes.
    """
    _check(logits, target)
    z = logits.detach()
    num_classes = z.shape[1]
    values, order = z.sort(dim=1, descending=True, stable=True)
    target = target.to(device=z.device, dtype=torch.long).unsqueeze(1)
    # Position of the target in the descending order (0 = teacher is right).
    pos = (order == target).to(torch.int64).argmax(dim=1, keepdim=True)
    k = torch.arange(num_classes, device=z.device).unsqueeze(0)
    # New order: target first, then the classes that were above it, then the rest unchanged.
    src = torch.where(k <= pos, k - 1, k).clamp_min(0)
    new_order = order.gather(1, src)
    new_order[:, :1] = target
    return torch.empty_like(z).scatter_(1, new_order, values)


@torch.no_grad()
def swap_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Ablation: exchange the values of the target and the teacher's argmax; nothing else moves."""
    _check(logits, target)
    z = logits.detach()
    target = target.to(device=z.device, dtype=torch.long).unsqueeze(1)
    top = z.argmax(dim=1, keepdim=True)
    out = z.clone()
    target_value = z.gather(1, target)
    top_value = z.gather(1, top)
    out.scatter_(1, top, target_value)
    out.scatter_(1, target, top_value)
    return out


def apply_variant(logits: torch.Tensor, target: torch.Tensor, variant: str) -> torch.Tensor:
    """The one place where a run's variant touches the teacher logits."""
    if variant == "base":
        return logits.detach()
    if variant == "sort":
        return sort_logits(logits, target)
    if variant == "swap":
        return swap_logits(logits, target)
    # Imported here: the spec module pulls in the model zoo, which a user of the sort never needs.
    from sortkd.experiment.specs import VARIANTS

    raise ValueError(f"unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}")
