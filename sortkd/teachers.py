"""A teacher folder: ``model.pt`` (mdistiller format: {"model": state_dict}) and ``teacher.json``.

``teacher.json`` records the arch, the checkpoint's sha256, where it came from and
its measured test accuracy. Students and the logit export check the checksum.
"""
from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import torch

from sortkd.data.cifar import load_arrays
from sortkd.data.views import normalize_images
from sortkd.experiment.config import TEACHER_ARCHIVE_URL
from sortkd.files import atomic_path, file_sha256, read_json, write_json
# float32_forward is re-exported: the logit cache and gpu-check import it from here.
from sortkd.training.loop import evaluate, float32_forward, resolve_device  # noqa: F401


# --- teacher_store ------------------------------------------------------------

MODEL_FILE = "model.pt"
INFO_FILE = "teacher.json"


def save_teacher_model(teacher_dir: Path, model: torch.nn.Module, epoch: int) -> str:
    """Write model.pt atomically; returns its sha256."""
    teacher_dir = Path(teacher_dir)
    teacher_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # Through a file handle torch stores a fixed archive name, not the random temp file's:
    # identical weights give an identical file and checksum.
    with atomic_path(teacher_dir / MODEL_FILE) as tmp, open(tmp, "wb") as handle:
        torch.save({"model": state, "epoch": epoch}, handle)
    return file_sha256(teacher_dir / MODEL_FILE)


def write_teacher_info(teacher_dir: Path, info: dict) -> None:
    write_json(Path(teacher_dir) / INFO_FILE, info)


def read_teacher_info(teacher_dir: Path) -> dict:
    path = Path(teacher_dir) / INFO_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"teacher info {path} is missing: train or import the teacher first "
            "(Snakemake rules teacher_train / teacher_import, or `python -m sortkd train` / "
            "`python -m sortkd import-teacher`)")
    return read_json(path)


def load_teacher(teacher_dir: Path, arch: str, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The teacher in eval mode with gradients off, after checking arch and checksum."""
    from sortkd.models.checkpoint_import import load_public_checkpoint

    info = read_teacher_info(teacher_dir)
    if info["arch"] != arch:
        raise ValueError(f"teacher in {teacher_dir} is a {info['arch']!r}, the run expects {arch!r}")
    path = Path(teacher_dir) / MODEL_FILE
    actual = file_sha256(path)
    if actual != info["checkpoint_sha256"]:
        raise ValueError(f"teacher checkpoint {path} has sha256 {actual}, but teacher.json records "
                         f"{info['checkpoint_sha256']}: the checkpoint changed after it was measured; "
                         "rerun the teacher rule")
    model = load_public_checkpoint(path, arch, num_classes=info["num_classes"]).to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, info


# --- teacher_import -----------------------------------------------------------



def download_teacher_archive(out: Path, url: str | None = None, md5: str | None = None) -> Path:
    from torchvision.datasets.utils import download_url

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        download_url(url or TEACHER_ARCHIVE_URL, str(out.parent), filename=out.name, md5=md5)
    except Exception as exc:  # network errors come in many types
        raise RuntimeError(
            f"could not download the teacher archive from {url or TEACHER_ARCHIVE_URL}: {exc}. "
            f"Download it by hand to {out}, or set the teacher's source to 'train' in the config") from exc
    if not out.exists():
        raise RuntimeError(f"download of {url or TEACHER_ARCHIVE_URL} produced no file at {out}")
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
    with float32_forward(dev):
        measured = evaluate(model, test_x, test_y, arrays.num_classes)
    info.update(test_top1=measured["test_top1"], test_top5=measured["test_top5"])
    write_teacher_info(out_dir, info)
    return info
