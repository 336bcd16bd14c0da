"""GPU slot assignment: map Snakemake's counted `gpu` resource to concrete devices.

Snakemake counts how many GPU jobs run at once but never says which device a job should use.
Each GPU job therefore takes an exclusive slot among `len(devices) * jobs_per_device` slots and
sets CUDA_VISIBLE_DEVICES from it, before CUDA initialises. Slot i maps to `devices[i mod n]`,
so free slots fill the devices round-robin.

A slot is an `fcntl.flock` lock on one file in a lock directory. The kernel drops a flock lock
when the last descriptor to it closes, so a slot is freed when its job exits for any reason,
SIGKILL included; files are never deleted to release anything. Lock files are named after the
physical device (not the slot number), so two pipelines with different device lists that share
one lock directory still never put more than `jobs_per_device` jobs on a device.

Keep this module free of torch (and of anything that imports it): it must run before CUDA starts.

Notes for callers:
- If CUDA_VISIBLE_DEVICES is present in the environment (SLURM sets it per job), it is kept and
  no lock is taken. An empty value means "no GPU" and is kept too.
- The default lock directory is node-local (the system temp dir), which matches GPUs being
  per-node; a shared directory works only on file systems with working flock.
- Children forked by the job (e.g. data-loader workers) inherit the lock descriptor, so the slot
  stays taken until they exit too, which is what we want while they can touch the GPU.
- Locks are per open file, so the same process cannot take a slot twice: a second acquisition
  in one process waits like any other job would.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator, Sequence

ENV_VAR = "CUDA_VISIBLE_DEVICES"
SLOT_ENV = "SORTKD_GPU_SLOT"  # the slot numbers a job holds, for its provenance record
# While waiting, print a progress line at most this often (the logs are plain files).
WAIT_LOG_INTERVAL_S = 30.0
_LOG_PREFIX = "[gpu-slots]"


@dataclass(frozen=True)
class SlotLease:
    slots: tuple[int, ...]  # empty when the scheduler's preset CUDA_VISIBLE_DEVICES was kept
    devices: tuple[str, ...]  # the device ids this job may use
    cuda_visible_devices: str  # what CUDA_VISIBLE_DEVICES is now
    preset: bool  # True when an existing CUDA_VISIBLE_DEVICES was kept


def default_lock_dir() -> Path:
    """Per-user lock folder under the system temp dir (node-local, like the GPUs)."""
    return Path(tempfile.gettempdir()) / f"sortkd-gpu-slots-{os.getuid()}"


def _print_line(message: str) -> None:
    # Flush at once so the line shows up in Snakemake's log while the job is still waiting.
    print(message, flush=True)


@dataclass(frozen=True)
class _SlotTable:
    """The validated slot layout: slot i -> (device id, lock file name)."""
    devices: tuple[str, ...]
    lock_names: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.lock_names)

    def device_of(self, slot: int) -> str:
        return self.devices[slot % len(self.devices)]


def _normalise_devices(devices: Sequence[str | int]) -> tuple[str, ...]:
    if isinstance(devices, (str, bytes)):
        raise TypeError(f"devices must be a list of device ids, not the string {devices!r}")
    ids = []
    for raw in devices:
        text = str(raw).strip()
        if not text or "," in text:
            raise ValueError(f"invalid GPU device id {raw!r}: expected one non-empty id "
                             f"such as 0 or a GPU UUID, without commas")
        ids.append(text)
    if not ids:
        raise ValueError("no GPU devices configured: the devices list is empty")
    return tuple(ids)


def _build_table(devices: Sequence[str | int], jobs_per_device: int) -> _SlotTable:
    ids = _normalise_devices(devices)
    if isinstance(jobs_per_device, bool) or not isinstance(jobs_per_device, int) \
            or jobs_per_device < 1:
        raise ValueError(f"jobs_per_device must be an integer >= 1, got {jobs_per_device!r}")
    names = []
    seen_per_device: dict[str, int] = {}
    for slot in range(len(ids) * jobs_per_device):
        device = ids[slot % len(ids)]
        # A device listed twice simply gets more slots: number them per device so the lock
        # file names stay unique and keyed by the physical device.
        ordinal = seen_per_device.get(device, 0)
        seen_per_device[device] = ordinal + 1
        names.append(f"gpu-{urllib.parse.quote(device, safe='')}-{ordinal}.lock")
    return _SlotTable(devices=ids, lock_names=tuple(names))


def _check_count(count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count (GPUs per job) must be an integer >= 1, got {count!r}")


def _open_lock_file(path: Path) -> IO[str]:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise OSError(f"cannot open GPU slot lock file {path}: {exc.strerror}. Check that the "
                      f"lock directory is writable (config key for the lock dir)") from exc
    return os.fdopen(fd, "r+")


def _try_lock(path: Path) -> IO[str] | None:
    """Take the lock on `path` without blocking; None when another process holds it."""
    handle = _open_lock_file(path)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    except BaseException:
        handle.close()
        raise
    return handle


def _note_holder(handle: IO[str], slot: int, device: str) -> None:
    # Informational only (shown to waiting jobs); the lock itself is what matters.
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid={os.getpid()} host={socket.gethostname()} slot={slot} device={device} "
                 f"since={time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()


def _release(handles: Sequence[IO[str]]) -> None:
    for handle in handles:
        with contextlib.suppress(OSError, ValueError):
            handle.seek(0)
            handle.truncate()
            handle.flush()
        with contextlib.suppress(OSError, ValueError):
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


def _try_take(table: _SlotTable, lock_dir: Path,
              count: int) -> tuple[list[int], list[IO[str]]] | None:
    """Take `count` slots on distinct devices, all or nothing; None if not possible now.

    Any free slot of a device is as good as another, so taking the first free slot of each
    device in slot order finds a full set whenever one exists.
    """
    slots: list[int] = []
    handles: list[IO[str]] = []
    used_devices: set[str] = set()
    try:
        for slot in range(table.size):
            device = table.device_of(slot)
            if device in used_devices:
                continue
            handle = _try_lock(lock_dir / table.lock_names[slot])
            if handle is None:
                continue
            slots.append(slot)
            handles.append(handle)
            used_devices.add(device)
            if len(slots) == count:
                for taken, taken_handle in zip(slots, handles):
                    _note_holder(taken_handle, taken, table.device_of(taken))
                return slots, handles
    except BaseException:
        _release(handles)
        raise
    # Never keep a partial set while waiting: two multi-GPU jobs each holding half would
    # wait for each other forever.
    _release(handles)
    return None


def _current_holders(table: _SlotTable, lock_dir: Path) -> str:
    notes = []
    for name in table.lock_names:
        with contextlib.suppress(OSError):
            text = (lock_dir / name).read_text().strip()
            if text:
                notes.append(text)
    return "; ".join(notes) if notes else "unknown holders"


def _preset_lease(log: Callable[[str], None], count: int) -> SlotLease:
    value = os.environ[ENV_VAR]
    devices = tuple(part.strip() for part in value.split(",") if part.strip())
    shown = value if value else "'' (no GPU)"
    log(f"{_LOG_PREFIX} keeping the scheduler's {ENV_VAR}={shown}; no GPU slot taken")
    if len(devices) < count:
        log(f"{_LOG_PREFIX} warning: this job asks for {count} GPUs but {ENV_VAR} "
            f"lists {len(devices)}")
    return SlotLease(slots=(), devices=devices, cuda_visible_devices=value, preset=True)


def _acquire(devices: Sequence[str | int], jobs_per_device: int, lock_dir: str | Path | None,
             count: int, poll_s: float, timeout_s: float | None,
             log: Callable[[str], None]) -> tuple[SlotLease, list[IO[str]]]:
    table = _build_table(devices, jobs_per_device)
    _check_count(count)
    if not poll_s > 0:
        raise ValueError(f"poll_s must be > 0, got {poll_s!r}")
    if timeout_s is not None and timeout_s < 0:
        raise ValueError(f"timeout_s must be >= 0 or None, got {timeout_s!r}")
    if ENV_VAR in os.environ:
        return _preset_lease(log, count), []
    distinct = len(set(table.devices))
    if count > distinct:
        raise ValueError(f"a job asks for {count} GPUs but only {distinct} distinct device(s) "
                         f"are configured ({', '.join(table.devices)}); a multi-GPU job needs "
                         f"each GPU on a different device")

    directory = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    started = time.monotonic()
    last_log: float | None = None
    while True:
        taken = _try_take(table, directory, count)
        if taken is not None:
            break
        now = time.monotonic()
        waited = now - started
        if timeout_s is not None and waited >= timeout_s:
            raise TimeoutError(
                f"no free GPU slot after {waited:.1f}s (timeout {timeout_s}s): need {count} "
                f"slot(s) on distinct devices among {table.size} slots on devices "
                f"{','.join(table.devices)} x {jobs_per_device} job(s) each, lock dir "
                f"{directory}; held by: {_current_holders(table, directory)}")
        if last_log is None or now - last_log >= WAIT_LOG_INTERVAL_S:
            what = "waiting for a free GPU slot" if last_log is None else "still waiting"
            log(f"{_LOG_PREFIX} {what} ({waited:.0f}s so far; {table.size} slots on devices "
                f"{','.join(table.devices)}; held by: {_current_holders(table, directory)})")
            last_log = now
        sleep_s = poll_s
        if timeout_s is not None:
            sleep_s = max(0.0, min(poll_s, timeout_s - waited))
        time.sleep(sleep_s)

    slots, handles = taken
    chosen = tuple(table.device_of(slot) for slot in slots)
    visible = ",".join(chosen)
    os.environ[ENV_VAR] = visible
    log(f"{_LOG_PREFIX} took slot(s) {','.join(map(str, slots))} -> {ENV_VAR}={visible}")
    lease = SlotLease(slots=tuple(slots), devices=chosen, cuda_visible_devices=visible,
                      preset=False)
    return lease, handles


@contextlib.contextmanager
def acquire_gpu_slots(devices: Sequence[str | int], jobs_per_device: int = 1,
                      lock_dir: str | Path | None = None, count: int = 1, poll_s: float = 0.5,
                      timeout_s: float | None = None,
                      log: Callable[[str], None] = _print_line) -> Iterator[SlotLease]:
    """Hold `count` GPU slots on distinct devices for the duration of the with-block.

    Sets CUDA_VISIBLE_DEVICES for the block and restores the previous environment on exit.
    Waits while no slot is free; raises TimeoutError after `timeout_s` (None: wait forever).
    `lock_dir` None means `default_lock_dir()`.
    """
    lease, handles = _acquire(devices, jobs_per_device, lock_dir, count, poll_s, timeout_s, log)
    try:
        yield lease
    finally:
        if not lease.preset:
            os.environ.pop(ENV_VAR, None)
            _release(handles)


# Locks taken by hold_gpu_slots: kept open so the slot stays taken until the process exits.
_held_lease: SlotLease | None = None
_held_handles: list[IO[str]] = []


def hold_gpu_slots(devices: Sequence[str | int], jobs_per_device: int = 1,
                   lock_dir: str | Path | None = None, count: int = 1, poll_s: float = 0.5,
                   timeout_s: float | None = None,
                   log: Callable[[str], None] = _print_line) -> SlotLease:
    """Take GPU slots for the rest of this process's life (for a CLI's start-up).

    Same arguments as `acquire_gpu_slots`. The process exiting, however it exits, frees the
    slots. Calling it again in the same process returns the lease already held.
    """
    global _held_lease
    if _held_lease is not None:
        return _held_lease
    lease, handles = _acquire(devices, jobs_per_device, lock_dir, count, poll_s, timeout_s, log)
    _held_handles.extend(handles)
    _held_lease = lease
    return lease


def release_held_gpu_slots() -> None:
    """Free the slots taken by `hold_gpu_slots` before the process ends (rarely needed)."""
    global _held_lease
    if _held_lease is None:
        return
    if not _held_lease.preset:
        os.environ.pop(ENV_VAR, None)
    _release(_held_handles)
    _held_handles.clear()
    _held_lease = None


def hold_job_gpus(devices: str | Sequence[str | int], jobs_per_device: int = 1,
                  lock_dir: str | Path | None = None, count: int = 1,
                  log: Callable[[str], None] = _print_line) -> SlotLease:
    """The GPU set-up of one pipeline command: every CUDA command calls this, before CUDA starts.

    Holds `count` slots for the rest of the process (`hold_gpu_slots`; `devices` may be the CLI's
    comma-separated string), records the slots in SORTKD_GPU_SLOT and prints one line. CUDA reads
    CUDA_VISIBLE_DEVICES once, when it initialises, so a process that has already initialised
    CUDA is refused instead of silently using whatever device it started on.
    """
    torch = sys.modules.get("torch")  # never imported here: only asked if the caller did
    if torch is not None and torch.cuda.is_initialized():
        raise RuntimeError("CUDA was initialised before the GPU slot was taken, so the slot's "
                           f"{ENV_VAR} cannot take effect; take the slot before any CUDA call")
    if isinstance(devices, str):
        devices = devices.split(",")
    lease = hold_gpu_slots(devices, jobs_per_device, lock_dir, count, log=log)
    if lease.slots:
        os.environ[SLOT_ENV] = ",".join(map(str, lease.slots))
    else:  # a value inherited from a parent process names the parent's slots, not this job's
        os.environ.pop(SLOT_ENV, None)
    how = "kept from the scheduler" if lease.preset else f"slot {','.join(map(str, lease.slots))}"
    log(f"GPU: {ENV_VAR}={lease.cuda_visible_devices} ({how})")
    return lease
