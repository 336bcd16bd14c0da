"""Decoded ImageNet samples (PIL on the CPU, in DataLoader workers) as uint8 tensors.

Samples leave the workers as uint8 CHW tensors: a quarter of the bytes of float32 to copy
and pin. Normalization to the ImageNet mean/std happens batched on the training device
(``normalize_batch``).
"""
from __future__ import annotations

import functools
import inspect
import io
import os

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from sortkd.data.imagenet import (ImageList, ImageNetFolder, RankBatchSampler, ValShardSampler, center_offsets,
                                  per_rank_batch, resized_shape, train_view)
from sortkd.experiment.specs import ImageNetRunSpec
from sortkd.training.distributed import Ranks


# --- images -------------------------------------------------------------------

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


# --- gpu_decode ---------------------------------------------------------------

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


# --- input_pipeline -----------------------------------------------------------

def job_threads(spec: ImageNetRunSpec) -> int:
    return spec.threads or len(os.sched_getaffinity(0))


def process_threads(spec: ImageNetRunSpec, ranks: Ranks) -> int:
    return max(job_threads(spec) // ranks.local_world_size, 1)


def loader_workers(spec: ImageNetRunSpec, ranks: Ranks) -> int:
    if spec.loader_workers is not None:
        return spec.loader_workers
    if ranks.device.type != "cuda":
        return 0
    return process_threads(spec, ranks) - 1


def compute_threads(spec: ImageNetRunSpec, ranks: Ranks) -> int:
    """torch threads of the training process itself."""
    return 1 if ranks.device.type == "cuda" else process_threads(spec, ranks)


class ImageNetInput:
    def __init__(self, folder: ImageNetFolder, spec: ImageNetRunSpec, ranks: Ranks):
        self.spec, self.device = spec, ranks.device
        self.gpu_decode = spec.decode == "gpu"
        if self.gpu_decode:
            available, why = gpu_decode_available()
            if not available:
                raise RuntimeError(f"run {spec.name}: decode 'gpu' is not possible here: {why}")
        local_batch = per_rank_batch(spec.batch_size, ranks.world_size)
        self.train_sampler = RankBatchSampler(len(folder.train), spec.batch_size, ranks.rank, ranks.world_size,
                                              spec.seed, spec.max_steps_per_epoch)
        val_sampler = ValShardSampler(len(folder.val), spec.eval_batch_size or local_batch, ranks.rank,
                                      ranks.world_size)
        if self.gpu_decode:
            train_set, val_set = EncodedTrainImages(folder.train, spec.seed), EncodedValImages(folder.val)
            collate = collate_encoded
        else:
            train_set = TrainImages(folder.train, spec.image_size, spec.seed)
            val_set = ValImages(folder.val, spec.image_size, spec.resize_size)
            collate = None
        workers = loader_workers(spec, ranks)
        options = dict(num_workers=workers, pin_memory=self.device.type == "cuda", collate_fn=collate,
                       persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
        self.train_loader = DataLoader(train_set, batch_sampler=self.train_sampler, **options)
        self.val_loader = DataLoader(val_set, batch_sampler=val_sampler, **options)

    @property
    def steps_per_epoch(self) -> int:
        return self.train_sampler.steps

    @property
    def samples_per_epoch(self) -> int:
        """Training samples of one epoch, over all processes."""
        return self.train_sampler.samples_per_epoch

    def loss_scale(self, step: int) -> float | None:
        return self.train_sampler.loss_scale(step)

    def _to_device(self, batch, train: bool):
        if self.gpu_decode:
            encoded, geometry, labels, indices = batch
            if train:
                images = train_batch_on_device(encoded, geometry, self.spec.image_size, self.device)
            else:
                images = val_batch_on_device(encoded, self.spec.image_size, self.spec.resize_size, self.device)
        else:
            images, labels, indices = batch
            images = images.to(self.device, non_blocking=True)
        return images, labels.to(self.device, non_blocking=True), indices.to(self.device, non_blocking=True)

    def train_batches(self, epoch: int):
        """(uint8 images, labels, sample indices) of each step on this process's device; a process
        with no share of the last partial batch gets empty tensors for it."""
        self.train_sampler.set_epoch(epoch)
        for batch in self.train_loader:
            yield self._to_device(batch, train=True)
        if self.train_sampler.empty_last_step:
            size = self.spec.image_size
            empty = torch.empty(0, dtype=torch.int64, device=self.device)
            yield torch.empty(0, 3, size, size, dtype=torch.uint8, device=self.device), empty, empty.clone()

    def val_batches(self):
        for batch in self.val_loader:
            yield self._to_device(batch, train=False)
