"""Decoded ImageNet samples (PIL on the CPU, in DataLoader workers) as uint8 tensors.

Samples leave the workers as uint8 CHW tensors: a quarter of the bytes of float32 to copy
and pin. Normalization to the ImageNet mean/std happens batched on the training device
(``normalize_batch``).
"""
from __future__ import annotations

import functools

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset

from .folder import ImageList
from .views import center_offsets, resized_shape, train_view

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def open_rgb(path: str) -> Image.Image:
    # ImageNet has a few grayscale and CMYK JPEGs: every image becomes 3-channel RGB.
    with Image.open(path) as image:
        return image.convert("RGB")


class TrainImages(Dataset):
    """Keys are (epoch, sample index): the view of a sample depends on both, on nothing else."""

    def __init__(self, files: ImageList, image_size: int, seed: int):
        self.files, self.image_size, self.seed = files, image_size, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        image = open_rgb(self.files.path(index))
        box, flip = train_view(image.height, image.width, self.seed, epoch, index)
        image = TF.resized_crop(image, box.top, box.left, box.height, box.width,
                                [self.image_size, self.image_size],
                                interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        if flip:
            image = TF.hflip(image)
        return TF.pil_to_tensor(image), int(self.files.labels[index]), index


class ValImages(Dataset):
    def __init__(self, files: ImageList, image_size: int, resize_size: int):
        self.files, self.image_size, self.resize_size = files, image_size, resize_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        image = open_rgb(self.files.path(index))
        height, width = resized_shape(image.height, image.width, self.resize_size)
        image = TF.resize(image, [height, width], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        top, left = center_offsets(height, width, self.image_size)
        image = TF.crop(image, top, left, self.image_size, self.image_size)
        return TF.pil_to_tensor(image), int(self.files.labels[index]), index


@functools.lru_cache(maxsize=None)
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: a fresh host-to-device copy at every step would stall the stream.
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255
    return mean, std


def normalize_batch(images: torch.Tensor, memory_format=torch.contiguous_format) -> torch.Tensor:
    """uint8 N×3×H×W (any device) → float32 normalized with the ImageNet mean/std."""
    mean, std = _mean_std(images.device)
    return ((images.float() - mean) / std).contiguous(memory_format=memory_format)
