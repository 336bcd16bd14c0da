"""Where a result came from: config, code revision, libraries, device, time."""
from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import subprocess
from pathlib import Path

import torch


def git_revision(path: Path | None = None) -> str:
    """HEAD of the checkout holding the package (``+dirty`` if it has changes), or 'unknown'."""
    path = path or Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def collect(spec_dict: dict, spec_hash: str, seed: int, device: torch.device,
            start: str, wall_s: float) -> dict:
    from .. import __version__

    return {
        "config": spec_dict,
        "config_hash": spec_hash,
        "git_revision": git_revision(),
        "seed": seed,
        "versions": {
            "sortkd": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        },
        "device": device_name(device),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpu_slot": os.environ.get("SORTKD_GPU_SLOT"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "start": start,
        "end": now_iso(),
        "wall_s": round(wall_s, 3),
    }
