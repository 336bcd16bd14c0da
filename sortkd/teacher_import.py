"""Import a released CIFAR teacher (mdistiller / RepDistiller ``cifar_teachers.tar``).

The checkpoint is copied byte for byte, its sha256 recorded (and checked if the
config pins one), and its test accuracy measured on our data before any student
may use it.
"""
from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import torch

from .data.cifar import load_arrays
from .engine.device import resolve_device
from .data.augment import normalize_images
from .engine.metrics import evaluate
from .io_atomic import atomic_path, file_sha256
from .teacher_store import MODEL_FILE, write_teacher_info, load_teacher

TEACHERS_URL = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"


def download_teacher_archive(out: Path, url: str | None = None, md5: str | None = None) -> Path:
    from torchvision.datasets.utils import download_url

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        download_url(url or TEACHERS_URL, str(out.parent), filename=out.name, md5=md5)
    except Exception as exc:  # network errors come in many types
        raise RuntimeError(
            f"could not download the teacher archive from {url or TEACHERS_URL}: {exc}. "
            f"Download it by hand to {out}, or set the teacher's source to 'train' in the config") from exc
    if not out.exists():
        raise RuntimeError(f"download of {url or TEACHERS_URL} produced no file at {out}")
    return out


def _member_for(archive: Path, arch: str) -> str:
    wanted = f"{arch}_vanilla/ckpt_epoch_240.pth"
    with tarfile.open(archive) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
    matches = [n for n in names if n == wanted or n.endswith("/" + wanted)]
    if len(matches) != 1:
        available = sorted({n.split("/")[-2] for n in names if n.endswith("ckpt_epoch_240.pth")})
        raise FileNotFoundError(f"{archive} holds no single {wanted} (found {len(matches)}); "
                                f"teachers in the archive: {', '.join(available) or 'none'}")
    return matches[0]


def import_teacher(arch: str, out_dir: Path, data: Path, archive: Path | None = None,
                   checkpoint: Path | None = None, expected_sha256: str | None = None,
                   device: str = "cpu") -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / MODEL_FILE
    if archive is not None:
        if not Path(archive).exists():
            raise FileNotFoundError(f"teacher archive {archive} not found: run the download step "
                                    "(`python -m sortkd download-teachers`) or place it there")
        member = _member_for(Path(archive), arch)
        with tarfile.open(archive) as tar, atomic_path(target) as tmp:
            with tar.extractfile(member) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
        origin = f"{archive}:{member}"
    elif checkpoint is not None:
        if not Path(checkpoint).exists():
            raise FileNotFoundError(f"teacher checkpoint {checkpoint} not found")
        with atomic_path(target) as tmp:
            shutil.copyfile(checkpoint, tmp)
        origin = str(checkpoint)
    else:
        raise ValueError("import_teacher needs an archive or a checkpoint")
    sha = file_sha256(target)
    if expected_sha256 and sha != expected_sha256:
        target.unlink()
        raise ValueError(f"teacher checkpoint from {origin} has sha256 {sha}, the config pins "
                         f"{expected_sha256}: refusing to use it")
    arrays = load_arrays(Path(data))
    info = {"arch": arch, "num_classes": arrays.num_classes, "source": "download", "origin": origin,
            "checkpoint_sha256": sha, "data_sha256": file_sha256(Path(data))}
    # Measure the accuracy through the same loader students use (strict keys, checksum).
    write_teacher_info(out_dir, {**info, "test_top1": None, "test_top5": None})
    dev = resolve_device(device)
    model, _ = load_teacher(out_dir, arch, dev)
    test_x = normalize_images(torch.from_numpy(arrays.test_x)).to(dev)
    test_y = torch.from_numpy(arrays.test_y).long().to(dev)
    measured = evaluate(model, test_x, test_y, arrays.num_classes)
    info.update(test_top1=measured["test_top1"], test_top5=measured["test_top5"])
    write_teacher_info(out_dir, info)
    return info
