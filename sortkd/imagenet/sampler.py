"""Which samples each rank reads at each step.

One epoch order for the whole job (``seeding.epoch_order(seed, epoch, n)``, the same stream as
on CIFAR). Step k's global batch is positions [k·G, (k+1)·G) of that order; rank r takes the
r-th contiguous slice of b = G / W of it. So the union of the ranks' batches at every step is
exactly the batch a 1-process run reads, whatever the world size W. The last incomplete
global batch is dropped (at most G−1 of 1.28 M images per epoch, different ones every epoch):
every rank then has the same batch size, which keeps DDP's gradient average equal to the
gradient of the global batch mean.
"""
from __future__ import annotations

from ..seeding import epoch_order


def per_rank_batch(global_batch: int, world_size: int) -> int:
    if global_batch % world_size:
        raise ValueError(f"the global batch size {global_batch} is not divisible by the number of "
                         f"processes {world_size}; choose a process count that divides it")
    return global_batch // world_size


class RankBatchSampler:
    """Yields this rank's batches of (epoch, sample index) keys; call ``set_epoch`` first."""

    def __init__(self, num_samples: int, global_batch: int, rank: int, world_size: int, seed: int,
                 max_steps: int | None = None):
        if num_samples < global_batch:
            raise ValueError(f"{num_samples} training images are fewer than one global batch "
                             f"of {global_batch}")
        self.num_samples, self.global_batch, self.seed = num_samples, global_batch, seed
        self.rank, self.local_batch = rank, per_rank_batch(global_batch, world_size)
        steps = num_samples // global_batch
        self.steps = steps if max_steps is None else min(steps, max_steps)
        self.epoch = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        if self.epoch is None:
            raise RuntimeError("RankBatchSampler.set_epoch must be called before iterating")
        epoch = self.epoch
        order = epoch_order(self.seed, epoch, self.num_samples)
        for step in range(self.steps):
            first = step * self.global_batch + self.rank * self.local_batch
            yield [(epoch, int(i)) for i in order[first:first + self.local_batch]]


class ValShardSampler:
    """Rank r evaluates samples r, r+W, r+2W, ...: every sample exactly once, no padding."""

    def __init__(self, num_samples: int, batch_size: int, rank: int, world_size: int):
        self.indices = list(range(rank, num_samples, world_size))
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self):
        for first in range(0, len(self.indices), self.batch_size):
            yield self.indices[first:first + self.batch_size]
