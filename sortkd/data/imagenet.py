"""The ImageNet folder layout and its file lists.

Expected layout (the usual ILSVRC-2012 preparation)::

    <root>/train/<wnid>/*.JPEG
    <root>/val/<wnid>/*.JPEG

Class index = position of the wnid in sorted order, the same for train and val (this is also
the class order of torchvision's pretrained weights). File names are kept sorted so that
sample index i means the same image on every machine. Paths are stored as one numpy byte
array, not a list of Python strings: DataLoader workers fork the process, and millions of
small Python objects would be copied into every worker as their reference counts change.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
import numpy as np
import hashlib
import math
import torch
from sortkd.seeding import derive_seed
from sortkd.seeding import epoch_order


# --- folder -------------------------------------------------------------------

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
EXPECTED_LAYOUT = ("<root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG "
                   "(one folder per class, the same class folders in train/ and val/)")


class ImageNetLayoutError(ValueError):
    """The data folder is missing or does not have the expected layout."""


@dataclass(frozen=True)
class ImageList:
    folder: Path            # <root>/train or <root>/val
    paths: np.ndarray       # relative paths "<wnid>/<file>", dtype bytes
    labels: np.ndarray      # int64 class indices

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def path(self, index: int) -> str:
        return os.path.join(self.folder, self.paths[index].decode())


@dataclass(frozen=True)
class ImageNetFolder:
    root: Path
    classes: tuple[str, ...]
    train: ImageList
    val: ImageList

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _fail(root: Path, problem: str) -> None:
    raise ImageNetLayoutError(f"ImageNet folder {root}: {problem}. Expected layout: {EXPECTED_LAYOUT}")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def _class_folders(root: Path, split: str) -> list[str]:
    folder = root / split
    if not folder.is_dir():
        _fail(root, f"no {split}/ folder")
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    classes = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    loose = [e.name for e in entries if e.is_file() and _is_image(e.name)]
    if loose:
        _fail(root, f"{split}/ holds {len(loose)} image file(s) directly (e.g. {loose[0]}) instead of one "
                    f"sub-folder per class; sort the {split} images into <wnid>/ folders first")
    if not classes:
        _fail(root, f"{split}/ has no class folders")
    return classes


def _list_split(root: Path, split: str, classes: tuple[str, ...]) -> ImageList:
    paths, labels = [], []
    for label, wnid in enumerate(classes):
        names = sorted(e.name for e in os.scandir(root / split / wnid) if e.is_file() and _is_image(e.name))
        if not names:
            _fail(root, f"class folder {split}/{wnid} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        paths.extend(f"{wnid}/{name}" for name in names)
        labels.extend([label] * len(names))
    return ImageList(root / split, np.array(paths, dtype=np.bytes_), np.array(labels, dtype=np.int64))


def scan_imagenet(root: str | Path) -> ImageNetFolder:
    """Read the class folders and file lists of ``root``; a clear error if the layout is wrong."""
    root = Path(root)
    if not root.is_dir():
        _fail(root, "the folder does not exist")
    train_classes = _class_folders(root, "train")
    val_classes = _class_folders(root, "val")
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        _fail(root, f"train/ and val/ have different class folders (only in train: {only_train[:5]}, "
                    f"only in val: {only_val[:5]})")
    classes = tuple(train_classes)
    return ImageNetFolder(root, classes, _list_split(root, "train", classes), _list_split(root, "val", classes))


# --- views --------------------------------------------------------------------

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


# --- sampler ------------------------------------------------------------------

def per_rank_batch(global_batch: int, world_size: int) -> int:
    if global_batch % world_size:
        raise ValueError(f"the global batch size {global_batch} is not divisible by the number of "
                         f"processes {world_size}; choose a process count that divides it")
    return global_batch // world_size


def rank_share(size: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank ``rank`` in a global batch of ``size``: near-equal contiguous parts
    (sizes differ by at most one; the first ranks take the extra samples)."""
    base, extra = divmod(size, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


class RankBatchSampler:
    """Yields this rank's batches of (epoch, sample index) keys; call ``set_epoch`` first.

    Step s's global batch is ``order[s*B:(s+1)*B]`` of the epoch's shuffled order. The last one
    may be partial: it is kept, as upstream's loader keeps it. Each rank takes its
    ``rank_share`` of every global batch; a rank's share of a very small last batch may be empty,
    and such an empty batch is not yielded (``empty_last_step`` says so).
    """

    def __init__(self, num_samples: int, global_batch: int, rank: int, world_size: int, seed: int,
                 max_steps: int | None = None):
        if num_samples < global_batch:
            raise ValueError(f"{num_samples} training images are fewer than one global batch "
                             f"of {global_batch}")
        per_rank_batch(global_batch, world_size)
        self.num_samples, self.global_batch, self.seed = num_samples, global_batch, seed
        self.rank, self.world_size = rank, world_size
        steps = -(-num_samples // global_batch)
        self.steps = steps if max_steps is None else min(steps, max_steps)
        self.epoch = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps - self.empty_last_step

    def global_size(self, step: int) -> int:
        """Samples in step ``step``'s global batch (all ranks together)."""
        return min(self.global_batch, self.num_samples - step * self.global_batch)

    def local_size(self, step: int) -> int:
        start, stop = rank_share(self.global_size(step), self.rank, self.world_size)
        return stop - start

    def loss_scale(self, step: int) -> float | None:
        """Weight of this rank's batch-mean loss at ``step``, so that averaging the ranks' gradients
        (as DDP does) gives the mean over the global batch: local·W/global. None when every rank
        has the same share (full batches)."""
        local, total = self.local_size(step), self.global_size(step)
        if local * self.world_size == total:
            return None
        return local * self.world_size / total

    @property
    def empty_last_step(self) -> bool:
        return self.local_size(self.steps - 1) == 0

    @property
    def samples_per_epoch(self) -> int:
        return sum(self.global_size(step) for step in range(self.steps))

    def __iter__(self):
        if self.epoch is None:
            raise RuntimeError("RankBatchSampler.set_epoch must be called before iterating")
        epoch = self.epoch
        order = epoch_order(self.seed, epoch, self.num_samples)
        for step in range(self.steps):
            start, stop = rank_share(self.global_size(step), self.rank, self.world_size)
            first = step * self.global_batch
            if stop > start:
                yield [(epoch, int(i)) for i in order[first + start:first + stop]]


class ValShardSampler:
    """Rank r evaluates samples r, r+W, r+2W, ...: every sample exactly once, no padding."""

    def __init__(self, num_samples: int, batch_size: int, rank: int, world_size: int):
        self.indices = list(range(rank, num_samples, world_size))
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self):
        for first in range(0, len(self.indices), self.batch_size):
            yield self.indices[first:first + self.batch_size]
