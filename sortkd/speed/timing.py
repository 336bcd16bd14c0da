"""Timing of the project's training paths through ``train_run``.

``train_run`` calls its ``step_losses`` argument's ``append`` once at the end of every training
step, so :class:`StepClock` reads the clock there and the engine needs no timing code. Timed
windows skip the warm-up and never cross an epoch boundary (evaluation, checkpoint); on CUDA
the device is synchronized when a window opens and when it closes, never in between.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from sortkd.speed.workload import SEED, Prepared, Sizes, fast_precision, make_sync, torch_device

METHOD, VARIANT, LR = "kd", "sort", 0.05
PATHS = ("reference", "exact", "fast")
# Opt-in: MLKD + sort on the fast path (weak logits from the cache, the strong view's teacher
# online): what the second view costs against "fast".
OPTIONAL_PATHS = ("mlkd",)
MLKD = "mlkd"


class StopBenchmark(Exception):
    """Raised from the step hook once enough steps are timed: ends train_run early."""


class HostSyncGuard:
    """Makes any host sync inside a timed window an error, with CUDA's sync debug mode.

    The fast path must never wait for the GPU inside an epoch; a ``.item()``, a ``.cpu()`` or a
    data-dependent shape there raises ``RuntimeError`` naming the operation. It is a no-op on
    other devices, where ``windows`` stays 0: nothing was checked.
    """

    def __init__(self, device: torch.device):
        self.active = device.type == "cuda"
        self.windows = 0  # windows run with the check on
        self._saved: int | None = None

    def open(self) -> None:
        if self.active:
            self._saved = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("error")
            self.windows += 1

    def close(self) -> None:
        if self._saved is not None:
            torch.cuda.set_sync_debug_mode(self._saved)
            self._saved = None


class StepClock:
    """Reads the clock at the end of every training step.

    ``append`` makes it usable as train_run's ``step_losses``. Timed windows run from the end
    of one step to the end of a later step of the same epoch, after ``warmup`` steps; ``sync``
    is called only when a window opens or closes, and ``guard`` (``open``/``close``) is on
    exactly while a window is timed. With ``keep_losses`` every step's loss tensor is kept
    (on its device: no sync).
    """

    def __init__(self, steps_per_epoch: int, warmup: int, max_timed: int | None, sync, barrier=None,
                 guard=None, keep_losses: bool = False):
        if steps_per_epoch < 2:
            raise ValueError("an epoch needs at least 2 steps to time anything; enlarge the data "
                             "or shrink --batch-size")
        self.steps_per_epoch = steps_per_epoch
        self.warmup = max(1, warmup)  # no hook runs before the first step ends
        self.max_timed = max_timed
        self.sync = sync
        self.barrier = barrier
        self.guard = guard
        self.losses: list | None = [] if keep_losses else None
        self.done = 0
        self.timed = 0
        self.seconds = 0.0
        self.window_start: float | None = None
        self.window_steps = 0
        self.wall_first: float | None = None  # time.time() of the first window start
        self.wall_last: float | None = None   # ... and of the last window end

    def append(self, loss=None) -> None:
        if self.losses is not None:
            self.losses.append(loss)
        self.tick()

    def _full(self) -> bool:
        return self.max_timed is not None and self.timed >= self.max_timed

    def tick(self) -> None:
        in_epoch = self.done % self.steps_per_epoch
        self.done += 1
        last_of_epoch = in_epoch == self.steps_per_epoch - 1
        if self.window_start is None:
            if self.done >= self.warmup and not last_of_epoch and not self._full():
                self.sync()
                if self.barrier is not None:
                    self.barrier()
                    self.barrier = None
                if self.wall_first is None:
                    self.wall_first = time.time()
                if self.guard is not None:
                    self.guard.open()
                self.window_start = time.perf_counter()
                self.window_steps = 0
            return
        self.window_steps += 1
        reached = self.max_timed is not None and self.timed + self.window_steps >= self.max_timed
        if last_of_epoch or reached:
            self.close_window()
            self.sync()
            self.seconds += time.perf_counter() - self.window_start
            self.wall_last = time.time()
            self.timed += self.window_steps
            self.window_start = None
            if reached:
                raise StopBenchmark()

    def close_window(self) -> None:
        """Switch the guard off (also when the run dies inside a window)."""
        if self.guard is not None:
            self.guard.close()

    @property
    def ms_per_step(self) -> float:
        if self.timed == 0:
            raise RuntimeError("no step was timed: lower --warmup or raise --epochs/--steps")
        return 1000.0 * self.seconds / self.timed


def student_spec(prep: Prepared, teacher: str, student: str, device: str, sizes: Sizes, path: str,
                 out_name: str, threads: int | None):
    """The run spec of the ``exact`` path (online teacher, fp32), the ``fast`` path (cache) or
    the ``mlkd`` path (the fast path's settings with MLKD: cache for the weak view only)."""
    from sortkd.experiment.specs import RunSpec
    from sortkd.losses import resolve_hparams

    if path not in ("exact", "fast", "mlkd"):
        raise ValueError(f"train_run path {path!r} is not known; allowed: exact, fast, mlkd")
    fast = path in ("fast", "mlkd")
    method = MLKD if path == "mlkd" else METHOD
    return RunSpec(
        kind="student", name=f"bench/{out_name}", data=prep.data, arch=student,
        method=method, variant=VARIANT, hparams=resolve_hparams(method, {}), seed=SEED,
        epochs=sizes.epochs, batch_size=sizes.batch_size,
        lr=LR, pair=f"{teacher}-{student}", teacher_arch=teacher,
        teacher_dir=prep.teacher_dir, teacher_logits="cache" if fast else "online",
        cache_dir=prep.cache_dir if fast else None, device=device,
        precision=fast_precision(device) if fast else "exact", threads=threads,
    )


def time_train_run(prep: Prepared, teacher: str, student: str, device: str, sizes: Sizes, path: str,
                   workdir: Path, out_name: str | None = None, threads: int | None = None, barrier=None,
                   check_syncs: bool = False, keep_losses: bool = False) -> dict:
    """ms/step of one train_run path. ``check_syncs``: a host sync inside a timed window raises
    (CUDA; ``host_sync_windows`` counts the windows checked). ``keep_losses``: ``losses`` holds
    every step's total loss, read once after the run."""
    from sortkd.training.cifar import train_run

    out_name = out_name or path
    spec = student_spec(prep, teacher, student, device, sizes, path, out_name, threads)
    dev = torch_device(device)
    guard = HostSyncGuard(dev) if check_syncs else None
    clock = StepClock(sizes.steps_per_epoch, sizes.warmup, sizes.steps, make_sync(dev), barrier,
                      guard=guard, keep_losses=keep_losses)
    out_dir = Path(workdir) / "runs" / out_name
    shutil.rmtree(out_dir, ignore_errors=True)  # never resume a previous benchmark's checkpoint
    try:
        with contextlib.redirect_stdout(sys.stderr):
            train_run(spec, out_dir, step_losses=clock)
    except StopBenchmark:
        pass
    finally:
        clock.close_window()
    epoch_s = None
    metrics = out_dir / "metrics.jsonl"
    if metrics.exists():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        if rows:
            epoch_s = rows[-1]["epoch_s"]
    precision_note = ", bf16 autocast + channels_last" if spec.precision == "bf16" else ", precision exact"
    if path == "fast":
        what = f"train_run, logit cache ({prep.cache_dtype})" + precision_note
    elif path == "mlkd":
        what = f"train_run MLKD, weak: cache ({prep.cache_dtype}), strong: online teacher" + precision_note
    else:
        what = "train_run, online teacher, precision exact"
    result = {"ms_per_step": clock.ms_per_step, "timed_steps": clock.timed, "epoch_s": epoch_s,
              "what": what, "precision": spec.precision, "teacher_logits": spec.teacher_logits,
              "wall_first": clock.wall_first, "wall_last": clock.wall_last}
    if check_syncs:
        result["host_sync_windows"] = guard.windows
    if keep_losses:
        result["losses"] = torch.stack(clock.losses).double().cpu().tolist() if clock.losses else []
    return result


def time_strong_view(prep: Prepared, teacher: str, device: str, sizes: Sizes, batches: int = 20) -> dict:
    """What the strong view adds per step, measured alone on the benchmark's data and teacher:
    rendering it (crop + flip, RandAugment + Cutout, normalization) and the teacher's fp32
    forward on it. The first two batches warm up and are not timed."""
    from sortkd.data.cifar import load_arrays
    from sortkd.data.views import DeviceCifar
    from sortkd.teachers import load_teacher
    from sortkd.training.cifar import strong_epoch_draws
    from sortkd.training.loop import fp32_logits

    dev = torch_device(device)
    sync = make_sync(dev)
    data = DeviceCifar(load_arrays(Path(prep.data)), dev)
    model, _ = load_teacher(Path(prep.teacher_dir), teacher, dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    views, draws = strong_epoch_draws(SEED, 0, data.num_train, data.num_views)
    views, draws = views.to(dev), draws.to(dev)
    order = torch.randperm(data.num_train, generator=torch.Generator().manual_seed(SEED)).to(dev)
    render_s = forward_s = 0.0
    timed = 0
    for step in range(batches + 2):
        first = (step * sizes.batch_size) % max(data.num_train - sizes.batch_size + 1, 1)
        index = order[first:first + sizes.batch_size]
        sync()
        t0 = time.perf_counter()
        images = data.strong_batch(index, views[index], draws[index])
        sync()
        t1 = time.perf_counter()
        fp32_logits(model, images.contiguous(memory_format=torch.channels_last) if dev.type == "cuda" else images)
        sync()
        t2 = time.perf_counter()
        if step >= 2:
            render_s, forward_s, timed = render_s + t1 - t0, forward_s + t2 - t1, timed + 1
    return {"batches": timed, "batch_size": sizes.batch_size,
            "render_ms_per_batch": 1000.0 * render_s / timed,
            "teacher_forward_ms_per_batch": 1000.0 * forward_s / timed}
