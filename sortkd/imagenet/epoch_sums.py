"""Cross-rank totals of an epoch's metrics.

The engine's ``EpochMeter`` keeps sums (loss × samples, correct counts, samples) on the
device. Summing those across ranks before dividing gives exactly the metrics of a 1-process
run over the same global batches, up to the order of float additions.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..engine.metrics import EpochMeter
from .distributed import Ranks, all_reduce_sum

_NO_BAD_STEP = torch.iinfo(torch.int64).max


def reduce_meter(meter: EpochMeter, ranks: Ranks) -> tuple[dict[str, float], int]:
    """The epoch's metrics over all ranks, and the first non-finite step of any rank (-1: none)."""
    if ranks.distributed:
        keys = list(meter.sums)  # same insertion order on every rank: same code path
        totals = all_reduce_sum(torch.stack([meter.sums[k] for k in keys] + [meter.samples]), ranks)
        for i, key in enumerate(keys):
            meter.sums[key] = totals[i]
        meter.samples = totals[-1]
        bad = torch.where(meter.first_bad_step < 0, torch.full_like(meter.first_bad_step, _NO_BAD_STEP),
                          meter.first_bad_step)
        dist.all_reduce(bad, op=dist.ReduceOp.MIN)
        meter.first_bad_step = torch.where(bad == _NO_BAD_STEP, torch.full_like(bad, -1), bad)
    return meter.read()


class DataOrderChecksum:
    """Σ (sample index + 1) · (step + 1) over the epoch, summed across ranks.

    Equal between runs exactly when every step's global batch holds the same samples (as a
    checksum): the proof, recorded in metrics.jsonl, that N processes read what 1 process reads.
    """

    def __init__(self, device: torch.device):
        self.total = torch.zeros((), dtype=torch.int64, device=device)

    def update(self, step: int, indices: torch.Tensor) -> None:
        self.total += ((indices.to(torch.int64) + 1) * (step + 1)).sum()

    def read(self, ranks: Ranks) -> int:
        return int(all_reduce_sum(self.total.clone(), ranks).item())
