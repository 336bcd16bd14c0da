"""The benchmark workload: generated CIFAR-format data, a teacher, and that teacher's logit cache.

All paths run on the same data and teacher, so their times compare. The teacher is randomly
initialised (speed does not depend on its accuracy) with BatchNorm statistics calibrated on
the data so that its logits stay in a sane range.
"""
from __future__ import annotations

import contextlib
import gc
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

SEED = 0


def log(message: str) -> None:
    """Progress goes to stderr: stdout carries the tables and the one JSON line."""
    print(message, file=sys.stderr, flush=True)


@dataclass
class Sizes:
    classes: int
    train_per_class: int
    test_per_class: int
    batch_size: int
    epochs: int
    warmup: int
    steps: int | None  # timed steps per path; None: every step of `epochs` after warm-up

    @property
    def num_train(self) -> int:
        return self.classes * self.train_per_class

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.num_train // self.batch_size)


def work_folder(stack: contextlib.ExitStack, keep: str | None, prefix: str) -> Path:
    """``keep`` (created) if given, else a temporary folder removed when ``stack`` closes."""
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        return Path(keep)
    return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))


def default_sizes(device: str, quick: bool) -> Sizes:
    if quick:
        # A few seconds per path on 2 CPU cores; the export (32 images x 162 views) dominates.
        return Sizes(classes=4, train_per_class=8, test_per_class=4, batch_size=8, epochs=3, warmup=2, steps=None)
    if device == "cuda":
        return Sizes(classes=100, train_per_class=500, test_per_class=100, batch_size=64, epochs=2,
                     warmup=50, steps=None)
    return Sizes(classes=100, train_per_class=500, test_per_class=100, batch_size=64, epochs=1,
                 warmup=5, steps=20)


def default_pair(quick: bool) -> tuple[str, str]:
    return ("resnet14", "resnet8") if quick else ("resnet32x4", "resnet8x4")


def torch_device(name: str) -> torch.device:
    return torch.device("cuda", 0) if name == "cuda" else torch.device(name)


def fast_precision(device: str) -> str:
    # bf16 autocast buys speed only on CUDA; on the CPU the fast path differs by the cache alone.
    return "bf16" if device == "cuda" else "exact"


def default_cache_dtype(device: str) -> str:
    # As config.yaml: a float16 cache with the bf16 path on CUDA, float32 for exact runs.
    return "float16" if device == "cuda" else "float32"


def release_memory(device: torch.device) -> None:
    """Free what the previous path left (its data and cache on the device) before the next one."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def make_sync(device: torch.device):
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


@dataclass
class Prepared:
    data: str
    data_sha256: str
    num_classes: int
    num_train: int
    teacher_dir: str
    teacher_sha256: str
    cache_dir: str | None = None
    cache_dtype: str | None = None
    export_s: float | None = None


def prepare_data(workdir: Path, sizes: Sizes) -> tuple[Path, str]:
    """Generate the archive, read it back with the real reader, save the .npz; (path, sha256)."""
    from sortkd.data.cifar import extract_cifar_archive, read_cifar_python, save_arrays
    from sortkd.data.synthetic import write_cifar_archive

    root = Path(workdir) / "data"
    tgz = write_cifar_archive(root / "cifar-100-python.tar.gz", num_classes=sizes.classes,
                              train_per_class=sizes.train_per_class,
                              test_per_class=sizes.test_per_class, seed=0)
    arrays = read_cifar_python(extract_cifar_archive(tgz, root))
    out = Path(workdir) / "arrays.npz"
    return out, save_arrays(arrays, out)


@torch.no_grad()
def calibrate_batchnorm(model: torch.nn.Module, images: torch.Tensor, batch: int = 64) -> None:
    """Give a randomly initialised model BN statistics of the data (cumulative average), so
    that its eval-mode logits stay in a sane range."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    for first in range(0, images.shape[0], batch):
        model(images[first:first + batch])
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    model.eval()


def prepare_teacher(workdir: Path, arch: str, data: Path, data_sha256: str) -> tuple[Path, str, int]:
    """A teacher folder (model.pt + teacher.json) of random weights; (folder, sha256, classes)."""
    from sortkd.data.cifar import load_arrays
    from sortkd.data.views import normalize_images
    from sortkd.models import build
    from sortkd.seeding import seeded_global_rng
    from sortkd.teachers import save_teacher_model, write_teacher_info

    arrays = load_arrays(data)
    with seeded_global_rng(SEED, "init"):
        model = build(arch, arrays.num_classes)
    calibrate_batchnorm(model, normalize_images(torch.from_numpy(arrays.train_x[:256])))
    teacher_dir = Path(workdir) / "teacher"
    sha = save_teacher_model(teacher_dir, model, epoch=0)
    write_teacher_info(teacher_dir, {
        "arch": arch, "num_classes": arrays.num_classes, "source": "benchmark (random weights)",
        "checkpoint_sha256": sha, "test_top1": 0.0, "test_top5": 0.0, "data_sha256": data_sha256,
    })
    return teacher_dir, sha, arrays.num_classes


def prepare(workdir: Path, sizes: Sizes, teacher_arch: str) -> Prepared:
    t0 = time.perf_counter()
    data, data_sha = prepare_data(workdir, sizes)
    teacher_dir, teacher_sha, num_classes = prepare_teacher(workdir, teacher_arch, data, data_sha)
    log(f"prepared {sizes.num_train} training images ({num_classes} classes) and a {teacher_arch} "
        f"teacher in {time.perf_counter() - t0:.1f} s")
    return Prepared(str(data), data_sha, num_classes, sizes.num_train, str(teacher_dir), teacher_sha)


def export_cache(prep: Prepared, teacher_arch: str, device: torch.device, workdir: Path,
                 dtype: str | None = None) -> dict:
    """Export the logit cache as `python -m sortkd export-logits` does (fp32 forward); sets
    ``prep.cache_dir``, ``prep.cache_dtype`` and ``prep.export_s``; returns the cache's meta."""
    from sortkd.data.cifar import load_arrays
    from sortkd.data.views import DeviceCifar
    from sortkd.logit_cache import export_logits
    from sortkd.teachers import load_teacher

    dtype = dtype or default_cache_dtype(device.type)
    teacher, _ = load_teacher(Path(prep.teacher_dir), teacher_arch, device)
    if device.type == "cuda":
        teacher = teacher.to(memory_format=torch.channels_last)
    data = DeviceCifar(load_arrays(Path(prep.data)), device)
    cache_dir = Path(workdir) / "cache"
    sync = make_sync(device)
    sync()
    t0 = time.perf_counter()
    meta = export_logits(teacher, prep.teacher_sha256, data, prep.data_sha256, cache_dir, dtype=dtype, log=log)
    sync()
    prep.export_s = time.perf_counter() - t0
    prep.cache_dir, prep.cache_dtype = str(cache_dir), dtype
    del teacher, data
    release_memory(device)
    return meta
