"""Top-1 / top-5 on the validation set, sharded over the ranks and summed across them."""
from __future__ import annotations

import contextlib

import torch

from .distributed import Ranks, all_reduce_sum
from .images import normalize_batch


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches, ranks: Ranks, autocast=contextlib.nullcontext,
             memory_format=torch.contiguous_format) -> dict[str, float]:
    """Percent top-1/top-5 of ``model`` (eval mode) over every rank's shard of the val set."""
    model.eval()
    hits = torch.zeros(2, dtype=torch.int64, device=ranks.device)  # top-1, top-5
    samples = 0
    for images, labels, _ in batches:
        with autocast():
            logits = model(normalize_batch(images, memory_format))
        k = min(5, logits.shape[1])
        hit = logits.float().topk(k, dim=1).indices == labels[:, None]
        hits += torch.stack([hit[:, 0].sum(), hit.any(dim=1).sum()])
        samples += labels.shape[0]
    counts = torch.cat([hits, torch.tensor([samples], device=ranks.device)])
    c1, c5, n = all_reduce_sum(counts, ranks).tolist()
    if n == 0:
        raise RuntimeError("the validation set is empty")
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n}
