"""`python -m sortkd status`: where the grid is, what runs, what failed, what it cost, what is left.

It only reads the results folder: the run folders (metrics.jsonl, summary.json) and the job
logs. It takes no lock and writes nothing, so it is safe while Snakemake runs, locally or on
Slurm over a shared file system. Every file may be half-written or replaced while it is read:
a line or file that does not parse counts as not there yet.

State of a run (first match wins):
- ``done``: summary.json is there (the trainer writes it last);
- ``failed``: its job log holds an error (``sortkd <command>: error: ...`` or a traceback);
- ``running`` / ``stalled``: it has epochs in metrics.jsonl or a job log, and no error; stalled
  when nothing (metrics or log) changed for STALL_FACTOR times its usual epoch time
  (at least STALL_FLOOR_S: start-up and file-system timestamp caching need some slack);
- ``pending``: nothing yet.

Costs are device-hours: job seconds (the runs' own ``epoch_s``) times the devices a job holds,
from the config's compute settings: GPUs per job / jobs per device on CUDA (a job holds a slot,
a slot is 1/jobs_per_device of a GPU), CPU threads per job on the CPU (then CPU-hours). The
time left of an unfinished run comes from its own recent epochs, else from the measured epochs
of runs of the same pair, else of the same student architecture, else (CUDA only) from the
``epoch_seconds`` of ``results/gpu_check.json`` written by ``python -m sortkd gpu-check``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

STALL_FACTOR = 3.0
STALL_FLOOR_S = 60.0
RECENT_EPOCHS = 5          # the trainer's own ETA averages the same window
LOG_TAIL_BYTES = 256 * 1024
ERROR_WIDTH = 200          # the text view cuts longer error lines (--json has them whole)
GPU_CHECK_FILE = "gpu_check.json"
GPU_CHECK_HINT = "`python -m sortkd gpu-check` on the GPU box (it writes results/gpu_check.json, which status reads)"
STATES = ("done", "running", "stalled", "failed", "pending")
GROUPS = ("teachers", "cifar", "imagenet")


# --- reading the results folder -------------------------------------------------------

def _read_text(path: Path, tail: int | None = None) -> str | None:
    # OSError covers a missing file and NFS's stale handle of a file replaced mid-read.
    try:
        with open(path, "rb") as handle:
            if tail is not None:
                handle.seek(0, 2)
                handle.seek(max(0, handle.tell() - tail))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def read_json_quiet(path: Path):
    text = _read_text(path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def read_metrics(path: Path) -> list[dict]:
    """The complete epoch rows of a metrics.jsonl (a torn last line is left out)."""
    text = _read_text(path)
    rows = []
    for line in (text or "").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int) and \
                isinstance(row.get("epoch_s"), (int, float)):
            rows.append(row)
    return rows


_PROGRESS = re.compile(r"\] epoch (\d+)/(\d+),")
_CLI_ERROR = re.compile(r"^sortkd [\w-]+: error: ")
_RANK_PREFIX = re.compile(r"^\[(?:rank|default)\d+\]:\s?")   # torchrun's per-rank prefix


def log_epochs_total(text: str | None) -> int | None:
    """E of the last ``[run] epoch e/E, ...`` progress line of a job log."""
    matches = _PROGRESS.findall(text or "")
    return int(matches[-1][1]) if matches else None


def log_error(text: str | None) -> str | None:
    """The first line of the error in a job log: the CLI's one-line error if there is one,
    else the exception line of the last Python traceback, else None."""
    lines = [_RANK_PREFIX.sub("", line.rstrip()) for line in (text or "").splitlines()]
    for line in lines:
        if _CLI_ERROR.match(line):
            return line
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    if starts:
        for line in lines[starts[-1] + 1:]:
            if line and not line[0].isspace():
                return line
    return None


def read_gpu_check(path: Path) -> dict | None:
    """``{"epoch_seconds": {arch: s}, "jobs_per_device_recommended": n, ...}`` or None."""
    data = read_json_quiet(path)
    if not isinstance(data, dict) or not isinstance(data.get("epoch_seconds"), dict):
        return None
    return data


# --- what should run ---------------------------------------------------------------------

@dataclass
class RunTarget:
    group: str                 # teachers | cifar | imagenet
    name: str                  # <pair>/<method>/<variant>/seed<k>, or the teacher's arch
    arch: str | None           # the network trained (the student's architecture)
    pair: str | None
    method: str
    variant: str
    seed: int | None
    run_dir: Path
    log: Path
    epochs: int | None         # None: read from the job log
    devices: float             # GPUs (or CPU threads) one job holds


@dataclass
class Source:
    experiment: str
    out: Path
    targets: list[RunTarget]
    device: str | None         # cuda | cpu | None (unknown: --experiment before any run ended)
    unit: str                  # GPU-hours | CPU-hours | device-hours
    devices_note: str
    gpu_check_path: Path
    slots: int | None = None   # concurrent jobs the config allows (local CUDA), for a plan
    jobs_per_device: int | None = None
    grid_note: str = ""
    from_config: bool = True


def load_config(path: Path) -> dict:
    """The config settled exactly as the workflow settles it (defaults, coercion, methods)."""
    from sortkd.experiment.config import load_config as settled_config

    if not Path(path).is_file():
        raise FileNotFoundError(f"config {path} does not exist; pass --config FILE or --experiment DIR")
    return settled_config(path)


def source_from_config(config: dict, root: Path = Path("."), config_name: str = "") -> Source:
    from sortkd.experiment.grid import Grid, ImageNetGrid

    root = Path(root)
    grid = Grid(config, root=root)
    imagenet = ImageNetGrid(config, grid.out, root=root)
    compute = config["compute"]
    out = root / grid.out
    cuda = compute["device"] == "cuda"
    per_device = int(compute.get("jobs_per_device", 1))
    threads = int(compute.get("threads") or 1)

    def share(gpus: int, cpu_threads: int) -> float:
        return gpus / per_device if cuda else float(cpu_threads)

    targets = []
    for arch in grid.teachers_by_source("train"):
        spec = grid.teacher_spec(arch)
        targets.append(RunTarget("teachers", arch, arch, None, "vanilla", "base", spec.seed,
                                 root / grid.teacher_dir(arch), out / "logs" / "teacher_train" / f"{arch}.log",
                                 spec.epochs, share(grid.gpus_per_job, threads)))
    for run in grid.student_runs():
        spec = grid.student_spec(run)
        targets.append(RunTarget("cifar", run.path, spec.arch, run.pair, run.method, run.variant, run.seed,
                                 root / grid.student_dir(run), out / "logs" / "student_train" / f"{run.path}.log",
                                 spec.epochs, share(grid.gpus_per_job, threads)))
    for run in imagenet.runs():
        spec = imagenet.spec_dict(run)
        targets.append(RunTarget("imagenet", run.path, spec["arch"], run.pair, run.method, run.variant,
                                 run.seed, root / imagenet.run_dir(run),
                                 out / "logs" / "imagenet_student" / f"{run.path}.log", int(spec["epochs"]),
                                 share(imagenet.gpu_resource, int(imagenet.section.get("threads", 1)))))
    if cuda:
        devices_note = (f"{plural(grid.gpus_per_job, 'GPU')} per job, {plural(per_device, 'job')} per GPU"
                        + (f"; ImageNet {plural(imagenet.gpus_per_run, 'GPU')} per run" if imagenet.enabled else ""))
    else:
        devices_note = f"{threads} CPU thread{'s' if threads > 1 else ''} per job"
    grid_note = " × ".join(plural(len(items), word) for items, word in (
        (grid.pairs, "pair"), (grid.methods, "method"), (config["variants"], "variant"), (grid.seeds, "seed")))
    if grid.method_pairs:
        grid_note += " (" + ", ".join(f"{m} on {plural(len(p), 'pair')}" for m, p in grid.method_pairs.items()) + ")"
    return Source(experiment=grid.experiment, out=out, targets=targets, device=compute["device"],
                  unit="GPU-hours" if cuda else "CPU-hours", devices_note=devices_note,
                  gpu_check_path=out.parent / GPU_CHECK_FILE,
                  slots=len(compute.get("gpu_devices") or [0]) * per_device if cuda else None,
                  jobs_per_device=per_device if cuda else None,
                  grid_note=grid_note + (f" (config {config_name})" if config_name else ""))


def _runs_on_disk(out: Path, folder: str, log_rule: str) -> dict[str, tuple[Path, Path]]:
    found = set()
    for run_dir in (out / folder).glob("*/*/*/seed*"):
        if run_dir.is_dir():
            found.add(run_dir.relative_to(out / folder).as_posix())
    for log in (out / "logs" / log_rule).glob("*/*/*/seed*.log"):
        found.add(log.relative_to(out / "logs" / log_rule).as_posix()[:-len(".log")])
    return {name: (out / folder / name, out / "logs" / log_rule / f"{name}.log") for name in sorted(found)}


def source_from_experiment(out: Path) -> Source:
    """The runs found under results/<experiment> (no grid: nothing is known to be pending)."""
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"--experiment {out}: no such folder")
    targets = []
    teachers = {p.name for p in (out / "teachers").glob("*") if (p / "metrics.jsonl").exists()}
    teachers |= {p.stem for p in (out / "logs" / "teacher_train").glob("*.log")}
    for arch in sorted(teachers):
        targets.append(RunTarget("teachers", arch, arch, None, "vanilla", "base", None, out / "teachers" / arch,
                                 out / "logs" / "teacher_train" / f"{arch}.log", None, 1.0))
    for group, folder, rule in (("cifar", "students", "student_train"),
                                ("imagenet", "imagenet/students", "imagenet_student")):
        for name, (run_dir, log) in _runs_on_disk(out, folder, rule).items():
            pair, method, variant, seed = name.split("/")
            targets.append(RunTarget(group, name, pair.rsplit("-", 1)[-1], pair, method, variant,
                                     int(seed[len("seed"):]), run_dir, log, None, 1.0))
    # The device, from what the finished runs recorded.
    devices = {((read_json_quiet(t.run_dir / "provenance.json") or {}).get("config") or {}).get("device")
               for t in targets} - {None}
    device = devices.pop() if len(devices) == 1 else None
    unit = {"cuda": "GPU-hours", "cpu": "CPU-hours"}.get(device, "device-hours")
    return Source(experiment=out.name, out=out, targets=targets, device=device, unit=unit,
                  devices_note="1 device per job assumed; --config gives the real count",
                  gpu_check_path=out.parent / GPU_CHECK_FILE, from_config=False)


# --- the state of each run -----------------------------------------------------------------

@dataclass
class RunStatus:
    group: str
    name: str
    pair: str | None
    method: str
    variant: str
    seed: int | None
    arch: str | None
    state: str
    run_dir: str
    log: str
    epochs_done: int = 0
    epochs_total: int | None = None
    last_epoch_s: float | None = None
    epoch_s: float | None = None          # usual epoch time: its recent epochs, else the estimate
    epoch_s_source: str | None = None     # own | pair | arch | gpu-check
    idle_s: float | None = None           # since the last sign of life (metrics or log)
    eta_s: float | None = None
    best_top1: float | None = None
    final_top1: float | None = None
    best_epoch: int | None = None
    error: str | None = None
    spent_s: float = 0.0                  # job seconds so far (sum of epoch_s)
    left_s: float | None = None           # job seconds still needed (None: no estimate)
    devices: float = 1.0
    epoch_times: list = field(default_factory=list, repr=False)


def read_run(target: RunTarget, now: float) -> RunStatus:
    """What the files say about one run (estimates from other runs come later)."""
    rows = read_metrics(target.run_dir / "metrics.jsonl")
    summary = read_json_quiet(target.run_dir / "summary.json")
    log_text = _read_text(target.log, tail=LOG_TAIL_BYTES)
    status = RunStatus(group=target.group, name=target.name, pair=target.pair, method=target.method,
                       variant=target.variant, seed=target.seed, arch=target.arch, state="pending",
                       run_dir=str(target.run_dir), log=str(target.log), devices=target.devices)
    status.epoch_times = [float(r["epoch_s"]) for r in rows]
    status.epochs_done = len(rows)
    status.epochs_total = target.epochs or log_epochs_total(log_text)
    status.spent_s = float(sum(status.epoch_times))
    if rows:
        status.last_epoch_s = status.epoch_times[-1]
        recent = status.epoch_times[-RECENT_EPOCHS:]
        status.epoch_s, status.epoch_s_source = sum(recent) / len(recent), "own"
    if isinstance(summary, dict) and "best_top1" in summary:
        status.state = "done"
        status.best_top1, status.final_top1 = summary.get("best_top1"), summary.get("final_top1")
        status.best_epoch = summary.get("best_epoch")
        status.epochs_done = int(summary.get("epochs", status.epochs_done))
        status.epochs_total = status.epochs_total or status.epochs_done
        if not rows:
            status.spent_s = float(summary.get("wall_s", 0.0))
        status.left_s = 0.0
        return status
    status.error = log_error(log_text)
    if status.error is not None:
        status.state = "failed"
    elif rows or log_text is not None:
        status.state = "running"
        seen = [t for t in (_mtime(target.run_dir / "metrics.jsonl"), _mtime(target.log)) if t is not None]
        status.idle_s = max(0.0, now - max(seen)) if seen else None
    return status


def stall_threshold(epoch_s: float) -> float:
    return max(STALL_FACTOR * epoch_s, STALL_FLOOR_S)


def _pool_keys(run: RunStatus) -> list[tuple[tuple, str]]:
    """Where a run's epoch time may come from, closest first (teachers have no pair)."""
    keys = [((run.group, "pair", run.pair), "pair")] if run.pair is not None else []
    return keys + ([((run.group, "arch", run.arch), "arch")] if run.arch is not None else [])


def _estimate(status: RunStatus, pooled: dict, gpu_check: dict | None) -> tuple[float | None, str | None]:
    for key, source in _pool_keys(status):
        times = pooled.get(key)
        if times:
            return sum(times) / len(times), source
    if gpu_check is not None and status.group != "imagenet":
        value = gpu_check["epoch_seconds"].get(status.arch)
        if isinstance(value, (int, float)) and value > 0:
            return float(value), "gpu-check"
    return None, None


def finish_estimates(runs: list[RunStatus], gpu_check: dict | None) -> None:
    """Fill epoch times, ETAs, stalls and the job seconds left, from measured epochs."""
    pooled: dict[tuple, list[float]] = {}
    for run in runs:
        for key, _ in _pool_keys(run):
            pooled.setdefault(key, []).extend(run.epoch_times)
    # Without a config, a run's planned epochs come from its log; one that failed before its
    # first epoch takes those of the other runs of its pair.
    planned: dict[tuple, int] = {}
    for run in runs:
        if run.epochs_total is not None:
            planned.setdefault((run.group, run.pair), run.epochs_total)
    for run in runs:
        if run.state == "done":
            continue
        if run.epochs_total is None:
            run.epochs_total = planned.get((run.group, run.pair))
        if run.epoch_s is None:
            run.epoch_s, run.epoch_s_source = _estimate(run, pooled, gpu_check)
        t, total = run.epoch_s, run.epochs_total
        if t is None:
            continue
        if run.state == "running" and run.idle_s is not None and run.idle_s > stall_threshold(t):
            run.state = "stalled"
        if total is None:
            continue
        remaining = max(total - run.epochs_done, 0)
        run.left_s = remaining * t
        if run.state == "running":
            # The epoch under way has had idle_s already: credit it, by at most one epoch.
            run.eta_s = max(remaining * t - (run.idle_s or 0.0), max(remaining - 1, 0) * t)
            run.left_s = run.eta_s


# --- totals ------------------------------------------------------------------------------

@dataclass
class Totals:
    counts: dict
    unit: str
    devices_note: str
    spent_h: float
    left_h: float
    without_estimate: int
    missing: list              # why some runs have no estimate, e.g. "resnet8: no measured epoch"
    running: int
    wall_left_s: float | None
    wall_concurrency: int | None
    wall_note: str


def totals(runs: list[RunStatus], source: Source) -> Totals:
    counts = {state: sum(r.state == state for r in runs) for state in STATES}
    spent_h = sum(r.spent_s * r.devices for r in runs) / 3600
    open_runs = [r for r in runs if r.state != "done"]
    known = [r for r in open_runs if r.left_s is not None]
    left_h = sum(r.left_s * r.devices for r in known) / 3600
    missing = sorted({f"{'ImageNet ' if r.group == 'imagenet' else ''}{r.arch}: "
                      + ("no measured epoch" if r.epoch_s is None else "epoch count unknown")
                      for r in open_runs if r.left_s is None})
    running = [r for r in runs if r.state == "running"]
    job_seconds_left = sum(r.left_s for r in known)
    wall, concurrency, note = None, None, ""
    if running:
        concurrency = len(running)
        # The running jobs must finish; the rest is shared among as many jobs as run now.
        wall = max(job_seconds_left / concurrency, max((r.eta_s or 0.0) for r in running))
        note = f"at {plural(concurrency, 'concurrent job')} (as now)"
    elif source.slots and job_seconds_left:
        concurrency = source.slots
        wall = job_seconds_left / concurrency
        note = f"no job is running now; at {concurrency} concurrent jobs (gpu_devices × jobs_per_device)"
    elif open_runs:
        note = "no job is running now"
    return Totals(counts=counts, unit=source.unit, devices_note=source.devices_note, spent_h=spent_h,
                  left_h=left_h, without_estimate=len(open_runs) - len(known), missing=missing,
                  running=len(running), wall_left_s=wall, wall_concurrency=concurrency, wall_note=note)


@dataclass
class Report:
    experiment: str
    out: str
    generated_at: str
    grid_note: str
    runs: list
    totals: Totals
    gpu_check: str | None           # the path read, if any
    gpu_check_jobs_per_device: int | None
    config_jobs_per_device: int | None
    nothing_started: bool
    from_config: bool
    device: str | None

    def to_dict(self) -> dict:
        d = asdict(self)
        for run in d["runs"]:
            run.pop("epoch_times", None)
        return d


def collect(source: Source, now: float | None = None) -> Report:
    now = time.time() if now is None else now
    gpu_check = read_gpu_check(source.gpu_check_path) if source.device == "cuda" else None
    runs = [read_run(t, now) for t in source.targets]
    finish_estimates(runs, gpu_check)
    return Report(
        experiment=source.experiment, out=str(source.out),
        generated_at=dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat(timespec="seconds"),
        grid_note=source.grid_note, runs=runs, totals=totals(runs, source),
        gpu_check=str(source.gpu_check_path) if gpu_check is not None else None,
        gpu_check_jobs_per_device=(gpu_check or {}).get("jobs_per_device_recommended"),
        config_jobs_per_device=source.jobs_per_device,
        nothing_started=bool(runs) and all(r.state == "pending" for r in runs),
        from_config=source.from_config, device=source.device)


# --- text -----------------------------------------------------------------------------

def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    return str(dt.timedelta(seconds=int(round(max(seconds, 0.0)))))


def hours(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.3f}"


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f} s" if value >= 1 else f"{value:.2f} s"


def run_line(run: RunStatus) -> str:
    label = run.name if run.group == "teachers" else f"{run.variant:<5} seed{run.seed}"
    head = f"  {label:<12} {run.state:<8}"
    epochs = f"epoch {run.epochs_done}/{run.epochs_total if run.epochs_total is not None else '?'}"
    if run.state == "done":
        best_at = f" (epoch {run.best_epoch})" if run.best_epoch is not None else ""
        return f"{head} best {run.best_top1:.2f}{best_at}  final {run.final_top1:.2f}  ({run.epochs_done} epochs)"
    if run.state == "running":
        if run.epochs_done == 0:
            return f"{head} {epochs} (first epoch under way)  ETA {duration(run.eta_s)}"
        return f"{head} {epochs}  last {_seconds(run.last_epoch_s)}/epoch  ETA {duration(run.eta_s)}"
    if run.state == "stalled":
        return (f"{head} {epochs}  no new epoch for {duration(run.idle_s)} (usual {_seconds(run.epoch_s)})"
                f"  log: {run.log}")
    if run.state == "failed":
        error = run.error if len(run.error) <= ERROR_WIDTH else run.error[:ERROR_WIDTH - 1] + "…"
        return f"{head} {epochs}  {error}  log: {run.log}"
    return head.rstrip()


def _group_title(run: RunStatus) -> str:
    if run.group == "teachers":
        return "teachers (trained here)"
    return f"{'ImageNet ' if run.group == 'imagenet' else ''}{run.pair} · {run.method}"


def _left_text(t: Totals) -> str:
    if not any(t.counts[s] for s in STATES if s != "done"):
        return "nothing left"
    text = f"≈ {hours(t.left_h)} left"
    if t.without_estimate:
        text += f" + {plural(t.without_estimate, 'run')} without an estimate yet ({'; '.join(t.missing)})"
    return text


def plan_lines(report: Report) -> list[str]:
    t = report.totals
    runs = report.runs
    counts = {g: sum(r.group == g for r in runs) for g in GROUPS}
    parts = [f"{counts['cifar']} CIFAR student runs"]
    if counts["teachers"]:
        parts.insert(0, f"{counts['teachers']} teacher runs")
    if counts["imagenet"]:
        parts.append(f"{counts['imagenet']} ImageNet runs")
    lines = [f"nothing has run yet. The plan: {len(runs)} training jobs ({', '.join(parts)}),",
             "  plus the short data, teacher, logit-export and report steps."]
    by_arch: dict[tuple, list[RunStatus]] = {}
    for run in runs:
        by_arch.setdefault((run.group, run.arch, run.epochs_total, run.epoch_s), []).append(run)
    estimated = [k for k in by_arch if k[3] is not None]
    if estimated:
        lines.append(f"estimated {t.unit}: {hours(t.left_h)}"
                     + (f" (from {report.gpu_check})" if report.gpu_check else "")
                     + f"; {t.devices_note}")
        for (group, arch, epochs, epoch_s), members in by_arch.items():
            if epoch_s is None:
                continue
            device_h = sum(r.left_s * r.devices for r in members) / 3600
            lines.append(f"  {arch:<12} {len(members):>4} runs × {epochs} epochs × {epoch_s:.2f} s/epoch"
                         f" = {hours(device_h)} {t.unit}")
        if t.without_estimate:
            lines.append(f"  no figure for {plural(t.without_estimate, 'run')} ({'; '.join(t.missing)}):"
                         f" not in {report.gpu_check}")
        if t.wall_left_s is not None:
            lines.append(f"wall time ≈ {duration(t.wall_left_s)} at {t.wall_concurrency} concurrent jobs")
        if (report.gpu_check_jobs_per_device and report.config_jobs_per_device
                and report.gpu_check_jobs_per_device != report.config_jobs_per_device):
            lines.append(f"gpu-check recommends compute.jobs_per_device: {report.gpu_check_jobs_per_device}"
                         f" (the config has {report.config_jobs_per_device})")
    elif report.device == "cuda":
        lines.append(f"no estimate of the {t.unit} exists yet. To get one, run {GPU_CHECK_HINT}.")
    else:
        lines.append(f"no estimate of the {t.unit} exists yet: it appears once the first epochs are measured.")
    return lines


def render_text(report: Report) -> str:
    lines = [f"sortkd status · experiment {report.experiment} · {report.out} · {report.generated_at}"]
    if report.grid_note:
        lines.append(f"grid: {report.grid_note}")
    if not report.runs:
        lines.append("no runs found" + ("" if report.from_config else
                                          "; with --config the grid's pending runs and the plan are shown"))
        return "\n".join(lines) + "\n"
    if report.nothing_started:
        return "\n".join(lines + plan_lines(report)) + "\n"
    title = None
    for run in report.runs:
        if _group_title(run) != title:
            title = _group_title(run)
            lines += ["", title]
        lines.append(run_line(run))
    t = report.totals
    c = t.counts
    lines += ["",
              f"runs: {c['done']} done, {c['running']} running, {c['stalled']} stalled, {c['failed']} failed, "
              f"{c['pending']} pending ({len(report.runs)} in all)",
              f"{t.unit}: {hours(t.spent_h)} spent, {_left_text(t)} ({t.devices_note})"]
    if t.wall_left_s is not None:
        lines.append(f"wall time left ≈ {duration(t.wall_left_s)} {t.wall_note}")
    elif t.wall_note:
        lines.append(f"wall time left: unknown ({t.wall_note})")
    if c["failed"]:
        lines.append("failed runs resume from their last epoch when the workflow is rerun after the fix")
    return "\n".join(lines) + "\n"


# --- command ---------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--config", default=None,
                       help="the workflow config (default config.yaml): shows the whole grid, pending runs "
                            "included; run it from the folder Snakemake runs in")
    where.add_argument("--experiment", default=None, metavar="DIR",
                       help="a results folder (results/<experiment>): shows the runs found there")
    parser.add_argument("--watch", type=float, default=None, metavar="SECONDS",
                        help="print again every SECONDS until every run is done (Ctrl-C stops)")
    parser.add_argument("--json", action="store_true", help="one JSON object per report, for scripts")


def _source(args) -> Source:
    if args.experiment:
        return source_from_experiment(Path(args.experiment))
    path = Path(args.config or "config.yaml")
    return source_from_config(load_config(path), Path("."), config_name=str(path))


def run(args) -> int:
    if args.watch is not None and args.watch <= 0:
        raise ValueError(f"--watch: {args.watch} is not allowed; give a number of seconds > 0")
    source = _source(args)
    clear = args.watch is not None and not args.json and sys.stdout.isatty()
    try:
        while True:
            report = collect(source)
            text = json.dumps(report.to_dict(), sort_keys=True) + "\n" if args.json else render_text(report)
            if clear:
                text = "\033[H\033[2J" + text
            elif args.watch is not None and not args.json:
                text += "\n"
            sys.stdout.write(text)
            sys.stdout.flush()
            finished = report.runs and all(r.state == "done" for r in report.runs)
            if args.watch is None or finished:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def register(subparsers) -> None:
    """Adds the ``status`` command to the CLI's subparsers (the one line cli.py needs)."""
    parser = subparsers.add_parser(
        "status", help="where the grid is: run states, ETA, GPU-hours spent and left",
        description="Reads results/ only (no lock, no writes): safe while Snakemake runs, locally or on "
                    "Slurm. One line per run (done, running, stalled, failed, pending), then the totals; "
                    "before the first job, the plan (job count and estimated GPU-hours).")
    add_arguments(parser)
    parser.set_defaults(func=run)
