"""Device selection with no silent fallback."""
from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                "device 'cuda' was requested but torch sees no CUDA GPU "
                f"(torch {torch.__version__}, CUDA_VISIBLE_DEVICES="
                f"{__import__('os').environ.get('CUDA_VISIBLE_DEVICES')!r}). "
                "Set compute.device: cpu in the config to run on the CPU, or fix the GPU set-up.")
        return torch.device("cuda", 0)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {name!r}; allowed: cpu, cuda")
