"""Atomic per-epoch checkpoints for exact resume."""
from __future__ import annotations

from pathlib import Path

import torch

from ..io_atomic import atomic_path


def save_checkpoint(path: Path, payload: dict) -> None:
    # torch.save into a temp file in the same folder, then rename: a kill leaves the old or the new file.
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)


def load_checkpoint(path: Path) -> dict | None:
    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def load_matching_checkpoint(path: Path, spec_hash: str, note=print) -> dict | None:
    """The run's checkpoint, or None if there is none or it belongs to other settings."""
    ckpt = load_checkpoint(path)
    if ckpt is not None and ckpt.get("spec_hash") != spec_hash:
        note("checkpoint belongs to a different configuration: starting over")
        return None
    if ckpt is not None:
        note(f"resuming after epoch {ckpt['epoch']} from {path}")
    return ckpt


def restore_training_state(ckpt: dict, model, optimizer, method_state) -> None:
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if method_state is not None:
        method_state.load_state_dict(ckpt["method_state"])
