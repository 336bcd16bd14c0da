"""One progress line per epoch with an ETA; plain lines when stdout is not a terminal."""
from __future__ import annotations

import datetime as dt
import sys


def format_eta(seconds: float) -> str:
    return str(dt.timedelta(seconds=int(max(seconds, 0))))


class EpochProgress:
    def __init__(self, name: str, epochs: int, stream=None):
        self.name = name
        self.epochs = epochs
        self.stream = stream or sys.stdout
        self.durations: list[float] = []

    def epoch_done(self, epoch: int, seconds: float, row: dict) -> None:
        self.durations.append(seconds)
        recent = self.durations[-5:]
        eta = sum(recent) / len(recent) * (self.epochs - epoch)
        parts = [f"[{self.name}] epoch {epoch}/{self.epochs}", f"lr {row['lr']:.4g}",
                 f"loss {row['loss_total']:.4f}", f"train {row['train_top1']:.2f}%",
                 f"test {row['test_top1']:.2f}%"]
        if "teacher_wrong_frac" in row:
            parts.append(f"teacher wrong {100 * row['teacher_wrong_frac']:.1f}%")
        if "ctkd_temperature" in row:
            parts.append(f"T {row['ctkd_temperature']:.3f}")
        parts.append(f"{seconds:.1f} s/epoch, ETA {format_eta(eta)}")
        print(", ".join(parts), file=self.stream, flush=True)

    def note(self, text: str) -> None:
        print(f"[{self.name}] {text}", file=self.stream, flush=True)
