"""Step learning-rate schedule of the CIFAR recipe."""
from __future__ import annotations


def begin_epoch(optimizer, spec, epoch: int, method, hparams) -> tuple[float, dict]:
    """Set the epoch's LR, seed torch's global RNG from (seed, "global", epoch) so that any
    stray use of it is reproducible and resume-safe, and return (lr, the method's schedule)."""
    import torch

    from ..seeding import derive_seed

    lr = step_lr(epoch, spec.lr, spec.lr_milestones, spec.lr_gamma)
    for group in optimizer.param_groups:
        group["lr"] = lr
    torch.manual_seed(derive_seed(spec.seed, "global", epoch))
    return lr, method.schedule(epoch, hparams)


def step_lr(epoch: int, base_lr: float, milestones=(150, 180, 210), gamma: float = 0.1) -> float:
    """LR of ``epoch`` (1-based): multiplied by ``gamma`` after each milestone epoch.

    With milestones 150/180/210: epochs 1–150 at LR, 151–180 at 0.1·LR, and so on.
    """
    return base_lr * gamma ** sum(epoch > m for m in milestones)
