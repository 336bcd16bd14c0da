"""Per-epoch metrics accumulated on the device and read once per epoch (no host sync per step)."""
from __future__ import annotations

import contextlib

import torch


class EpochMeter:
    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.zero = torch.zeros((), device=device, dtype=torch.float64)
        self.samples = torch.zeros((), device=device, dtype=torch.float64)
        self.steps = 0
        # First step whose loss was not finite, or -1; kept on the device.
        self.first_bad_step = torch.full((), -1, device=device, dtype=torch.int64)

    def _add(self, key: str, value: torch.Tensor) -> None:
        value = value.detach().to(torch.float64)
        self.sums[key] = self.sums.get(key, self.zero) + value

    def update(self, step: int, terms: dict[str, torch.Tensor], total: torch.Tensor,
               diagnostics: dict[str, torch.Tensor], student: torch.Tensor,
               teacher: torch.Tensor | None, target: torch.Tensor) -> None:
        n = target.shape[0]
        self.samples = self.samples + n
        self.steps += 1
        for key, value in terms.items():
            self._add(f"loss_{key}", value * n)
        self._add("loss_total", total * n)
        for key, value in diagnostics.items():
            self._add(key, value.to(self.device) * n)
        self._add("train_correct", (student.argmax(1) == target).sum())
        if teacher is not None:
            self._add("teacher_wrong", (teacher.argmax(1) != target).sum())
        bad = ~torch.isfinite(total.detach())
        self.first_bad_step = torch.where(bad & (self.first_bad_step < 0),
                                          torch.full_like(self.first_bad_step, step),
                                          self.first_bad_step)

    def read(self) -> tuple[dict[str, float], int]:
        """Host values of the epoch (the one sync) and the first non-finite step (-1 if none)."""
        keys = list(self.sums)
        stacked = torch.stack([self.sums[k] for k in keys] + [self.samples]).cpu().tolist()
        n = stacked[-1]
        out = {}
        for key, value in zip(keys, stacked[:-1]):
            if key == "train_correct":
                out["train_top1"] = 100.0 * value / n
            elif key == "teacher_wrong":
                out["teacher_wrong_frac"] = value / n
            else:
                out[key] = value / n
        return out, int(self.first_bad_step.item())


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
             num_classes: int, batch_size: int = 1000, autocast=contextlib.nullcontext) -> dict[str, float]:
    """Top-1 / top-5 (percent) of ``model`` on already-normalized images, in eval mode."""
    model.eval()
    correct1 = torch.zeros((), device=labels.device, dtype=torch.int64)
    correct5 = torch.zeros((), device=labels.device, dtype=torch.int64)
    k = min(5, num_classes)
    for start in range(0, labels.shape[0], batch_size):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        with autocast():
            logits = model(x)
        hit = logits.float().topk(k, dim=1).indices == y[:, None]
        correct1 += hit[:, 0].sum()
        correct5 += hit.any(dim=1).sum()
    c1, c5 = torch.stack([correct1, correct5]).cpu().tolist()
    n = labels.shape[0]
    return {"test_top1": 100.0 * c1 / n, "test_top5": 100.0 * c5 / n}
