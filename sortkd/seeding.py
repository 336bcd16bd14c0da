"""Random streams derived from (seed, purpose, epoch) counters.

No stream depends on what ran before it, so a base run and a sort run with the
same seed see the same initial weights, batch order and augmentation draws, and
a resumed run sees the same draws as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import hashlib

import torch

PURPOSES = ("init", "shuffle", "views", "global", "strong")


def derive_seed(seed: int, purpose: str, epoch: int = 0) -> int:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown random-stream purpose {purpose!r}; allowed: {', '.join(PURPOSES)}")
    digest = hashlib.sha256(f"sortkd/{int(seed)}/{purpose}/{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, purpose: str, epoch: int = 0) -> torch.Generator:
    """A CPU generator: draws are identical on every machine and device."""
    return torch.Generator(device="cpu").manual_seed(derive_seed(seed, purpose, epoch))


@contextlib.contextmanager
def seeded_global_rng(seed: int, purpose: str, epoch: int = 0):
    """Run code that draws from torch's global RNG (e.g. layer init) from a derived seed,
    leaving the caller's global RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, purpose, epoch))
        yield


def epoch_order(seed: int, epoch: int, num_samples: int) -> torch.Tensor:
    """The shuffled sample order of one epoch."""
    return torch.randperm(num_samples, generator=generator(seed, "shuffle", epoch))


def epoch_views(seed: int, epoch: int, num_samples: int, num_views: int) -> torch.Tensor:
    """One augmentation view id per sample (indexed by sample id) for one epoch."""
    return torch.randint(0, num_views, (num_samples,), generator=generator(seed, "views", epoch))
