"""The teacher-logit cache: every training view and every test image, exported once per teacher.

Layout of a cache folder:
- ``train_logits.npy``: [N, 162, C] logits of every (training image, view id), fp16 or fp32;
- ``test_logits.npy``:  [M, C] logits of the test images;
- ``meta.json``: teacher checkpoint sha256, dataset sha256, view-id encoding, dtype, shapes,
  the teacher's test top-1 measured from ``test_logits``. Written last: its presence
  marks a complete export.
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import numpy as np
import torch

from sortkd.data.views import NUM_VIEWS, render_views
from sortkd.training.loop import format_eta
from sortkd.files import file_sha256
from sortkd.files import read_json, write_json

TRAIN_FILE, TEST_FILE, META_FILE = "train_logits.npy", "test_logits.npy", "meta.json"
VIEW_ENCODING = "view = (dy * 9 + dx) * 2 + flip; zero pad 4, crop 32x32 at (dy, dx), then flip"
DTYPES = {"float16": np.float16, "float32": np.float32}


class CacheError(RuntimeError):
    """The cache is missing, incomplete, or belongs to another teacher or data set."""


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def export_logits(teacher: torch.nn.Module, teacher_sha256: str, data, data_sha256: str,
                  out_dir: Path, dtype: str = "float16", images_per_chunk: int = 256,
                  batch_size: int = 4096, low_precision: bool = True, log=print) -> dict:
    """Export the cache for ``teacher`` (eval mode) over ``data`` (a DeviceCifar).

    Streams chunks of images: only one chunk of logits is in host memory at a time;
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
    try:
        train = np.lib.format.open_memmap(tmp_train, mode="w+", dtype=DTYPES[dtype], shape=(n, NUM_VIEWS, c))
        all_views = torch.arange(NUM_VIEWS, device=device)
        start_time = time.time()
        last_report = 0.0
        for first in range(0, n, images_per_chunk):
            idx = torch.arange(first, min(first + images_per_chunk, n), device=device)
            # Every (image, view) of the chunk, image-major, in batches.
            pairs_i = idx.repeat_interleave(NUM_VIEWS)
            pairs_v = all_views.repeat(idx.shape[0])
            chunk = torch.empty(pairs_i.shape[0], c, dtype=torch.float32, device=device)
            for b in range(0, pairs_i.shape[0], batch_size):
                x = render_views(data.train_padded, pairs_i[b:b + batch_size], pairs_v[b:b + batch_size])
                with _autocast(device, low_precision):
                    chunk[b:b + batch_size] = teacher(x).float()
            train[first:first + idx.shape[0]] = chunk.view(idx.shape[0], NUM_VIEWS, c).cpu().numpy().astype(DTYPES[dtype])
            done = first + idx.shape[0]
            now = time.time()
            if now - last_report > 10 or done == n:
                last_report = now
                rate = done / (now - start_time)
                log(f"export: {done}/{n} images x {NUM_VIEWS} views ({100 * done / n:.0f}%), "
                    f"{rate * NUM_VIEWS:.0f} views/s, ETA {format_eta((n - done) / rate)}")
        train.flush()
        del train
        test_logits = []
        for b in range(0, data.test_y.shape[0], batch_size):
            with _autocast(device, low_precision):
                test_logits.append(teacher(data.test_x[b:b + batch_size]).float())
        test_logits = torch.cat(test_logits)
        test = np.lib.format.open_memmap(tmp_test, mode="w+", dtype=DTYPES[dtype], shape=tuple(test_logits.shape))
        test[:] = test_logits.cpu().numpy().astype(DTYPES[dtype])
        test.flush()
        del test
        os.replace(tmp_train, out_dir / TRAIN_FILE)
        os.replace(tmp_test, out_dir / TEST_FILE)
    finally:
        tmp_train.unlink(missing_ok=True)
        tmp_test.unlink(missing_ok=True)
    top1 = 100.0 * (test_logits.argmax(1) == data.test_y).double().mean().item()
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
        "low_precision_forward": bool(low_precision and device.type == "cuda"),
        "seconds": round(time.time() - start_time, 2),
    }
    write_json(out_dir / META_FILE, meta)
    return meta


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
        # On a GPU the whole array lives in device memory (1.6 GB for CIFAR-100 in fp16);
        # on the CPU it stays memory-mapped and batches are gathered from the page cache.
        self._train_np = train
        self._train_dev = torch.from_numpy(np.ascontiguousarray(train)).to(device) if device.type == "cuda" else None

    def train_logits(self, index: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        if self._train_dev is not None:
            return self._train_dev[index, views].float()
        i, v = index.cpu().numpy(), views.cpu().numpy()
        return torch.from_numpy(np.asarray(self._train_np[i, v], dtype=np.float32)).to(self.device)


def dataset_sha256(path: Path) -> str:
    return file_sha256(Path(path))
