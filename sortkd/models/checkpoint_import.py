"""Load teacher checkpoints released with mdistiller / RepDistiller into our models.

Their files (``<arch>_vanilla/ckpt_epoch_240.pth``) are dicts whose ``"model"`` entry is
the state_dict; a bare state_dict is accepted too.
"""
import pickle
from pathlib import Path

import torch
from torch import nn

from sortkd.models.zoo import build


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's parameter names or shapes do not fit the requested arch."""


def _read_state_dict(path: Path) -> dict:
    try:
        # Plain tensors and python scalars only: no code is executed while reading.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # The safe loader refuses files that pickle extra objects (e.g. an argparse
        # namespace next to the weights). Released teachers are verified by checksum
        # before they get here, so the full unpickler is acceptable for them.
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, dict) and "model" in obj:
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatchError(
            f"checkpoint {path} holds neither a dict with a 'model' state_dict nor a bare state_dict"
        )
    # Checkpoints saved from nn.DataParallel carry a "module." prefix on every key.
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _describe(keys, limit: int = 10) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_public_checkpoint(path, arch: str, num_classes: int = 100) -> nn.Module:
    """Build ``arch`` and load the checkpoint at ``path`` into it strictly; returns the model in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    model = build(arch, num_classes)
    state = _read_state_dict(path)
    expected = model.state_dict()
    # Collect every difference first, so that one message shows them all.
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if state[k].shape != expected[k].shape
    ]
    # BN step counters absent from checkpoints of torch < 0.4.1 are filled in by torch itself.
    missing = {k for k in set(expected) - set(state) if not k.endswith("num_batches_tracked")}
    unexpected = set(state) - set(expected)
    if missing or unexpected or wrong_shape:
        problems = []
        if missing:
            problems.append(f"missing keys ({len(missing)}): {_describe(missing)}")
        if unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {_describe(unexpected)}")
        if wrong_shape:
            problems.append(f"shape mismatches ({len(wrong_shape)}): {'; '.join(wrong_shape[:10])}")
        raise CheckpointMismatchError(
            f"checkpoint {path} does not fit arch {arch!r} with num_classes={num_classes}: "
            + "; ".join(problems)
            + ". Check that the arch named in the config is the one the checkpoint was trained as."
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointMismatchError(f"checkpoint {path} does not load into arch {arch!r}: {exc}") from exc
    return model.eval()
