"""The reference-style loop: how the public KD code trains a CIFAR-100 student.

A CIFAR100-like Dataset over the uint8 arrays returns PIL images, transformed by
``RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize`` in a
``DataLoader(shuffle=True)`` with worker processes; fp32; a teacher forward every step (eval
mode, no_grad); ``sort_logits`` and the KD loss (the project's own functions); an SGD step; and
the loss meter's ``.item()`` every step. Timed with the same :class:`StepClock` as the
project's paths.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from sortkd.speed.timing import LR, METHOD, StepClock, StopBenchmark
from sortkd.speed.workload import SEED, Prepared, Sizes, make_sync


class ReferenceCifar(torch.utils.data.Dataset):
    """What torchvision's CIFAR100 does: HWC uint8 arrays, a PIL image per sample, a transform."""

    def __init__(self, images_nchw: np.ndarray, labels: np.ndarray, transform):
        self.data = np.ascontiguousarray(images_nchw.transpose(0, 2, 3, 1))
        self.targets = [int(y) for y in labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def time_reference(prep: Prepared, teacher_arch: str, student_arch: str, sizes: Sizes,
                   device: torch.device, workers: int = 2) -> dict:
    import torch.nn.functional as F
    from torchvision import transforms

    from sortkd.data.cifar import load_arrays
    from sortkd.data.views import CIFAR100_MEAN, CIFAR100_STD
    from sortkd.losses import kd_loss, resolve_hparams
    from sortkd.models import build
    from sortkd.seeding import seeded_global_rng
    from sortkd.sorting import sort_logits
    from sortkd.teachers import load_teacher

    arrays = load_arrays(Path(prep.data))
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD),
    ])
    dataset = ReferenceCifar(arrays.train_x, arrays.train_y, transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=sizes.batch_size, shuffle=True,
                                         num_workers=workers)
    teacher, _ = load_teacher(Path(prep.teacher_dir), teacher_arch, device)
    teacher.eval()
    with seeded_global_rng(SEED, "init"):
        student = build(student_arch, prep.num_classes)
    student = student.to(device)
    hp = resolve_hparams(METHOD, {})
    optimizer = torch.optim.SGD(student.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    clock = StepClock(len(loader), sizes.warmup, sizes.steps, make_sync(device))
    epoch_s = None
    try:
        for _epoch in range(sizes.epochs):
            student.train()
            t_epoch = time.perf_counter()
            for images, target in loader:
                images = images.to(device, non_blocking=True)
                target = target.to(device, non_blocking=True)
                with torch.no_grad():
                    teacher_logits = teacher(images)
                logits = student(images)
                teacher_logits = sort_logits(teacher_logits, target)
                loss = (hp["ce_weight"] * F.cross_entropy(logits, target)
                        + hp["kd_weight"] * kd_loss(logits, teacher_logits, hp["temperature"]))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss.item()  # the per-step host read of the reference's loss meter
                clock.tick()
            epoch_s = time.perf_counter() - t_epoch
    except StopBenchmark:
        pass
    return {"ms_per_step": clock.ms_per_step, "timed_steps": clock.timed, "epoch_s": epoch_s,
            "what": f"DataLoader({workers} workers) + PIL transforms, fp32, online teacher, "
                    ".item() every step"}
