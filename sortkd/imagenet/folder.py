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
