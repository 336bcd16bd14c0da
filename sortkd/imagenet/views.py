"""Where each image is cropped and whether it is flipped: the geometry of the ImageNet views.

Train: RandomResizedCrop (area 8–100 %, aspect ratio 3/4–4/3, 10 tries, then a centre crop
clamped to the ratio range) + horizontal flip with probability 1/2. Val: resize the shorter
side to ``resize_size`` (256 for 224 crops), then a centre crop.

Every draw comes from a generator seeded by (seed, "views", epoch, sample index), never from a
global RNG. So a sample's view is the same whichever process, worker or rank decodes it: base
and sort runs of a seed see the same crops, and a 1-process run sees the same crops as an
N-process run.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from ..seeding import derive_seed

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
ATTEMPTS = 10


@dataclass(frozen=True)
class CropBox:
    top: int
    left: int
    height: int
    width: int


def default_resize_size(image_size: int) -> int:
    """The 256/224 rule of the standard ImageNet evaluation."""
    return int(round(image_size * 256 / 224))


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    epoch_seed = derive_seed(seed, "views", epoch)
    digest = hashlib.sha256(f"{epoch_seed}/{int(index)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def random_resized_crop(height: int, width: int, generator: torch.Generator) -> CropBox:
    area = height * width
    log_lo, log_hi = math.log(RATIO[0]), math.log(RATIO[1])
    for s, r, a, b in torch.rand(ATTEMPTS, 4, generator=generator, dtype=torch.float64).tolist():
        target_area = area * (SCALE[0] + s * (SCALE[1] - SCALE[0]))
        aspect = math.exp(log_lo + r * (log_hi - log_lo))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return CropBox(int(a * (height - h + 1)), int(b * (width - w + 1)), h, w)
    # No try fitted: the largest centred crop whose aspect ratio is inside the range.
    in_ratio = width / height
    if in_ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif in_ratio > RATIO[1]:
        w, h = int(round(height * RATIO[1])), height
    else:
        w, h = width, height
    return CropBox((height - h) // 2, (width - w) // 2, h, w)


def train_view(height: int, width: int, seed: int, epoch: int, index: int) -> tuple[CropBox, bool]:
    """The crop box and the flip of sample ``index`` in ``epoch``."""
    generator = sample_generator(seed, epoch, index)
    flip = bool(torch.rand((), generator=generator) < 0.5)
    return random_resized_crop(height, width, generator), flip


def resized_shape(height: int, width: int, shorter: int) -> tuple[int, int]:
    """Size after resizing the shorter side to ``shorter`` (torchvision's Resize(int) rule)."""
    if height <= width:
        return shorter, int(shorter * width / height)
    return int(shorter * height / width), shorter


def center_offsets(height: int, width: int, size: int) -> tuple[int, int]:
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
