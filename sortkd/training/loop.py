"""The one epoch loop of every run, CIFAR and ImageNet alike, and the parts it is made of.

``Trainer`` owns the optimizer and the method state, resume, the step, the meter and the
non-finite check, the checkpoint, the summary, the progress lines and the provenance. A dataset
entry (``training/cifar.py``, ``training/imagenet.py``) subclasses it and supplies only:

- ``train_batches(epoch)``: the epoch's ``Batch`` objects, each holding the views the method
  asks for (``method.views``; today's methods take the one view ``"weak"``);
- ``teacher_logits(batch, view)``: the teacher's fp32 logits of one view of a batch;
- ``evaluation_batches()``: (images, labels) batches of the test or validation set;
- the cross-process reduction (``reduce_sum``, ``reduce_meter``, ``barrier``), which is the
  identity in a single process.

Precision: ``precision: bf16`` autocasts the student's training forward (and so its backward)
to bf16, on CUDA and on the CPU. Teacher logits and test evaluation always run in fp32, and on
CUDA with TF32 off (``float32_forward``); ``precision: exact`` switches TF32 off for the
student's training too (``fp32_means_fp32``).

Run folder files: ``checkpoint.pt`` (atomic, every epoch; used to resume), ``metrics.jsonl``
(one row per epoch), ``summary.json`` and ``provenance.json`` once the run is complete.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from sortkd.files import atomic_path, write_json, write_jsonl

CHECKPOINT, METRICS, SUMMARY, PROVENANCE = "checkpoint.pt", "metrics.jsonl", "summary.json", "provenance.json"
PRECISIONS = ("exact", "bf16")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; no result is written."""


# --- device and precision -----------------------------------------------------

def resolve_device(name: str) -> torch.device:
    """The device of a run: no silent fallback from CUDA to the CPU."""
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                "device 'cuda' was requested but torch sees no CUDA GPU "
                f"(torch {torch.__version__}, CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}). "
                "Set compute.device: cpu in the config to run on the CPU, or fix the GPU set-up.")
        return torch.device("cuda", 0)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {name!r}; allowed: cpu, cuda")


def autocast_for(device: torch.device, precision: str):
    """A factory of the context the student's training forward runs in.

    ``exact``: no autocast. ``bf16``: bf16 autocast on the device's own type (CUDA, or the CPU,
    where it exists so that the whole fast path runs in the tests).
    """
    if precision == "exact":
        return contextlib.nullcontext
    if precision == "bf16":
        if device.type not in ("cuda", "cpu"):
            raise ValueError(f"precision 'bf16' needs a cuda or cpu device, not {device.type!r}")
        return partial(torch.autocast, device.type, dtype=torch.bfloat16)
    raise ValueError(f"unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}")


def fp32_means_fp32(device: torch.device, precision: str) -> None:
    """``exact`` on CUDA: no TF32 anywhere in the process (PyTorch's default lets cuDNN
    convolutions, forward and backward, round their inputs to TF32). Set once per run process,
    before the first step; provenance.json records the flags."""
    if device.type == "cuda" and precision == "exact":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False


def memory_format_for(precision: str) -> torch.memory_format:
    # channels_last is what bf16 convolutions are fast in; exact keeps the reference layout.
    return torch.channels_last if precision == "bf16" else torch.contiguous_format


@contextlib.contextmanager
def float32_forward(device: torch.device | str):
    """True fp32 for a forward pass that must be exact (teacher logits, test evaluation),
    whatever the caller set up around it.

    Autocast is off for the device type, and on CUDA so is TF32 for matmuls and cuDNN
    convolutions (PyTorch allows TF32 convolutions by default; TF32 keeps 10 mantissa bits, a
    rounding that can change which samples the sort treats as teacher-wrong). Yields the TF32
    settings found on entry (``{"matmul": bool, "cudnn": bool}``) on CUDA, None elsewhere, and
    restores them on exit. Devices without autocast (the "meta" device of the placement
    checks) pass through.
    """
    device = torch.device(device)
    if device.type not in ("cuda", "cpu"):
        yield None
        return
    with torch.autocast(device.type, enabled=False):
        if device.type != "cuda":
            yield None
            return
        # Only the two boolean switches (torch >= 1.7), read and written alike: since torch 2.9,
        # mixing them with set/get_float32_matmul_precision can make the getter raise.
        matmul_tf32, cudnn_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            yield {"matmul": bool(matmul_tf32), "cudnn": bool(cudnn_tf32)}
        finally:
            torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
            torch.backends.cudnn.allow_tf32 = cudnn_tf32


@torch.no_grad()
def fp32_logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """A teacher's logits of a batch: no gradients, fp32 (``float32_forward``)."""
    with float32_forward(images.device):
        return model(images).float()


def precision_record(device: torch.device, precision: str) -> dict:
    """What provenance.json says about the arithmetic of a run."""
    record = {"student_forward": "bf16 autocast" if precision == "bf16" else "fp32",
              "teacher_forward": "fp32", "evaluation": "fp32"}
    if device.type == "cuda":
        record.update(student_tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                      student_tf32_cudnn=torch.backends.cudnn.allow_tf32, teacher_tf32=False)
    return record


# --- schedule -----------------------------------------------------------------

def step_lr(epoch: int, base_lr: float, milestones=(150, 180, 210), gamma: float = 0.1) -> float:
    """LR of ``epoch`` (1-based): multiplied by ``gamma`` after each milestone epoch.

    With milestones 150/180/210: epochs 1–150 at LR, 151–180 at 0.1·LR, and so on.
    """
    return base_lr * gamma ** sum(epoch > m for m in milestones)


def begin_epoch(optimizer, spec, epoch: int, method, hparams) -> tuple[float, dict]:
    """Set the epoch's LR, seed torch's global RNG from (seed, "global", epoch) so that any
    stray use of it is reproducible and resume-safe, and return (lr, the method's schedule)."""
    from sortkd.seeding import derive_seed

    lr = step_lr(epoch, spec.lr, spec.lr_milestones, spec.lr_gamma)
    for group in optimizer.param_groups:
        group["lr"] = lr
    torch.manual_seed(derive_seed(spec.seed, "global", epoch))
    return lr, method.schedule(epoch, hparams)


# --- metrics ------------------------------------------------------------------

class EpochMeter:
    """Per-epoch sums, kept on the device: the step never waits for the host."""

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
            # A 0-dim CPU value (a schedule number) enters the device sums as a scalar: moving
            # it with .to(device) would be a synchronizing host-to-device copy on CUDA.
            self._add(key, value * n)
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


# --- evaluate -----------------------------------------------------------------

@torch.no_grad()
def evaluate_batches(model: torch.nn.Module, batches, device: torch.device,
                     reduce_sum=None) -> dict[str, float]:
    """Top-1 / top-5 (percent) of ``model`` in eval mode and in fp32 over (images, labels) batches.

    ``reduce_sum`` sums the hit counts over processes (each process sees its shard).
    """
    model.eval()
    hits = torch.zeros(2, device=device, dtype=torch.int64)  # top-1, top-5
    samples = 0
    with float32_forward(device):
        for images, labels in batches:
            logits = model(images)
            k = min(5, logits.shape[1])
            hit = logits.float().topk(k, dim=1).indices == labels[:, None]
            hits += torch.stack([hit[:, 0].sum(), hit.any(dim=1).sum()])
            samples += labels.shape[0]
    counts = torch.cat([hits, torch.tensor([samples], device=device)])
    if reduce_sum is not None:
        counts = reduce_sum(counts)
    c1, c5, n = counts.cpu().tolist()
    if n == 0:
        raise RuntimeError("the evaluation set is empty")
    return {"test_top1": 100.0 * c1 / n, "test_top5": 100.0 * c5 / n}


def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
             num_classes: int | None = None, batch_size: int = 1000) -> dict[str, float]:
    """``evaluate_batches`` over already-normalized images held in one tensor."""
    return evaluate_batches(model, zip(images.split(batch_size), labels.split(batch_size)), labels.device)


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


# --- summary ------------------------------------------------------------------

def best_row(history: list[dict]) -> dict:
    """The epoch of the highest test top-1; a tie goes to the latest epoch (mdistiller saves on >=)."""
    return max(history, key=lambda r: (r["test_top1"], r["epoch"]))


def summarize(spec, history: list[dict], dataset: str, kind: str, teacher: dict | None) -> dict:
    """The run summary the report reads; ``teacher`` holds the teacher's fields (None: no teacher)."""
    best, final = best_row(history), history[-1]
    summary = {
        "run": {"experiment": spec.experiment, "dataset": dataset, "kind": kind, "arch": spec.arch,
                "teacher": spec.teacher_arch, "student": spec.arch if kind == "student" else None,
                "pair": spec.pair, "method": spec.method, "variant": spec.variant, "seed": spec.seed},
        "epochs": len(history),
        "final_top1": final["test_top1"], "final_top5": final["test_top5"],
        "best_top1": best["test_top1"], "best_top5": best["test_top5"], "best_epoch": best["epoch"],
        "wall_s": round(sum(r["epoch_s"] for r in history), 3),
    }
    if teacher is not None:
        summary.update(teacher)
        summary["teacher_wrong_frac"] = sum(r["teacher_wrong_frac"] for r in history) / len(history)
    return summary


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


def settings_block(spec, method, device: torch.device, extra: str = "") -> list[str]:
    """The resolved settings of a run, printed before its first step."""
    hparams = ", ".join(f"{k}={v}" for k, v in sorted(spec.hparams.items())) or "none"
    milestones = ", ".join(map(str, spec.lr_milestones)) or "none"
    return [
        f"settings: method {spec.method} ({getattr(method, 'label', method.name)}), variant {spec.variant}, "
        f"hparams {hparams}",
        f"  recipe: epochs {spec.epochs}, batch {spec.batch_size}, lr {spec.lr} (x{spec.lr_gamma} after "
        f"epochs {milestones}), momentum {spec.momentum}, weight decay {spec.weight_decay}, seed {spec.seed}",
        f"  precision {spec.precision} (student forward "
        f"{'bf16 autocast' if spec.precision == 'bf16' else 'fp32'}; teacher and evaluation fp32), "
        f"device {device_name(device)}{extra}",
    ]


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
    if device.type == "cpu":
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return device.type


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


# --- trainer ------------------------------------------------------------------

@dataclass
class Batch:
    """One step's share of the data on this process.

    ``inputs`` maps each view the method needs to the normalized images of that view;
    ``loss_scale`` weights this process's batch-mean loss when its batch is not the even
    share of the global batch (the last partial batch): None means 1.
    """
    inputs: dict[str, torch.Tensor]
    target: torch.Tensor
    index: torch.Tensor
    view_ids: torch.Tensor | None = None
    loss_scale: float | None = None


class Trainer:
    """The epoch loop of one run; a dataset entry subclasses it (see the module docstring)."""

    dataset = "?"                       # summary.json's run.dataset
    kind = "student"                    # or "teacher" (a vanilla run that trains a teacher)
    views: tuple[str, ...] = ("weak",)  # the views this entry can render

    def __init__(self, spec, out_dir: Path, device: torch.device, model: torch.nn.Module,
                 forward_model: torch.nn.Module | None = None, is_main: bool = True):
        from sortkd.losses import get_method

        self.spec, self.out_dir, self.device, self.is_main = spec, Path(out_dir), device, is_main
        self.model = model                          # whose weights the checkpoint holds
        self.forward_model = forward_model or model  # what the step calls (a DDP wrapper, say)
        self.method = get_method(spec.method)
        self.hparams = spec.hparams  # complete: the spec was resolved once, at DAG construction
        self.method_views = tuple(getattr(self.method, "views", ("weak",)))
        self.autocast = autocast_for(device, spec.precision)
        fp32_means_fp32(device, spec.precision)
        self.memory_format = memory_format_for(spec.precision)
        self.progress = EpochProgress(spec.name, spec.epochs) if is_main else None
        self.method_state = self.method.make_state(self.hparams)
        if self.method_state is not None:
            self.method_state = self.method_state.to(device)
        params = list(model.parameters())
        if self.method_state is not None:
            params += list(self.method_state.parameters())
        self.optimizer = torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum,
                                         weight_decay=spec.weight_decay, nesterov=False)
        self.step_losses: list | None = None
        self.check_views()

    # --- what a dataset entry supplies ---

    def train_batches(self, epoch: int):
        raise NotImplementedError

    def teacher_logits(self, batch: Batch, view: str) -> torch.Tensor:
        raise NotImplementedError

    def evaluation_batches(self):
        raise NotImplementedError

    def samples_per_epoch(self) -> int:
        raise NotImplementedError

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def reduce_meter(self, meter: EpochMeter) -> tuple[dict[str, float], int]:
        return meter.read()

    def barrier(self) -> None:
        pass

    # Optional hooks, no-ops here.
    def prepare(self) -> None:
        """After resume, before the first epoch of this process's run."""

    def start_epoch(self, epoch: int) -> None:
        pass

    def after_backward(self) -> None:
        pass

    def after_step(self, step: int, batch: Batch) -> None:
        pass

    def epoch_extras(self) -> dict:
        return {}

    def checkpoint_extras(self) -> dict:
        return {}

    def restore_extras(self, ckpt: dict) -> None:
        pass

    def teacher_summary(self) -> dict | None:
        return None

    def provenance_extras(self) -> dict:
        return {}

    def settings_extras(self) -> str:
        return ""

    def finish(self, summary: dict) -> None:
        """Extra outputs of a complete run, on the main process (e.g. a teacher's model.pt)."""

    # --- the loop ---

    def note(self, text: str) -> None:
        if self.progress is not None:
            self.progress.note(text)

    def check_views(self) -> None:
        missing = [v for v in self.method_views if v not in self.views]
        if missing:
            raise ValueError(f"run {self.spec.name}: method {self.spec.method!r} needs the view(s) "
                             f"{', '.join(missing)}, but the {self.dataset} trainer supplies only "
                             f"{', '.join(self.views)}")

    def resume(self) -> list[dict]:
        ckpt = load_matching_checkpoint(self.out_dir / CHECKPOINT, self.spec.hash, self.note)
        if ckpt is None:
            return []
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.method_state is not None:
            self.method_state.load_state_dict(ckpt["method_state"])
        self.restore_extras(ckpt)
        return ckpt["history"]

    def evaluate(self) -> dict[str, float]:
        return evaluate_batches(self.model, self.evaluation_batches(), self.device, self.reduce_sum)

    def _per_view(self, values: dict):
        # Single-view methods take the logits themselves; multi-view methods a {view: logits} dict.
        return values["weak"] if self.method_views == ("weak",) else values

    def train_step(self, step: int, epoch: int, batch: Batch, schedule: dict, meter: EpochMeter) -> None:
        from sortkd.losses import compute_loss

        with self.autocast():
            student = {v: self.forward_model(batch.inputs[v]) for v in self.method_views}
        teacher = None
        if self.method.needs_teacher:
            teacher = {v: self.teacher_logits(batch, v) for v in self.method_views}
        if batch.target.shape[0] == 0:
            # This process got no sample of the last partial batch; it still joins the gradient
            # all-reduce (a zero gradient for every parameter) and adds nothing to the meter.
            loss = sum(logits.float().sum() for logits in student.values()) * 0.0
            if self.method_state is not None:
                loss = loss + sum(p.sum() for p in self.method_state.parameters()) * 0.0
            out = None
        else:
            student = {v: logits.float() for v, logits in student.items()}
            out = compute_loss(self.spec.method, self._per_view(student),
                               None if teacher is None else self._per_view(teacher), batch.target, epoch,
                               self.hparams, self.spec.variant, self.method_state, schedule)
            loss = out.total if batch.loss_scale is None else out.total * batch.loss_scale
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.after_backward()
        self.optimizer.step()
        if out is not None:
            meter.update(step, out.terms, out.total, out.diagnostics, student["weak"],
                         None if teacher is None else teacher["weak"], batch.target)
        if self.step_losses is not None:
            self.step_losses.append(loss.detach())
        self.after_step(step, batch)

    def run(self, stop_after_epoch: int | None = None) -> dict | None:
        """Train (or resume) the run; returns the summary, or None when stopped early on request."""
        started_at, t0 = now_iso(), time.time()
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        history = self.resume()
        for line in settings_block(self.spec, self.method, self.device, self.settings_extras()):
            self.note(line)
        self.prepare()
        board = None
        if self.is_main and getattr(self.spec, "tensorboard", False):
            from sortkd.training.tensorboard import TensorBoardLog

            board = TensorBoardLog(self.out_dir, self.spec.name)
            for row in history:  # the restored epochs: the curve is rewritten from the checkpoint's rows
                board.add_epoch(row)
        try:
            for epoch in range(len(history) + 1, self.spec.epochs + 1):
                row = self._epoch(epoch)
                history.append(row)
                if self.is_main:
                    self._save(epoch, history)
                    self.progress.epoch_done(epoch, row["epoch_s"], row)
                    if board is not None:
                        board.add_epoch(row)
                if stop_after_epoch is not None and stop_after_epoch <= epoch < self.spec.epochs:
                    self.barrier()
                    return None
        finally:
            if board is not None:
                board.close()
        summary = summarize(self.spec, history, self.dataset, self.kind, self.teacher_summary())
        if self.is_main:
            self.finish(summary)
            write_json(self.out_dir / SUMMARY, summary)
            record = collect(self.spec.to_dict(), self.spec.hash, self.spec.seed, self.device, started_at,
                             time.time() - t0)
            record["precision"] = precision_record(self.device, self.spec.precision)
            record.update(self.provenance_extras())
            write_json(self.out_dir / PROVENANCE, record)
            self.note(f"done: final top-1 {summary['final_top1']:.2f}%, best {summary['best_top1']:.2f}% "
                      f"(epoch {summary['best_epoch']})")
        self.barrier()
        return summary

    def open_epoch(self, epoch: int) -> tuple[float, dict, EpochMeter]:
        """The epoch's preamble: its LR and method schedule, train mode, a fresh meter."""
        lr, schedule = begin_epoch(self.optimizer, self.spec, epoch, self.method, self.hparams)
        self.forward_model.train()
        self.start_epoch(epoch)
        return lr, schedule, EpochMeter(self.device)

    def _epoch(self, epoch: int) -> dict:
        epoch_t0 = time.time()
        lr, schedule, meter = self.open_epoch(epoch)
        for step, batch in enumerate(self.train_batches(epoch)):
            self.train_step(step, epoch, batch, schedule, meter)
        train_metrics, bad_step = self.reduce_meter(meter)
        if bad_step >= 0:
            raise NonFiniteLoss(f"run {self.spec.name}: non-finite loss at epoch {epoch}, step {bad_step + 1} "
                                f"of {meter.steps}; no result written")
        test_metrics = self.evaluate()
        seconds = time.time() - epoch_t0
        return {"epoch": epoch, "lr": lr, **train_metrics, **test_metrics, **self.epoch_extras(),
                "epoch_s": round(seconds, 4), "images_per_s": round(self.samples_per_epoch() / seconds, 1)}

    def _save(self, epoch: int, history: list[dict]) -> None:
        save_checkpoint(self.out_dir / CHECKPOINT, {
            "spec_hash": self.spec.hash, "epoch": epoch, "history": history,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "method_state": self.method_state.state_dict() if self.method_state is not None else None,
            **self.checkpoint_extras(),
        })
        write_jsonl(self.out_dir / METRICS, history)
