"""Step learning-rate schedule of the CIFAR recipe."""
from __future__ import annotations


def step_lr(epoch: int, base_lr: float, milestones=(150, 180, 210), gamma: float = 0.1) -> float:
    """LR of ``epoch`` (1-based): multiplied by ``gamma`` after each milestone epoch.

    With milestones 150/180/210: epochs 1–150 at LR, 151–180 at 0.1·LR, and so on.
    """
    return base_lr * gamma ** sum(epoch > m for m in milestones)
