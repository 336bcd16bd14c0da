"""Device selection with no silent fallback."""
from __future__ import annotations

import torch
import contextlib
from pathlib import Path
from sortkd.files import atomic_path
import datetime as dt
import sys
import os
import platform
import socket
import subprocess


# --- device -------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                "device 'cuda' was requested but torch sees no CUDA GPU "
                f"(torch {torch.__version__}, CUDA_VISIBLE_DEVICES="
                f"{__import__('os').environ.get('CUDA_VISIBLE_DEVICES')!r}). "
                "Set compute.device: cpu in the config to run on the CPU, or fix the GPU set-up.")
        return torch.device("cuda", 0)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {name!r}; allowed: cpu, cuda")


# --- schedule -----------------------------------------------------------------

def begin_epoch(optimizer, spec, epoch: int, method, hparams) -> tuple[float, dict]:
    """Set the epoch's LR, seed torch's global RNG from (seed, "global", epoch) so that any
    stray use of it is reproducible and resume-safe, and return (lr, the method's schedule)."""
    import torch

    from sortkd.seeding import derive_seed

    lr = step_lr(epoch, spec.lr, spec.lr_milestones, spec.lr_gamma)
    for group in optimizer.param_groups:
        group["lr"] = lr
    torch.manual_seed(derive_seed(spec.seed, "global", epoch))
    return lr, method.schedule(epoch, hparams)


def step_lr(epoch: int, base_lr: float, milestones=(150, 180, 210), gamma: float = 0.1) -> float:
    """LR of ``epoch`` (1-based): multiplied by ``gamma`` after each milestone epoch.

    With milestones 150/180/210: epochs 1–150 at LR, 151–180 at 0.1·LR, and so on.
    """
    return base_lr * gamma ** sum(epoch > m for m in milestones)


# --- metrics ------------------------------------------------------------------

class EpochMeter:
    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.zero = torch.zeros((), device=device, dtype=torch.float64)
        self.samples = torch.zeros((), device=device, dtype=torch.float64)
        self.steps = 0
        # First step whose loss was not finite, or -1; kept on the device.
        self.first_bad_step = torch.full((), -1, device=device, dtype=torch.int64)

    def _add(self, key: str, value: torch.Tensor) -> None:
        value = value.detach().to(torch.float64)
        self.sums[key] = self.sums.get(key, self.zero) + value

    def update(self, step: int, terms: dict[str, torch.Tensor], total: torch.Tensor,
               diagnostics: dict[str, torch.Tensor], student: torch.Tensor,
               teacher: torch.Tensor | None, target: torch.Tensor) -> None:
        n = target.shape[0]
        self.samples = self.samples + n
        self.steps += 1
        for key, value in terms.items():
            self._add(f"loss_{key}", value * n)
        self._add("loss_total", total * n)
        for key, value in diagnostics.items():
            self._add(key, value.to(self.device) * n)
        self._add("train_correct", (student.argmax(1) == target).sum())
        if teacher is not None:
            self._add("teacher_wrong", (teacher.argmax(1) != target).sum())
        bad = ~torch.isfinite(total.detach())
        self.first_bad_step = torch.where(bad & (self.first_bad_step < 0),
                                          torch.full_like(self.first_bad_step, step),
                                          self.first_bad_step)

    def read(self) -> tuple[dict[str, float], int]:
        """Host values of the epoch (the one sync) and the first non-finite step (-1 if none)."""
        keys = list(self.sums)
        stacked = torch.stack([self.sums[k] for k in keys] + [self.samples]).cpu().tolist()
        n = stacked[-1]
        out = {}
        for key, value in zip(keys, stacked[:-1]):
            if key == "train_correct":
                out["train_top1"] = 100.0 * value / n
            elif key == "teacher_wrong":
                out["teacher_wrong_frac"] = value / n
            else:
                out[key] = value / n
        return out, int(self.first_bad_step.item())


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
             num_classes: int, batch_size: int = 1000, autocast=contextlib.nullcontext) -> dict[str, float]:
    """Top-1 / top-5 (percent) of ``model`` on already-normalized images, in eval mode."""
    model.eval()
    correct1 = torch.zeros((), device=labels.device, dtype=torch.int64)
    correct5 = torch.zeros((), device=labels.device, dtype=torch.int64)
    k = min(5, num_classes)
    for start in range(0, labels.shape[0], batch_size):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        with autocast():
            logits = model(x)
        hit = logits.float().topk(k, dim=1).indices == y[:, None]
        correct1 += hit[:, 0].sum()
        correct5 += hit.any(dim=1).sum()
    c1, c5 = torch.stack([correct1, correct5]).cpu().tolist()
    n = labels.shape[0]
    return {"test_top1": 100.0 * c1 / n, "test_top5": 100.0 * c5 / n}


# --- checkpoint ---------------------------------------------------------------

def save_checkpoint(path: Path, payload: dict) -> None:
    # torch.save into a temp file in the same folder, then rename: a kill leaves the old or the new file.
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)


def load_checkpoint(path: Path) -> dict | None:
    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def load_matching_checkpoint(path: Path, spec_hash: str, note=print) -> dict | None:
    """The run's checkpoint, or None if there is none or it belongs to other settings."""
    ckpt = load_checkpoint(path)
    if ckpt is not None and ckpt.get("spec_hash") != spec_hash:
        note("checkpoint belongs to a different configuration: starting over")
        return None
    if ckpt is not None:
        note(f"resuming after epoch {ckpt['epoch']} from {path}")
    return ckpt


def restore_training_state(ckpt: dict, model, optimizer, method_state) -> None:
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if method_state is not None:
        method_state.load_state_dict(ckpt["method_state"])


# --- progress -----------------------------------------------------------------

def format_eta(seconds: float) -> str:
    return str(dt.timedelta(seconds=int(max(seconds, 0))))


class EpochProgress:
    def __init__(self, name: str, epochs: int, stream=None):
        self.name = name
        self.epochs = epochs
        self.stream = stream or sys.stdout
        self.durations: list[float] = []

    def epoch_done(self, epoch: int, seconds: float, row: dict) -> None:
        self.durations.append(seconds)
        recent = self.durations[-5:]
        eta = sum(recent) / len(recent) * (self.epochs - epoch)
        parts = [f"[{self.name}] epoch {epoch}/{self.epochs}", f"lr {row['lr']:.4g}",
                 f"loss {row['loss_total']:.4f}", f"train {row['train_top1']:.2f}%",
                 f"test {row['test_top1']:.2f}%"]
        if "teacher_wrong_frac" in row:
            parts.append(f"teacher wrong {100 * row['teacher_wrong_frac']:.1f}%")
        if "ctkd_temperature" in row:
            parts.append(f"T {row['ctkd_temperature']:.3f}")
        parts.append(f"{seconds:.1f} s/epoch, ETA {format_eta(eta)}")
        print(", ".join(parts), file=self.stream, flush=True)

    def note(self, text: str) -> None:
        print(f"[{self.name}] {text}", file=self.stream, flush=True)


# --- provenance ---------------------------------------------------------------

def git_revision(path: Path | None = None) -> str:
    """HEAD of the checkout holding the package (``+dirty`` if it has changes), or 'unknown'."""
    path = path or Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def collect(spec_dict: dict, spec_hash: str, seed: int, device: torch.device,
            start: str, wall_s: float) -> dict:
    from sortkd import __version__

    return {
        "config": spec_dict,
        "config_hash": spec_hash,
        "git_revision": git_revision(),
        "seed": seed,
        "versions": {
            "sortkd": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        },
        "device": device_name(device),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpu_slot": os.environ.get("SORTKD_GPU_SLOT"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "start": start,
        "end": now_iso(),
        "wall_s": round(wall_s, 3),
    }
