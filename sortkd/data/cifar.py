"""CIFAR-100: the standard download, the ``cifar-100-python`` reader and the compact array file.

The real archive holds ``cifar-100-python/{train,test,meta}``: Python 2 pickles of dicts
(loaded with ``encoding="bytes"`` they have bytes keys). ``train``/``test`` carry ``b"data"``
(uint8 [N, 3072]: the R plane, then G, then B, each 32x32 row-major) and ``b"fine_labels"``;
``meta`` carries ``b"fine_label_names"``. The pipeline converts them once into an uncompressed
``.npz`` that the trainers load.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from sortkd.files import atomic_path, file_sha256

# The facts below are those torchvision's CIFAR100 dataset class checks.
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_FILE_MD5 = {
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}
FOLDER_NAME = "cifar-100-python"
CIFAR_FILES = ("train", "test", "meta")
IMAGE_SHAPE = (3, 32, 32)

_PREPARE_HINT = (
    "make it with `python -m sortkd prepare-data` (the Snakemake `data` rule does this)"
)
_FOLDER_HINT = (
    "set `data.download: true` in the config to fetch CIFAR-100, or place the extracted "
    f"archive there (a folder {FOLDER_NAME}/ holding the files train, test and meta)"
)


class ChecksumMismatch(RuntimeError):
    """A downloaded or extracted file does not have the expected MD5."""


@dataclass
class CifarArrays:
    """A CIFAR-style classification set held in memory."""

    train_x: np.ndarray  # uint8 [N, 3, 32, 32]
    train_y: np.ndarray  # int64 [N]
    test_x: np.ndarray  # uint8 [M, 3, 32, 32]
    test_y: np.ndarray  # int64 [M]
    class_names: list[str]

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x = getattr(self, f"{split}_x")
            y = getattr(self, f"{split}_y")
            if x.dtype != np.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE:
                raise ValueError(
                    f"{split}_x must be uint8 [N, 3, 32, 32], got {x.dtype} {tuple(x.shape)}"
                )
            if y.dtype != np.int64 or y.shape != (x.shape[0],):
                raise ValueError(
                    f"{split}_y must be int64 [{x.shape[0]}] (one label per image), "
                    f"got {y.dtype} {tuple(y.shape)}"
                )
            if y.size and (y.min() < 0 or y.max() >= len(self.class_names)):
                raise ValueError(
                    f"{split}_y holds labels in [{y.min()}, {y.max()}] but there are "
                    f"{len(self.class_names)} class names"
                )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def check_file_md5(path: Path, expected: str) -> None:
    """Raise :class:`ChecksumMismatch` naming the file and both checksums."""
    actual = file_md5(path)
    if actual != expected:
        raise ChecksumMismatch(
            f"MD5 mismatch for {path}: expected {expected}, got {actual}. The file is corrupted "
            "or is not the one expected; delete it and download or generate it again."
        )


def verify_files(folder: Path, md5s: Mapping[str, str]) -> None:
    """Check every ``name -> md5`` of ``md5s`` inside ``folder``."""
    folder = Path(folder)
    _require_layout(folder)
    for name, expected in md5s.items():
        check_file_md5(folder / name, expected)


def _require_layout(folder: Path) -> None:
    missing = [name for name in CIFAR_FILES if not (folder / name).is_file()]
    if missing:
        what = "does not exist" if not folder.is_dir() else f"lacks {', '.join(missing)}"
        raise FileNotFoundError(
            f"CIFAR folder {folder} {what}; expected the layout "
            f"{FOLDER_NAME}/{{train,test,meta}}. To fix it, {_FOLDER_HINT}."
        )


def extract_cifar_archive(
    tgz: Path, root: Path, *, file_md5s: Optional[Mapping[str, str]] = None
) -> Path:
    """Extract a ``cifar-100-python.tar.gz`` into ``root``; return ``root / "cifar-100-python"``.

    Extraction goes into a staging folder inside ``root`` that is renamed into place at the end
    (after checking ``file_md5s``, when given), so an interrupted extraction or a corrupted
    file never leaves a half-filled or unverified ``cifar-100-python`` folder.
    """
    from torchvision.datasets.utils import extract_archive

    tgz, root = Path(tgz), Path(root)
    if not tgz.is_file():
        raise FileNotFoundError(f"CIFAR archive {tgz} does not exist")
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".extract-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    target = root / FOLDER_NAME
    try:
        extract_archive(str(tgz), str(staging))
        extracted = staging / FOLDER_NAME
        if not extracted.is_dir():
            raise ValueError(
                f"archive {tgz} has no top-level folder {FOLDER_NAME}/; it is not a "
                "CIFAR-100 python archive"
            )
        _require_layout(extracted)
        if file_md5s:
            verify_files(extracted, file_md5s)
        if target.exists():
            # Move the old folder aside first: os.replace cannot overwrite a non-empty folder.
            old = staging / "previous"
            os.replace(target, old)
        os.replace(extracted, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def download_cifar100(
    root: Path,
    url: str = CIFAR100_URL,
    md5: Optional[str] = CIFAR100_ARCHIVE_MD5,
    *,
    file_md5s: Optional[Mapping[str, str]] = None,
) -> Path:
    """Download (torchvision's downloader) and extract CIFAR-100; return its folder.

    The archive is checked against ``md5`` and the extracted files against ``file_md5s``.
    ``file_md5s=None`` means torchvision's per-file MD5s when ``md5`` is the real archive's,
    and no per-file check otherwise (the archive checksum already covers its content).
    An already present, verified folder is reused without downloading.
    """
    from torchvision.datasets.utils import download_url

    root = Path(root)
    if file_md5s is None and md5 == CIFAR100_ARCHIVE_MD5:
        file_md5s = CIFAR100_FILE_MD5
    target = root / FOLDER_NAME
    if file_md5s and _folder_verifies(target, file_md5s):
        return target

    filename = os.path.basename(url.rstrip("/")) or "cifar-100-python.tar.gz"
    archive = root / filename
    try:
        download_url(url, str(root), filename=filename, md5=md5)
    except RuntimeError as err:
        if md5 is not None and archive.is_file():
            raise ChecksumMismatch(
                f"MD5 mismatch for {archive} downloaded from {url}: expected {md5}, got "
                f"{file_md5(archive)}. Check the URL and the checksum; a retry downloads it again."
            ) from err
        raise
    return extract_cifar_archive(archive, root, file_md5s=file_md5s)


def _folder_verifies(folder: Path, md5s: Mapping[str, str]) -> bool:
    try:
        verify_files(folder, md5s)
    except (FileNotFoundError, ChecksumMismatch):
        return False
    return True


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only builds what CIFAR files contain: dicts, lists, bytes and ndarrays."""

    # The ndarray reconstructor of the installed numpy, whichever module path the file names.
    _RECONSTRUCT = np.ndarray((0,), np.uint8).__reduce__()[0]
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):  # how Python 3 protocol-2 pickles bytes
            return super().find_class(module, name)
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"a CIFAR file may not reference {module}.{name}; the file is not a CIFAR pickle"
            ) from None


def _load_pickle(path: Path) -> dict:
    with open(path, "rb") as handle:
        try:
            obj = _CifarUnpickler(handle, encoding="bytes").load()
        except Exception as err:
            raise ValueError(f"{path} is not a readable CIFAR pickle: {err}") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected a dict")
    return obj


def _field(entry: dict, key: bytes, path: Path):
    if key not in entry:
        found = ", ".join(repr(k) for k in entry)
        raise ValueError(f"{path} lacks the key {key!r} (found: {found}); not a CIFAR-100 file")
    return entry[key]


def _read_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    entry = _load_pickle(path)
    data = np.asarray(_field(entry, b"data", path))
    labels = np.asarray(_field(entry, b"fine_labels", path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: b'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise ValueError(
            f"{path}: {labels.size} fine labels for {data.shape[0]} images; they must match"
        )
    # Each row is the R plane, then G, then B, each row-major: a plain reshape gives CHW.
    images = np.ascontiguousarray(data.reshape(-1, *IMAGE_SHAPE))
    return images, labels


def read_cifar_python(folder: Path, verify_md5: bool = False) -> CifarArrays:
    """Read an extracted ``cifar-100-python`` folder.

    ``verify_md5=True`` checks the files against the real CIFAR-100 MD5s (use it for the real
    data set; a generated one has other checksums).
    """
    folder = Path(folder)
    _require_layout(folder)
    if verify_md5:
        verify_files(folder, CIFAR100_FILE_MD5)
    train_x, train_y = _read_split(folder / "train")
    test_x, test_y = _read_split(folder / "test")
    names = _field(_load_pickle(folder / "meta"), b"fine_label_names", folder / "meta")
    class_names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    return CifarArrays(train_x, train_y, test_x, test_y, class_names)


_ARRAY_KEYS = ("train_x", "train_y", "test_x", "test_y", "class_names")


def save_arrays(arrays: CifarArrays, path: Path) -> str:
    """Write ``arrays`` as an uncompressed ``.npz`` atomically; return the file's sha256."""
    path = Path(path)
    with atomic_path(path) as tmp:
        # A file handle, not a name: np.savez would append ".npz" to the temporary name.
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                train_x=arrays.train_x,
                train_y=arrays.train_y,
                test_x=arrays.test_x,
                test_y=arrays.test_y,
                class_names=np.array(arrays.class_names, dtype=np.str_),
            )
    return file_sha256(path)


def load_arrays(path: Path) -> CifarArrays:
    """Load a file written by :func:`save_arrays`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR array file {path} does not exist; {_PREPARE_HINT}")
    with np.load(path, allow_pickle=False) as npz:
        missing = [key for key in _ARRAY_KEYS if key not in npz.files]
        if missing:
            raise ValueError(
                f"{path} lacks {', '.join(missing)}; it was not written by save_arrays. "
                f"Delete it and {_PREPARE_HINT}."
            )
        return CifarArrays(
            train_x=npz["train_x"],
            train_y=npz["train_y"],
            test_x=npz["test_x"],
            test_y=npz["test_y"],
            class_names=[str(name) for name in npz["class_names"]],
        )
