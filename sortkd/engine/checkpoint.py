"""Atomic per-epoch checkpoints for exact resume."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..io_atomic import atomic_path


def save_checkpoint(path: Path, payload: dict) -> None:
    # torch.save into a temp file in the same folder, then rename: a kill leaves the old or the new file.
    with atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> dict | None:
    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def remove_checkpoint(path: Path) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
