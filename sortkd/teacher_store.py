"""A teacher folder: ``model.pt`` (mdistiller format: {"model": state_dict}) and ``teacher.json``.

``teacher.json`` records the arch, the checkpoint's sha256, where it came from and
its measured test accuracy. Students and the logit export check the checksum.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .io_atomic import atomic_path, file_sha256
from .io_json import read_json, write_json

MODEL_FILE = "model.pt"
INFO_FILE = "teacher.json"


def save_teacher_model(teacher_dir: Path, model: torch.nn.Module, epoch: int) -> str:
    """Write model.pt atomically; returns its sha256."""
    teacher_dir = Path(teacher_dir)
    teacher_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # Through a file handle torch stores a fixed archive name, not the random temp file's:
    # identical weights give an identical file and checksum.
    with atomic_path(teacher_dir / MODEL_FILE) as tmp, open(tmp, "wb") as handle:
        torch.save({"model": state, "epoch": epoch}, handle)
    return file_sha256(teacher_dir / MODEL_FILE)


def write_teacher_info(teacher_dir: Path, info: dict) -> None:
    write_json(Path(teacher_dir) / INFO_FILE, info)


def read_teacher_info(teacher_dir: Path) -> dict:
    path = Path(teacher_dir) / INFO_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"teacher info {path} is missing: train or import the teacher first "
            "(Snakemake rules teacher_train / teacher_import, or `python -m sortkd train` / "
            "`python -m sortkd import-teacher`)")
    return read_json(path)


def load_teacher(teacher_dir: Path, arch: str, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The teacher in eval mode with gradients off, after checking arch and checksum."""
    from .models.checkpoint_import import load_public_checkpoint

    info = read_teacher_info(teacher_dir)
    if info["arch"] != arch:
        raise ValueError(f"teacher in {teacher_dir} is a {info['arch']!r}, the run expects {arch!r}")
    path = Path(teacher_dir) / MODEL_FILE
    actual = file_sha256(path)
    if actual != info["checkpoint_sha256"]:
        raise ValueError(f"teacher checkpoint {path} has sha256 {actual}, but teacher.json records "
                         f"{info['checkpoint_sha256']}: the checkpoint changed after it was measured; "
                         "rerun the teacher rule")
    model = load_public_checkpoint(path, arch, num_classes=info["num_classes"]).to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, info
