#!/usr/bin/env python
"""Training-speed benchmark: the reference-style KD loop against the project's two paths.

In one process, on the same generated CIFAR-format data and the same teacher -> student pair
(default resnet32x4 -> resnet8x4, KD with the sort variant, batch 64), it times

* ``reference``: the loop of the public KD code: a CIFAR100-like Dataset over the uint8 arrays
  returning PIL images, ``RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor +
  Normalize`` in a ``DataLoader(num_workers=2, shuffle=True)``, fp32, the teacher forward every
  step (eval mode, no_grad), ``sort_logits`` + KD loss, an SGD step and a ``.item()`` every step;
* ``exact``: ``train_run`` with the teacher online and precision ``exact``;
* ``fast``: ``train_run`` with the teacher-logit cache (exported first, timed on its own) and,
  on CUDA, precision ``bf16`` (autocast + channels_last). On the CPU the cache is float32 and
  the precision stays ``exact`` (bf16 is CUDA-only).

The project's paths are timed through ``train_run``'s ``step_losses`` argument: it is called
once at the end of every training step, so a small object with an ``append`` method reads the
clock there. Warm-up steps are not timed, nor is any interval that crosses an epoch boundary
(evaluation, checkpoint, the DataLoader's worker start-up); on CUDA the device is synchronized
at the start and the end of every timed window, never in between. Per-epoch wall times
(``epoch_s``: train_run's own ``epoch_s``, which includes the test evaluation and the checkpoint;
for the reference loop the training epoch only) are reported when a whole epoch ran.

Output: a table, then ONE JSON line, printed last on stdout (engine progress goes to stderr).

    python benchmarks/train_speed.py --device cpu --quick
    python benchmarks/train_speed.py --device cuda
    python benchmarks/train_speed.py --device cuda --concurrency 1,2,4,8

``--concurrency`` launches N processes of the fast path at once (after one shared export) and
reports the aggregate steps/s: the number behind ``compute.jobs_per_device``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

# The full CIFAR-100 grid the projection is for (config.yaml with workflow/tables/pairs_cifar100.yaml):
# 11 pairs x 4 methods x 2 variants x 3 seeds = 264 student runs of 240 epochs of
# ceil(50000 / 64) = 782 steps, and one logit export per teacher (6 teachers).
GRID_RUNS = 264
GRID_EPOCHS = 240
GRID_STEPS_PER_EPOCH = 782
GRID_TEACHERS = 6
CIFAR100_TRAIN = 50000

METHOD, VARIANT, SEED, LR = "kd", "sort", 0, 0.05
PATHS = ("reference", "exact", "fast")


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


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- timing --------------------------------------------------------------------------------

class StopBenchmark(Exception):
    """Raised from the step hook once enough steps are timed: ends train_run early."""


class StepClock:
    """Reads the clock at the end of every training step.

    ``append`` makes it usable as train_run's ``step_losses``. Timed windows run from the end
    of one step to the end of a later step of the same epoch, after ``warmup`` steps; ``sync``
    is called only when a window opens or closes.
    """

    def __init__(self, steps_per_epoch: int, warmup: int, max_timed: int | None, sync, barrier=None):
        if steps_per_epoch < 2:
            raise ValueError("an epoch needs at least 2 steps to time anything; enlarge the data "
                             "or shrink --batch-size")
        self.steps_per_epoch = steps_per_epoch
        self.warmup = max(1, warmup)  # no hook runs before the first step ends
        self.max_timed = max_timed
        self.sync = sync
        self.barrier = barrier
        self.done = 0
        self.timed = 0
        self.seconds = 0.0
        self.window_start: float | None = None
        self.window_steps = 0
        self.wall_first: float | None = None  # time.time() of the first window start
        self.wall_last: float | None = None   # ... and of the last window end

    def append(self, _loss=None) -> None:
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
                self.window_start = time.perf_counter()
                self.window_steps = 0
            return
        self.window_steps += 1
        reached = self.max_timed is not None and self.timed + self.window_steps >= self.max_timed
        if last_of_epoch or reached:
            self.sync()
            self.seconds += time.perf_counter() - self.window_start
            self.wall_last = time.time()
            self.timed += self.window_steps
            self.window_start = None
            if reached:
                raise StopBenchmark()

    @property
    def ms_per_step(self) -> float:
        if self.timed == 0:
            raise RuntimeError("no step was timed: lower --warmup or raise --epochs/--steps")
        return 1000.0 * self.seconds / self.timed


def release_memory(device: torch.device) -> None:
    """Free what the previous path left (its data and cache on the device) before the next one."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def make_sync(device: torch.device):
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


# --- preparation: data, teacher, logit cache ------------------------------------------------

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
    from sortkd.data.cifar import extract_cifar_archive, read_cifar_python, save_arrays
    from sortkd.data.synthetic import write_cifar_archive

    root = workdir / "data"
    tgz = write_cifar_archive(root / "cifar-100-python.tar.gz", num_classes=sizes.classes,
                              train_per_class=sizes.train_per_class,
                              test_per_class=sizes.test_per_class, seed=0)
    arrays = read_cifar_python(extract_cifar_archive(tgz, root))
    out = workdir / "arrays.npz"
    return out, save_arrays(arrays, out)


@torch.no_grad()
def _calibrate_batchnorm(model: torch.nn.Module, images: torch.Tensor, batch: int = 64) -> None:
    """Give a randomly initialised teacher BN statistics of the data, so that its eval-mode
    logits stay in a sane range (the benchmark teacher is not trained)."""
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
    from sortkd.data.views import normalize_images
    from sortkd.data.cifar import load_arrays
    from sortkd.models import build
    from sortkd.seeding import seeded_global_rng
    from sortkd.teachers import save_teacher_model, write_teacher_info

    arrays = load_arrays(data)
    with seeded_global_rng(SEED, "init"):
        model = build(arch, arrays.num_classes)
    calib = normalize_images(torch.from_numpy(arrays.train_x[:256]))
    _calibrate_batchnorm(model, calib)
    teacher_dir = workdir / "teacher"
    sha = save_teacher_model(teacher_dir, model, epoch=0)
    write_teacher_info(teacher_dir, {
        "arch": arch, "num_classes": arrays.num_classes, "source": "benchmark (random weights)",
        "checkpoint_sha256": sha, "test_top1": 0.0, "test_top5": 0.0, "data_sha256": data_sha256,
    })
    return teacher_dir, sha, arrays.num_classes


def export_cache(prep: Prepared, teacher_arch: str, device: torch.device, workdir: Path) -> None:
    """Export the logit cache the way `python -m sortkd export-logits` does; sets export_s."""
    from sortkd.data.cifar import load_arrays
    from sortkd.data.views import DeviceCifar
    from sortkd.logit_cache import export_logits
    from sortkd.teachers import load_teacher

    cuda = device.type == "cuda"
    teacher, _ = load_teacher(Path(prep.teacher_dir), teacher_arch, device)
    if cuda:
        teacher = teacher.to(memory_format=torch.channels_last)
    data = DeviceCifar(load_arrays(Path(prep.data)), device)
    dtype = "float16" if cuda else "float32"
    cache_dir = workdir / "cache"
    sync = make_sync(device)
    sync()
    t0 = time.perf_counter()
    export_logits(teacher, prep.teacher_sha256, data, prep.data_sha256, cache_dir, dtype=dtype,
                  low_precision=cuda, log=log)
    sync()
    prep.export_s = time.perf_counter() - t0
    prep.cache_dir, prep.cache_dtype = str(cache_dir), dtype
    del teacher, data
    release_memory(device)


def prepare(workdir: Path, sizes: Sizes, teacher_arch: str) -> Prepared:
    t0 = time.perf_counter()
    data, data_sha = prepare_data(workdir, sizes)
    teacher_dir, teacher_sha, num_classes = prepare_teacher(workdir, teacher_arch, data, data_sha)
    log(f"prepared {sizes.num_train} training images ({num_classes} classes) and a {teacher_arch} "
        f"teacher in {time.perf_counter() - t0:.1f} s")
    return Prepared(str(data), data_sha, num_classes, sizes.num_train, str(teacher_dir), teacher_sha)


# --- the reference-style loop ---------------------------------------------------------------

class ReferenceCifar(torch.utils.data.Dataset):
    """What torchvision's CIFAR100 does: HWC uint8 arrays, a PIL image per sample, a transform."""

    def __init__(self, images_nchw: np.ndarray, labels: np.ndarray, transform):
        self.data = np.ascontiguousarray(images_nchw.transpose(0, 2, 3, 1))
        self.targets = [int(y) for y in labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def time_reference(prep: Prepared, args, sizes: Sizes, device: torch.device) -> dict:
    import torch.nn.functional as F
    from torchvision import transforms

    from sortkd.data.views import CIFAR100_MEAN, CIFAR100_STD
    from sortkd.data.cifar import load_arrays
    from sortkd.losses import kd_loss, resolve_hparams
    from sortkd.models import build
    from sortkd.seeding import seeded_global_rng
    from sortkd.teachers import load_teacher
    from sortkd.sorting import sort_logits

    arrays = load_arrays(Path(prep.data))
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD),
    ])
    dataset = ReferenceCifar(arrays.train_x, arrays.train_y, transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=sizes.batch_size, shuffle=True,
                                         num_workers=args.workers)
    teacher, _ = load_teacher(Path(prep.teacher_dir), args.teacher, device)
    teacher.eval()
    with seeded_global_rng(SEED, "init"):
        student = build(args.student, prep.num_classes)
    student = student.to(device)
    hp = resolve_hparams(METHOD)
    optimizer = torch.optim.SGD(student.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    clock = StepClock(len(loader), sizes.warmup, sizes.steps, make_sync(device))
    epoch_s = None
    try:
        for _epoch in range(sizes.epochs):
            student.train()
            t_epoch = time.perf_counter()
            for images, target in loader:
                images = images.to(device, non_blocking=True)
                target = target.to(device, non_blocking=True)
                with torch.no_grad():
                    teacher_logits = teacher(images)
                logits = student(images)
                teacher_logits = sort_logits(teacher_logits, target)
                loss = (hp["ce_weight"] * F.cross_entropy(logits, target)
                        + hp["kd_weight"] * kd_loss(logits, teacher_logits, hp["temperature"]))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss.item()  # the per-step host read of the reference's loss meter
                clock.tick()
            epoch_s = time.perf_counter() - t_epoch
    except StopBenchmark:
        pass
    return {"ms_per_step": clock.ms_per_step, "timed_steps": clock.timed, "epoch_s": epoch_s,
            "what": f"DataLoader({args.workers} workers) + PIL transforms, fp32, online teacher, "
                    ".item() every step"}


# --- the project's paths through train_run --------------------------------------------------

def student_spec(prep: Prepared, args, sizes: Sizes, path: str, out_name: str, threads: int | None):
    from sortkd.experiment.specs import RunSpec

    fast = path == "fast"
    return RunSpec(
        kind="student", name=f"bench/{out_name}", data=prep.data, arch=args.student,
        method=METHOD, variant=VARIANT, seed=SEED, epochs=sizes.epochs, batch_size=sizes.batch_size,
        lr=LR, pair=f"{args.teacher}-{args.student}", teacher_arch=args.teacher,
        teacher_dir=prep.teacher_dir, teacher_logits="cache" if fast else "online",
        cache_dir=prep.cache_dir if fast else None, device=args.device,
        precision="bf16" if (fast and args.device == "cuda") else "exact", threads=threads,
    )


def time_train_run(prep: Prepared, args, sizes: Sizes, path: str, workdir: Path, out_name: str | None = None,
                   threads: int | None = None, barrier=None) -> dict:
    from sortkd.training.cifar import train_run

    out_name = out_name or path
    spec = student_spec(prep, args, sizes, path, out_name, threads)
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    clock = StepClock(sizes.steps_per_epoch, sizes.warmup, sizes.steps, make_sync(device), barrier)
    out_dir = workdir / "runs" / out_name
    shutil.rmtree(out_dir, ignore_errors=True)  # never resume a previous benchmark's checkpoint
    try:
        with contextlib.redirect_stdout(sys.stderr):
            train_run(spec, out_dir, step_losses=clock)
    except StopBenchmark:
        pass
    epoch_s = None
    metrics = out_dir / "metrics.jsonl"
    if metrics.exists():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        if rows:
            epoch_s = rows[-1]["epoch_s"]
    if path == "fast":
        what = (f"train_run, logit cache ({prep.cache_dtype})"
                + (", bf16 autocast + channels_last" if spec.precision == "bf16" else ", precision exact"))
    else:
        what = "train_run, online teacher, precision exact"
    return {"ms_per_step": clock.ms_per_step, "timed_steps": clock.timed, "epoch_s": epoch_s,
            "what": what, "precision": spec.precision, "teacher_logits": spec.teacher_logits,
            "wall_first": clock.wall_first, "wall_last": clock.wall_last}


# --- projections and output -----------------------------------------------------------------

def grid_step_hours(ms_per_step: float) -> float:
    return GRID_RUNS * GRID_EPOCHS * GRID_STEPS_PER_EPOCH * ms_per_step / 1000.0 / 3600.0


def export_projection(prep: Prepared) -> dict | None:
    if prep.export_s is None:
        return None
    from sortkd.data.views import NUM_VIEWS

    views = prep.num_train * NUM_VIEWS
    per_teacher_s = prep.export_s * CIFAR100_TRAIN / prep.num_train
    return {"seconds": round(prep.export_s, 3), "images": prep.num_train, "views": views,
            "views_per_s": round(views / prep.export_s, 1), "dtype": prep.cache_dtype,
            "projected_s_per_teacher": round(per_teacher_s, 1),
            "projected_hours_all_teachers": GRID_TEACHERS * per_teacher_s / 3600.0}


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def common_header(args, sizes: Sizes, prep: Prepared) -> dict:
    return {
        "benchmark": "train_speed",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": args.device, "device_name": device_name(args.device),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "quick": bool(args.quick), "teacher": args.teacher, "student": args.student,
        "method": METHOD, "variant": VARIANT, "batch_size": sizes.batch_size,
        "num_train": prep.num_train, "num_classes": prep.num_classes,
        "steps_per_epoch": sizes.steps_per_epoch, "epochs": sizes.epochs,
        "warmup_steps": sizes.warmup, "max_timed_steps": sizes.steps,
        "grid": {"runs": GRID_RUNS, "epochs": GRID_EPOCHS, "steps_per_epoch": GRID_STEPS_PER_EPOCH,
                 "teachers": GRID_TEACHERS, "train_images": CIFAR100_TRAIN},
    }


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def print_table(result: dict) -> None:
    paths, export = result["paths"], result.get("export")
    print(f"sortkd training speed: {result['device']} ({result['device_name']}, "
          f"{result['torch_threads']} torch threads), {result['teacher']} -> {result['student']}, "
          f"{result['method']} + {result['variant']}, batch {result['batch_size']}, "
          f"{result['num_train']} train images x {result['num_classes']} classes"
          + (", --quick" if result["quick"] else ""))
    header = (f"{'path':<10} {'ms/step':>9} {'time/ref':>9} {'speed-up':>9} {'timed':>6} "
              f"{'s/epoch':>8} {'grid h':>9}  what")
    print(header)
    print("-" * len(header))
    for name, row in paths.items():
        print(f"{name:<10} {row['ms_per_step']:>9.2f} {_fmt(row.get('time_ratio'), '>9.3f')} "
              f"{_fmt(row.get('speedup'), '>9.2f')} {row['timed_steps']:>6d} "
              f"{_fmt(row.get('epoch_s'), '>8.2f')} {row['grid_hours']:>9.1f}  {row['what']}")
    if export:
        print(f"export     {export['views']} views ({export['images']} images x 162) in "
              f"{export['seconds']:.2f} s, {export['views_per_s']:.0f} views/s, {export['dtype']}; "
              f"projected {export['projected_s_per_teacher']:.0f} s per teacher at 50000 images, "
              f"{export['projected_hours_all_teachers']:.2f} h for {GRID_TEACHERS} teachers "
              "(included in the fast path's grid h)")
    print(f"grid h = {GRID_RUNS} runs x {GRID_EPOCHS} epochs x {GRID_STEPS_PER_EPOCH} steps x ms/step "
          "(training steps only: no evaluation or checkpoints), measured at the size above"
          + ("; --quick sizes are far from the real step cost" if result["quick"] else ""))


def run_comparison(args, sizes: Sizes, workdir: Path) -> dict:
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    prep = prepare(workdir, sizes, args.teacher)
    paths: dict[str, dict] = {}
    for path in args.paths:
        if path == "fast":
            export_cache(prep, args.teacher, device, workdir)
            log(f"export: {prep.export_s:.2f} s")
        t0 = time.perf_counter()
        if path == "reference":
            paths[path] = time_reference(prep, args, sizes, device)
        else:
            paths[path] = time_train_run(prep, args, sizes, path, workdir, threads=args.threads)
            paths[path].pop("wall_first")
            paths[path].pop("wall_last")
        log(f"{path}: {paths[path]['ms_per_step']:.2f} ms/step over {paths[path]['timed_steps']} steps "
            f"({time.perf_counter() - t0:.1f} s in all)")
        release_memory(device)
    export = export_projection(prep)
    ref = paths.get("reference")
    for name, row in paths.items():
        row["grid_hours"] = grid_step_hours(row["ms_per_step"])
        if name == "fast" and export:
            row["grid_hours"] += export["projected_hours_all_teachers"]
        if ref:
            row["time_ratio"] = row["ms_per_step"] / ref["ms_per_step"]
            row["speedup"] = ref["ms_per_step"] / row["ms_per_step"]
    result = {**common_header(args, sizes, prep), "mode": "compare", "paths": paths, "export": export}
    # Flat copies of the headline numbers, for scripts.
    for name, row in paths.items():
        result[f"{name}_ms_per_step"] = row["ms_per_step"]
        result[f"{name}_grid_hours"] = row["grid_hours"]
        if ref and name != "reference":
            result[f"{name}_speedup"] = row["speedup"]
    if export:
        result["export_s"] = export["seconds"]
    return result


# --- concurrency sweep -----------------------------------------------------------------------

def worker_main(config_path: str) -> int:
    """One fast-path process of the concurrency sweep: prints one JSON line."""
    cfg = json.loads(Path(config_path).read_text())
    args = argparse.Namespace(**cfg["args"])
    sizes = Sizes(**cfg["sizes"])
    prep = Prepared(**cfg["prep"])
    workdir, barrier_dir, wid = Path(cfg["workdir"]), Path(cfg["barrier_dir"]), cfg["worker"]
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])

    def barrier() -> None:
        (barrier_dir / f"ready.{wid}").write_text("")
        deadline = time.time() + cfg["barrier_timeout_s"]
        while not (barrier_dir / "go").exists():
            if time.time() > deadline:
                raise TimeoutError("the other benchmark processes never became ready")
            time.sleep(0.002)

    row = time_train_run(prep, args, sizes, "fast", workdir, out_name=f"c{cfg['processes']}_w{wid}",
                         threads=cfg["threads"], barrier=barrier)
    print(json.dumps(row), flush=True)
    return 0


def run_concurrency(args, sizes: Sizes, workdir: Path) -> dict:
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    prep = prepare(workdir, sizes, args.teacher)
    export_cache(prep, args.teacher, device, workdir)
    log(f"export: {prep.export_s:.2f} s")
    rows = []
    for n in args.concurrency:
        threads = args.threads or max(1, (os.cpu_count() or 1) // n)
        barrier_dir = workdir / f"barrier_{n}"
        shutil.rmtree(barrier_dir, ignore_errors=True)
        barrier_dir.mkdir()
        procs, logs = [], []
        for wid in range(n):
            cfg = {"args": vars(args) | {"concurrency": None}, "sizes": asdict(sizes), "prep": asdict(prep),
                   "workdir": str(workdir), "barrier_dir": str(barrier_dir), "worker": wid,
                   "processes": n, "threads": threads, "barrier_timeout_s": args.barrier_timeout}
            cfg_path = barrier_dir / f"worker{wid}.json"
            cfg_path.write_text(json.dumps(cfg))
            out, err = open(barrier_dir / f"w{wid}.out", "w+"), open(barrier_dir / f"w{wid}.err", "w+")
            logs.append((out, err))
            procs.append(subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(cfg_path)],
                                          stdout=out, stderr=err, cwd=str(REPO)))
        try:
            deadline = time.time() + args.barrier_timeout
            while len(list(barrier_dir.glob("ready.*"))) < n:
                failed = [p for p in procs if p.poll() not in (None, 0)]
                if failed or time.time() > deadline:
                    raise RuntimeError("a benchmark process failed or never became ready")
                time.sleep(0.01)
            (barrier_dir / "go").write_text("")
            codes = [p.wait() for p in procs]
            if any(codes):
                raise RuntimeError(f"benchmark processes exited with {codes}")
        except BaseException:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for wid, (_out, err) in enumerate(logs):
                err.seek(0)
                log(f"--- worker {wid} stderr (last lines) ---\n" + "".join(err.readlines()[-20:]))
            raise
        results = []
        for out, err in logs:
            out.seek(0)
            results.append(json.loads(out.read().strip().splitlines()[-1]))
            out.close()
            err.close()
        steps = sum(r["timed_steps"] for r in results)
        wall = max(r["wall_last"] for r in results) - min(r["wall_first"] for r in results)
        rate = steps / wall
        rows.append({"processes": n, "threads_per_process": threads,
                     "aggregate_steps_per_s": rate, "wall_s": wall, "timed_steps": steps,
                     "mean_ms_per_step": sum(r["ms_per_step"] for r in results) / n,
                     "grid_hours": GRID_RUNS * GRID_EPOCHS * GRID_STEPS_PER_EPOCH / rate / 3600.0})
        log(f"concurrency {n}: {rate:.1f} steps/s in all, {rows[-1]['mean_ms_per_step']:.2f} ms/step per process")
    base = rows[0]["aggregate_steps_per_s"]
    for row in rows:
        row["speedup_vs_first"] = row["aggregate_steps_per_s"] / base
    export = export_projection(prep)
    if export:
        for row in rows:
            row["grid_hours"] += export["projected_hours_all_teachers"]
    best = max(rows, key=lambda r: r["aggregate_steps_per_s"])
    result = {**common_header(args, sizes, prep), "mode": "concurrency", "path": "fast",
              "precision": "bf16" if args.device == "cuda" else "exact", "cache_dtype": prep.cache_dtype,
              "export": export, "concurrency": rows, "best_processes": best["processes"],
              "best_aggregate_steps_per_s": best["aggregate_steps_per_s"]}
    return result


def print_concurrency_table(result: dict) -> None:
    print(f"sortkd fast path, concurrent processes: {result['device']} ({result['device_name']}), "
          f"{result['teacher']} -> {result['student']}, batch {result['batch_size']}, "
          f"{result['num_train']} train images" + (", --quick" if result["quick"] else ""))
    header = (f"{'processes':>9} {'threads':>7} {'steps/s (all)':>13} {'speed-up':>9} "
              f"{'ms/step each':>12} {'grid h':>9}")
    print(header)
    print("-" * len(header))
    for row in result["concurrency"]:
        print(f"{row['processes']:>9d} {row['threads_per_process']:>7d} {row['aggregate_steps_per_s']:>13.1f} "
              f"{row['speedup_vs_first']:>9.2f} {row['mean_ms_per_step']:>12.2f} {row['grid_hours']:>9.1f}")
    print(f"steps/s (all) = timed steps of every process / wall time from the first window start to the "
          f"last window end (processes start together after warm-up); grid h includes "
          f"{GRID_TEACHERS} exports")


# --- command line ----------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true",
                   help="tiny data, pair resnet14 -> resnet8, batch 8, 3 epochs: a smoke run (< 1 min on 2 cores)")
    p.add_argument("--teacher", default=None, help="teacher arch (default resnet32x4; --quick: resnet14)")
    p.add_argument("--student", default=None, help="student arch (default resnet8x4; --quick: resnet8)")
    p.add_argument("--epochs", type=int, default=None, help="epochs each path may run (default: cuda 2, cpu 1, quick 3)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per path, then stop (default: cuda/quick every step of --epochs after "
                        "warm-up; cpu 20)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: cuda 50, cpu 5, quick 2)")
    p.add_argument("--batch-size", type=int, default=None, help="default 64 (--quick: 8)")
    p.add_argument("--classes", type=int, default=None, help="generated classes (default 100; --quick 4)")
    p.add_argument("--train-per-class", type=int, default=None, help="default 500 (--quick 8)")
    p.add_argument("--test-per-class", type=int, default=None, help="default 100 (--quick 4)")
    p.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset of reference,exact,fast")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference loop (default 2)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's own, --quick 1; concurrency: cores / processes)")
    p.add_argument("--concurrency", default=None,
                   help="e.g. 1,2,4,8: run that many fast-path processes at once instead of the comparison")
    p.add_argument("--barrier-timeout", type=float, default=1800.0, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="also write the JSON result to this file")
    p.add_argument("--keep", default=None, help="keep the work files (data, teacher, cache, runs) in this folder")
    args = p.parse_args(argv)
    t, s = default_pair(args.quick)
    args.teacher = args.teacher or t
    args.student = args.student or s
    if args.quick and args.threads is None:
        # A smoke run must not depend on how busy the machine is: OpenMP threads that spin
        # on cores other processes are using can make each step ten times slower.
        args.threads = 1
    args.paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    bad = [x for x in args.paths if x not in PATHS]
    if bad or not args.paths:
        p.error(f"--paths: unknown {bad}; allowed: {', '.join(PATHS)}")
    if args.concurrency is not None:
        try:
            args.concurrency = [int(x) for x in args.concurrency.split(",") if x.strip()]
        except ValueError:
            p.error("--concurrency takes comma-separated process counts, e.g. 1,2,4,8")
        if not args.concurrency or min(args.concurrency) < 1:
            p.error("--concurrency takes positive process counts, e.g. 1,2,4,8")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA GPU")
    return args


def sizes_from_args(args) -> Sizes:
    sizes = default_sizes(args.device, args.quick)
    for key, value in (("epochs", args.epochs), ("warmup", args.warmup), ("batch_size", args.batch_size),
                       ("classes", args.classes), ("train_per_class", args.train_per_class),
                       ("test_per_class", args.test_per_class)):
        if value is not None:
            setattr(sizes, key, value)
    if args.steps is not None:
        sizes.steps = args.steps
    if sizes.steps is not None and sizes.steps < 1:
        raise SystemExit("--steps must be >= 1")
    return sizes


def main(argv=None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--worker":
        return worker_main(sys.argv[2])
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = sizes_from_args(args)
    views = sizes.num_train * 162
    if args.device == "cpu" and (args.concurrency or "fast" in args.paths) and views > 1_000_000:
        log(f"warning: the fast path first exports {views} teacher views; on a CPU that takes hours to "
            "days (docs/benchmarks.md). Use --quick, smaller --classes/--train-per-class, or "
            "--paths reference,exact.")
    with contextlib.ExitStack() as stack:
        if args.keep:
            workdir = Path(args.keep)
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sortkd-bench-")))
        if args.concurrency:
            result = run_concurrency(args, sizes, workdir)
            print_concurrency_table(result)
        else:
            result = run_comparison(args, sizes, workdir)
            print_table(result)
    line = json.dumps(result, sort_keys=True, allow_nan=False)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(line + "\n")
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
