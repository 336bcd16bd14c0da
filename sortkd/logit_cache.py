"""The teacher-logit cache: every training view and every test image, exported once per teacher.

Layout of a cache folder:
- ``train_logits.npy``: [N, 162, C] logits of every (training image, view id), fp16 or fp32;
- ``test_logits.npy``:  [M, C] logits of the test images;
- ``meta.json``: teacher checkpoint sha256, dataset sha256, view-id encoding, dtype, shapes,
  the teacher's test top-1 measured from ``test_logits``, the forward's precision and what
  the storage dtype did to the logits (``storage_rounding``). Written last: its presence
  marks a complete export.

The teacher always runs in fp32 (autocast off, TF32 off on CUDA), whatever the students'
precision: the logits are computed once and reused by every student of the teacher.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from sortkd.data.views import NUM_VIEWS, render_views
from sortkd.files import file_sha256, read_json, write_json
from sortkd.sorting import sort_logits
from sortkd.teachers import float32_forward
from sortkd.training.loop import format_eta

TRAIN_FILE, TEST_FILE, META_FILE = "train_logits.npy", "test_logits.npy", "meta.json"
VIEW_ENCODING = "view = (dy * 9 + dx) * 2 + flip; zero pad 4, crop 32x32 at (dy, dx), then flip"
DTYPES = {"float16": np.float16, "float32": np.float32}
TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}
# Host memory used at a time while a cache is copied to a GPU.
LOAD_CHUNK_BYTES = 64 << 20


class CacheError(RuntimeError):
    """The cache is missing, incomplete, or belongs to another teacher or data set."""


class RoundingTally:
    """What storing fp32 logits in the cache dtype does to them, summed on the device.

    Per (image, view) row: the largest absolute change of a logit; whether the argmax moved;
    whether ``sort_logits`` of the stored row differs from the stored rounding of
    ``sort_logits`` of the fp32 row (compared exactly: a difference means the rounding changed
    the order the sort acts on, not just the values). No host sync until ``read``.
    """

    def __init__(self, dtype: str, device: torch.device):
        self.dtype = TORCH_DTYPES[dtype]
        zero = torch.zeros((), dtype=torch.int64, device=device)
        self.max_abs_error = torch.zeros((), dtype=torch.float32, device=device)
        self.argmax_changed = zero.clone()
        self.sort_changed = zero.clone()
        self.non_finite = zero.clone()
        self.rows = 0

    def add(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Tally one fp32 chunk [rows, C] with its labels; returns the stored-dtype chunk."""
        stored = logits.to(self.dtype)
        back = stored.float()
        # |x - round(x)| is exact in fp32: both are within a factor 2 of each other (Sterbenz).
        self.max_abs_error = torch.maximum(self.max_abs_error, (back - logits).abs().max())
        self.argmax_changed += (back.argmax(1) != logits.argmax(1)).sum()
        sorted_stored = sort_logits(back, target)
        stored_sorted = sort_logits(logits, target).to(self.dtype).float()
        self.sort_changed += (sorted_stored != stored_sorted).any(1).sum()
        self.non_finite += (~torch.isfinite(back)).any(1).sum()
        self.rows += logits.shape[0]
        return stored

    def read(self) -> dict:
        max_err, argmax_changed, sort_changed, non_finite = torch.stack([
            self.max_abs_error.double(), self.argmax_changed.double(), self.sort_changed.double(),
            self.non_finite.double()]).cpu().tolist()
        if non_finite:
            raise ValueError(f"{int(non_finite)} of {self.rows} (image, view) rows hold logits that are not "
                             f"finite in {str(self.dtype).replace('torch.', '')} (a NaN or inf teacher output, "
                             "or logits beyond the float16 range): check the teacher, or export with "
                             "--dtype float32")
        return {"rows": self.rows, "max_abs_error": max_err,
                "argmax_changed_rows": int(argmax_changed), "sort_changed_rows": int(sort_changed)}


def rounding_summary(dtype: str, figures: dict) -> str:
    return (f"export: {dtype} storage moved the logits by at most {figures['max_abs_error']:.3g}; "
            f"argmax changed in {figures['argmax_changed_rows']} and the sort_logits output beyond "
            f"the rounding in {figures['sort_changed_rows']} of {figures['rows']} (image, view) rows")


@torch.no_grad()
def export_logits(teacher: torch.nn.Module, teacher_sha256: str, data, data_sha256: str,
                  out_dir: Path, dtype: str = "float16", images_per_chunk: int = 256,
                  batch_size: int = 4096, log=print) -> dict:
    """Export the cache for ``teacher`` (eval mode) over ``data`` (a DeviceCifar).

    The forward runs in fp32 (:func:`sortkd.teachers.float32_forward`) even inside a caller's
    autocast. Streams chunks of images: only one chunk of logits is in host memory at a time;
    the output arrays are memory-mapped files renamed into place when complete.
    """
    if dtype not in DTYPES:
        raise ValueError(f"cache dtype {dtype!r} is not supported; allowed: {', '.join(DTYPES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META_FILE).unlink(missing_ok=True)
    device = data.device
    teacher.eval()
    n, c = data.num_train, data.num_classes
    tmp_train = out_dir / f".{TRAIN_FILE}.{os.getpid()}.tmp"
    tmp_test = out_dir / f".{TEST_FILE}.{os.getpid()}.tmp"
    tally = RoundingTally(dtype, device)
    start_time = time.time()
    try:
        with float32_forward(device) as tf32_on_entry:
            train = np.lib.format.open_memmap(tmp_train, mode="w+", dtype=DTYPES[dtype], shape=(n, NUM_VIEWS, c))
            all_views = torch.arange(NUM_VIEWS, device=device)
            last_report = 0.0
            for first in range(0, n, images_per_chunk):
                idx = torch.arange(first, min(first + images_per_chunk, n), device=device)
                # Every (image, view) of the chunk, image-major, in batches.
                pairs_i = idx.repeat_interleave(NUM_VIEWS)
                pairs_v = all_views.repeat(idx.shape[0])
                chunk = torch.empty(pairs_i.shape[0], c, dtype=torch.float32, device=device)
                for b in range(0, pairs_i.shape[0], batch_size):
                    x = render_views(data.train_padded, pairs_i[b:b + batch_size], pairs_v[b:b + batch_size])
                    chunk[b:b + batch_size] = teacher(x).float()
                stored = tally.add(chunk, data.train_y[pairs_i])
                train[first:first + idx.shape[0]] = stored.view(idx.shape[0], NUM_VIEWS, c).cpu().numpy()
                done = first + idx.shape[0]
                now = time.time()
                if now - last_report > 10 or done == n:
                    last_report = now
                    rate = done / max(now - start_time, 1e-9)
                    log(f"export: {done}/{n} images x {NUM_VIEWS} views ({100 * done / n:.0f}%), "
                        f"{rate * NUM_VIEWS:.0f} views/s, ETA {format_eta((n - done) / rate)}")
            train.flush()
            del train
            test_logits = torch.cat([teacher(data.test_x[b:b + batch_size]).float()
                                     for b in range(0, data.test_y.shape[0], batch_size)])
        rounding = tally.read()
        test = np.lib.format.open_memmap(tmp_test, mode="w+", dtype=DTYPES[dtype], shape=tuple(test_logits.shape))
        test[:] = test_logits.to(TORCH_DTYPES[dtype]).cpu().numpy()
        test.flush()
        del test
        os.replace(tmp_train, out_dir / TRAIN_FILE)
        os.replace(tmp_test, out_dir / TEST_FILE)
    finally:
        tmp_train.unlink(missing_ok=True)
        tmp_test.unlink(missing_ok=True)
    top1 = 100.0 * (test_logits.argmax(1) == data.test_y).double().mean().item()
    log(rounding_summary(dtype, rounding))
    meta = {
        "teacher_sha256": teacher_sha256,
        "data_sha256": data_sha256,
        "view_encoding": VIEW_ENCODING,
        "num_views": NUM_VIEWS,
        "dtype": dtype,
        "train_shape": [n, NUM_VIEWS, c],
        "test_shape": list(test_logits.shape),
        "train_bytes": (out_dir / TRAIN_FILE).stat().st_size,
        "test_bytes": (out_dir / TEST_FILE).stat().st_size,
        "teacher_test_top1": top1,
        "forward_dtype": "float32",
        "device": str(device),
        # CUDA only (None elsewhere): TF32 was off during the forward; these are the settings
        # the process had before, i.e. what a plain PyTorch forward would have used.
        "tf32_during_forward": False if tf32_on_entry is not None else None,
        "tf32_allowed_before_export": tf32_on_entry,
        "storage_rounding": rounding,
        "seconds": round(time.time() - start_time, 2),
    }
    write_json(out_dir / META_FILE, meta)
    return meta


def copy_to_device(array: np.ndarray, device: torch.device, chunk_bytes: int = LOAD_CHUNK_BYTES) -> torch.Tensor:
    """``array`` (e.g. a memory-mapped .npy) as a tensor on ``device``, read in chunks along the
    first axis so that at most ``chunk_bytes`` of it sit in host memory at a time."""
    out = torch.empty(array.shape, dtype=torch.from_numpy(np.empty(0, dtype=array.dtype)).dtype, device=device)
    row_bytes = max(1, array[:1].nbytes)
    rows = max(1, chunk_bytes // row_bytes)
    for first in range(0, array.shape[0], rows):
        # np.array reads the chunk from the mapping into a writable buffer; copy_ from pageable
        # memory returns once that buffer was read, so it may go.
        out[first:first + rows].copy_(torch.from_numpy(np.array(array[first:first + rows])))
    return out


class TeacherLogitCache:
    """Reads a cache after checking it belongs to the expected teacher and data set."""

    def __init__(self, cache_dir: Path, teacher_sha256: str, data_sha256: str,
                 num_train: int, num_classes: int, device: torch.device):
        cache_dir = Path(cache_dir)
        meta_path = cache_dir / META_FILE
        if not meta_path.exists():
            raise CacheError(f"teacher-logit cache {cache_dir} is missing or incomplete (no {META_FILE}); "
                             "run the logits_export rule / `python -m sortkd export-logits` first")
        meta = read_json(meta_path)
        if meta["teacher_sha256"] != teacher_sha256:
            raise CacheError(f"cache {cache_dir} was exported from teacher checkpoint "
                             f"{meta['teacher_sha256'][:12]}…, but the run's teacher is {teacher_sha256[:12]}…; "
                             "re-export the logits")
        if meta["data_sha256"] != data_sha256:
            raise CacheError(f"cache {cache_dir} was exported for data set {meta['data_sha256'][:12]}…, "
                             f"but the run uses {data_sha256[:12]}…; re-export the logits")
        expected = [num_train, NUM_VIEWS, num_classes]
        if meta["train_shape"] != expected:
            raise CacheError(f"cache {cache_dir} has shape {meta['train_shape']}, the run needs {expected}")
        for name, key in ((TRAIN_FILE, "train_bytes"), (TEST_FILE, "test_bytes")):
            size = (cache_dir / name).stat().st_size if (cache_dir / name).exists() else 0
            if size != meta[key]:
                raise CacheError(f"cache file {cache_dir / name} has {size} bytes, {meta[key]} expected: "
                                 "truncated or replaced; re-export the logits")
        train = np.load(cache_dir / TRAIN_FILE, mmap_mode="r")
        if list(train.shape) != expected or train.dtype != DTYPES[meta["dtype"]]:
            raise CacheError(f"cache file {cache_dir / TRAIN_FILE} holds {train.dtype}{list(train.shape)}, "
                             f"meta.json says {meta['dtype']}{expected}")
        self.meta = meta
        self.device = device
        if device.type == "cpu":
            # Copy-on-write mapping: the file is the host memory, shared through the page cache
            # by every process that reads it, and torch can index it without a copy.
            self._train = torch.from_numpy(np.load(cache_dir / TRAIN_FILE, mmap_mode="c"))
        else:
            # The whole array lives in device memory (1.6 GB for CIFAR-100 in fp16), loaded
            # from the mapping in chunks: never a full host copy.
            self._train = copy_to_device(train, device)
        del train

    def train_logits(self, index: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """fp32 logits [B, C] of (image ``index[b]``, view ``views[b]``); no host sync.

        ``index`` and ``views`` must live on the cache's device: a CPU index into a GPU cache
        would be a hidden host-to-device copy in every step.
        """
        for name, t in (("index", index), ("views", views)):
            if t.device != self._train.device:
                raise ValueError(f"teacher-logit cache: {name} is on {t.device}, the cache on "
                                 f"{self._train.device}; move it to the cache's device")
        return self._train[index, views].float()


def dataset_sha256(path: Path) -> str:
    return file_sha256(Path(path))
