"""Optional JPEG decoding on the GPU (nvjpeg through ``torchvision.io.decode_jpeg``).

With ``decode: gpu`` the DataLoader workers only read the file bytes and the JPEG header (for
the crop geometry, drawn exactly as on the CPU path); the training process decodes the whole
batch in one ``decode_jpeg(list, device="cuda")`` call and crops, resizes and flips each
image on the GPU. This frees the CPU cores that PIL decoding needs, which is what limits
ImageNet throughput on a node with few cores per GPU.

The pixel results differ slightly from the PIL path (a different resampler); the crop boxes
and flips are the same. Images nvjpeg cannot decode (CMYK JPEGs, the one PNG in the ImageNet
train set) fall back to the CPU decoder, one by one.

The same functions run with ``device="cpu"``, which is how the tests check them.
"""
from __future__ import annotations

import inspect
import io

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from .folder import ImageList
from .views import center_offsets, resized_shape, train_view


def gpu_decode_available() -> tuple[bool, str]:
    """Whether decode_jpeg can decode on a CUDA device here, and why not if it cannot."""
    if "device" not in inspect.signature(decode_jpeg).parameters:
        return False, "the installed torchvision's decode_jpeg has no device argument"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU is present (torch.cuda.is_available() is False)"
    return True, ""


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


class EncodedTrainImages(Dataset):
    """(epoch, index) → (file bytes, [top, left, height, width, flip], label, index)."""

    def __init__(self, files: ImageList, seed: int):
        self.files, self.seed = files, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        data = _read_bytes(self.files.path(index))
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
        box, flip = train_view(height, width, self.seed, epoch, index)
        geometry = torch.tensor([box.top, box.left, box.height, box.width, int(flip)])
        return _as_tensor(data), geometry, int(self.files.labels[index]), index


class EncodedValImages(Dataset):
    def __init__(self, files: ImageList):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        return _as_tensor(_read_bytes(self.files.path(index))), torch.zeros(5, dtype=torch.int64), \
            int(self.files.labels[index]), index


def collate_encoded(samples):
    data, geometry, labels, indices = zip(*samples)
    return list(data), torch.stack(geometry), torch.tensor(labels), torch.tensor(indices)


def decode_rgb(encoded: list[torch.Tensor], device: torch.device | str) -> list[torch.Tensor]:
    """Decode a batch of files to uint8 3×H×W on ``device``; odd files fall back to the CPU."""
    try:
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        images = []
        for data in encoded:
            try:
                images.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                images.append(decode_image(data, mode=ImageReadMode.RGB).to(device))
        return images


def train_batch_on_device(encoded: list[torch.Tensor], geometry: torch.Tensor, image_size: int,
                          device: torch.device | str) -> torch.Tensor:
    """Decoded, cropped, resized and flipped training views: uint8 N×3×S×S on ``device``."""
    views = []
    for image, (top, left, height, width, flip) in zip(decode_rgb(encoded, device), geometry.tolist()):
        view = TF.resized_crop(image, top, left, height, width, [image_size, image_size],
                               interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        views.append(TF.hflip(view) if flip else view)
    return torch.stack(views)


def val_batch_on_device(encoded: list[torch.Tensor], image_size: int, resize_size: int,
                        device: torch.device | str) -> torch.Tensor:
    views = []
    for image in decode_rgb(encoded, device):
        height, width = resized_shape(image.shape[1], image.shape[2], resize_size)
        image = TF.resize(image, [height, width], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        top, left = center_offsets(height, width, image_size)
        views.append(TF.crop(image, top, left, image_size, image_size))
    return torch.stack(views)
