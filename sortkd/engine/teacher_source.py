"""Where a student's teacher logits come from: the online teacher or the logit cache."""
from __future__ import annotations

from pathlib import Path

import torch

from ..logit_cache import TeacherLogitCache
from ..teacher_store import load_teacher, read_teacher_info


class OnlineTeacher:
    """Runs the teacher (eval mode, no gradients) on the student's own batch."""

    def __init__(self, teacher_dir: Path, arch: str, device: torch.device, autocast, channels_last: bool):
        self.model, self.info = load_teacher(teacher_dir, arch, device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.autocast = autocast

    @torch.no_grad()
    def logits(self, index: torch.Tensor, views: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.model(images).float()


class CachedTeacher:
    """Gathers each batch's logits by (sample index, view id); never builds the teacher."""

    def __init__(self, teacher_dir: Path, cache_dir: Path, data_sha256: str, num_train: int,
                 num_classes: int, device: torch.device):
        self.info = read_teacher_info(teacher_dir)
        self.cache = TeacherLogitCache(cache_dir, self.info["checkpoint_sha256"], data_sha256,
                                       num_train, num_classes, device)

    def logits(self, index: torch.Tensor, views: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return self.cache.train_logits(index, views)
