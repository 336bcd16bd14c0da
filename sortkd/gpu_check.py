"""`python -m sortkd gpu-check`: the acceptance check to run first on a new GPU machine.

It needs only torch and this package (no Snakemake) and takes a few minutes on one modern
GPU. On generated CIFAR-format data it checks, and measures:

- ``gpu_slots``: two concurrent processes go through the GPU-slot assigner and land on distinct
  slots (on distinct devices when there are several), each seeing only its own device;
- ``export``: a teacher-logit export (fp32 forward, TF32 off) and its cache agree with the
  online fp32 teacher on the same (image, view) pairs;
- ``losses``: a student trained in ``exact`` (online teacher) and in ``bf16`` (the cache) for a
  few hundred steps: every per-step loss within 2e-2 relative;
- ``host_syncs``: no host sync inside the timed windows of either run (CUDA's sync debug mode
  raises on any);
- ``speed``: the reference-style loop, the exact path and the fast path timed in one process;
  the fast path must beat the reference loop;
- ``concurrency``: 1, 2, 4 and 8 fast-path processes on one GPU at once, giving the projected
  hours of the full grid at each and the recommended ``compute.jobs_per_device``.

It prints a PASS/FAIL table, writes one JSON file (``--out``) and exits 1 on any FAIL. Without
CUDA it says so in one line and exits 2. Every part except the CUDA calls also runs on the CPU
(``run_checks(options, "cpu")``), which is how the tests exercise it.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sortkd.speed.projection import (GRID, cifar_epoch_seconds, epoch_overhead_s, grid_hours,
                                     recommend_jobs_per_device)

DEFAULT_OUT = "results/gpu_check.json"
HELP = "acceptance check of a GPU machine (export, bf16 vs exact, host syncs, GPU slots, speed); run it first"
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
LOSS_RTOL = 2e-2
# The cache against the online teacher: the storage dtype's rounding (half an ulp, relative)
# plus this much for fp32 kernels that differ between batch sizes and memory formats. A bf16
# forward (2^-9 relative) exceeds it for every logit above ~0.05.
EXPORT_ABS_TOL = 1e-4
HALF_ULP = {"float16": 2.0 ** -11, "float32": 2.0 ** -24}
# Goals of the issue for one H200, printed for comparison (they are not pass/fail).
GOAL_EPOCH_S = 1.2
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Check:
    name: str
    status: str  # PASS, FAIL, or SKIP (nothing could be measured on this device)
    detail: str
    measured: dict = field(default_factory=dict)


@dataclass
class Options:
    teacher: str = "resnet32x4"
    student: str = "resnet8x4"
    classes: int = 100
    train_per_class: int = 30
    test_per_class: int = 100  # 10 000 test images: each epoch evaluates what CIFAR-100's does
    batch_size: int = 64
    warmup: int = 30
    steps: int = 300  # timed steps per path
    concurrency: tuple = (1, 2, 4, 8)
    workers: int = 2  # DataLoader workers of the reference loop
    threads: int | None = None


# --- command line ------------------------------------------------------------------------

def register(subparsers) -> None:
    """Add the ``gpu-check`` command to the CLI (its one registration line calls this)."""
    p = subparsers.add_parser("gpu-check", help=HELP, description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = Options()
    p.add_argument("--out", default=DEFAULT_OUT, help=f"the JSON report (default {DEFAULT_OUT})")
    p.add_argument("--teacher", default=d.teacher, help=f"teacher arch (default {d.teacher})")
    p.add_argument("--student", default=d.student, help=f"student arch (default {d.student})")
    p.add_argument("--classes", type=int, default=d.classes, help=f"generated classes (default {d.classes})")
    p.add_argument("--train-per-class", type=int, default=d.train_per_class,
                   help=f"generated training images per class (default {d.train_per_class})")
    p.add_argument("--test-per-class", type=int, default=d.test_per_class,
                   help=f"generated test images per class (default {d.test_per_class})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"timed steps per path (default {d.steps})")
    p.add_argument("--warmup", type=int, default=d.warmup, help=f"untimed steps first (default {d.warmup})")
    p.add_argument("--concurrency", default=",".join(map(str, d.concurrency)),
                   help="runs per GPU to measure together (default 1,2,4,8)")
    p.add_argument("--workers", type=int, default=d.workers,
                   help=f"DataLoader workers of the reference loop (default {d.workers})")
    p.add_argument("--keep", default=None, help="keep the work files (data, teacher, cache, runs) in this folder")


def options_from_args(args) -> Options:
    try:
        counts = tuple(int(x) for x in str(args.concurrency).split(",") if x.strip())
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise ValueError(f"--concurrency {args.concurrency!r}: give positive runs per GPU, e.g. 1,2,4,8")
    for key in ("classes", "train_per_class", "test_per_class", "steps", "warmup"):
        if getattr(args, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    return Options(teacher=args.teacher, student=args.student, classes=args.classes,
                   train_per_class=args.train_per_class, test_per_class=args.test_per_class,
                   warmup=args.warmup, steps=args.steps, concurrency=counts, workers=args.workers)


def no_cuda_message() -> str:
    import torch

    return (f"gpu-check: no CUDA GPU is visible to torch {torch.__version__} (CUDA build "
            f"{torch.version.cuda}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); "
            "run it on the GPU machine")


def run(args) -> int:
    import torch

    if not torch.cuda.is_available():
        print(no_cuda_message(), file=sys.stderr)
        return 2
    options = options_from_args(args)
    with contextlib.ExitStack() as stack:
        from sortkd.speed.workload import work_folder  # torch: not at import (the CLI parser loads this module)

        workdir = work_folder(stack, args.keep, "sortkd-gpu-check-")
        report = run_checks(options, "cuda", workdir)
    print(format_table(report))
    write_report(report, Path(args.out))
    print(f"gpu-check: wrote {args.out}")
    return 0 if report["passed"] else 1


# --- the checks -----------------------------------------------------------------------------

def log(message: str) -> None:
    print(f"[gpu-check] {message}", file=sys.stderr, flush=True)


def visible_device_ids() -> list[str]:
    """The device ids this process may use, as the slot assigner names them."""
    import torch

    preset = os.environ.get("CUDA_VISIBLE_DEVICES")
    if preset is not None:
        return [part.strip() for part in preset.split(",") if part.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def _slot_worker(config_path: str) -> int:
    """One of the slot check's processes: take a slot, report it (and what CUDA then shows),
    hold it until the parent says go."""
    from sortkd.gpu_slots import hold_gpu_slots

    cfg = json.loads(Path(config_path).read_text())
    lease = hold_gpu_slots(cfg["devices"], jobs_per_device=cfg["jobs_per_device"], lock_dir=cfg["lock_dir"],
                           timeout_s=cfg["timeout_s"], log=lambda m: print(m, file=sys.stderr, flush=True))
    held = {"slots": list(lease.slots), "cuda_visible_devices": lease.cuda_visible_devices,
            "preset": lease.preset, "pid": os.getpid()}
    if cfg["init_cuda"]:
        import torch  # only now: CUDA must start after CUDA_VISIBLE_DEVICES is set

        torch.ones(1, device="cuda").add_(1)
        props = torch.cuda.get_device_properties(0)
        held.update(device_count=torch.cuda.device_count(), device_name=props.name,
                    uuid=str(getattr(props, "uuid", "")) or None)
    out = Path(cfg["report"])
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(held))
    os.replace(tmp, out)
    deadline = time.time() + cfg["timeout_s"]
    while not Path(cfg["go"]).exists():
        if time.time() > deadline:
            print("slot worker: the parent never said go", file=sys.stderr)
            return 3
        time.sleep(0.01)
    return 0


def check_gpu_slots(devices: list[str], lock_dir: Path, jobs_per_device: int = 2, init_cuda: bool = True,
                    timeout_s: float = 120.0) -> Check:
    """Two real processes take slots through ``sortkd.gpu_slots`` at the same time."""
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}  # else no slot is taken
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
    go = lock_dir / "go"
    go.unlink(missing_ok=True)
    procs, reports = [], []
    for wid in range(2):
        report = lock_dir / f"held.{wid}.json"
        report.unlink(missing_ok=True)
        reports.append(report)
        cfg_path = lock_dir / f"worker{wid}.json"
        cfg_path.write_text(json.dumps({"devices": list(devices), "jobs_per_device": jobs_per_device,
                                        # A private lock folder: a pipeline already running on
                                        # this machine keeps its slots and is not disturbed.
                                        "lock_dir": str(lock_dir / "locks"), "timeout_s": timeout_s,
                                        "init_cuda": init_cuda, "report": str(report), "go": str(go)}))
        procs.append(subprocess.Popen([sys.executable, "-m", "sortkd.gpu_check", "--slot-worker", str(cfg_path)],
                                      cwd=str(PACKAGE_ROOT), env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    try:
        deadline = time.time() + timeout_s + 30
        while not all(r.exists() for r in reports):
            if any(p.poll() is not None for p in procs) or time.time() > deadline:
                break
            time.sleep(0.02)
        both_held = all(r.exists() for r in reports)
        go.write_text("")
        outputs = []
        for p in procs:
            try:
                outputs.append(p.communicate(timeout=60)[0])
            except subprocess.TimeoutExpired:
                p.kill()
                outputs.append(p.communicate()[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = [p.returncode for p in procs]
    if not both_held or any(codes):
        tail = " | ".join(o.strip().splitlines()[-1] for o in outputs if o.strip())
        return Check("gpu_slots", FAIL, f"two concurrent runs did not both get a slot (exit codes {codes}): {tail}",
                     {"exit_codes": codes})
    held = [json.loads(r.read_text()) for r in reports]
    slots = [h["slots"][0] if h["slots"] else None for h in held]
    visible = [h["cuda_visible_devices"] for h in held]
    several = len(set(devices)) >= 2
    problems = []
    if any(h["preset"] for h in held) or len(set(slots)) != 2 or None in slots:
        problems.append(f"slots {slots} are not two distinct slots")
    if several and len(set(visible)) != 2:
        problems.append(f"both runs got device {visible[0]} although {len(set(devices))} devices are configured")
    measured = {"devices": list(devices), "jobs_per_device": jobs_per_device, "slots": slots,
                "cuda_visible_devices": visible}
    if init_cuda:
        counts = [h["device_count"] for h in held]
        uuids = [h["uuid"] for h in held]
        measured.update(device_count_seen=counts, uuids=uuids)
        if counts != [1, 1]:
            problems.append(f"each run should see exactly its own GPU, they saw {counts} devices")
        if several and None not in uuids and len(set(uuids)) != 2:
            problems.append(f"both runs ran on the same physical GPU {uuids[0]}")
    where = "distinct devices" if several else "the one device"
    detail = (f"2 concurrent runs took slots {slots[0]} and {slots[1]} -> CUDA_VISIBLE_DEVICES "
              f"{visible[0]} and {visible[1]} ({where})")
    if problems:
        return Check("gpu_slots", FAIL, "; ".join(problems), measured)
    return Check("gpu_slots", PASS, detail, measured)


def check_export(teacher_dir: Path, arch: str, data_path: Path, cache_dir: Path, device,
                 samples: int = 2048, seed: int = 0) -> Check:
    """The cache against the online fp32 teacher on the same random (image, view) pairs."""
    import torch

    from sortkd.data.cifar import load_arrays
    from sortkd.data.views import NUM_VIEWS, DeviceCifar
    from sortkd.files import read_json
    from sortkd.logit_cache import META_FILE, TeacherLogitCache, dataset_sha256
    from sortkd.teachers import float32_forward, load_teacher

    device = torch.device(device)
    meta = read_json(Path(cache_dir) / META_FILE)
    problems = []
    if meta.get("forward_dtype") != "float32":
        problems.append(f"meta.json says the forward ran in {meta.get('forward_dtype')}, not float32")
    if device.type == "cuda" and meta.get("tf32_during_forward") is not False:
        problems.append("meta.json does not say that TF32 was off during the export")
    teacher, info = load_teacher(Path(teacher_dir), arch, device)
    data = DeviceCifar(load_arrays(Path(data_path)), device)
    cache = TeacherLogitCache(Path(cache_dir), info["checkpoint_sha256"], dataset_sha256(Path(data_path)),
                              data.num_train, data.num_classes, device)
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(0, data.num_train, (samples,), generator=g).to(device)
    views = torch.randint(0, NUM_VIEWS, (samples,), generator=g).to(device)
    with torch.no_grad(), float32_forward(device):
        online = torch.cat([teacher(data.train_batch(index[b:b + 512], views[b:b + 512])[0]).float()
                            for b in range(0, samples, 512)])
    cached = cache.train_logits(index, views)
    diff = (cached - online).abs().double()
    bound = HALF_ULP[meta["dtype"]] * online.abs().double() + EXPORT_ABS_TOL * (1 + online.abs().double())
    max_diff, worst_excess, argmax_differ = torch.stack([
        diff.max(), (diff - bound).max(), (cached.argmax(1) != online.argmax(1)).sum().double()]).cpu().tolist()
    measured = {"samples": samples, "dtype": meta["dtype"], "max_abs_diff": max_diff,
                "max_excess_over_bound": worst_excess, "argmax_differ": int(argmax_differ),
                "storage_rounding": meta.get("storage_rounding"),
                "tf32_during_forward": meta.get("tf32_during_forward")}
    if worst_excess > 0:
        problems.append(f"cache and online teacher differ by up to {max_diff:.3g} on {samples} views, beyond "
                        f"{meta['dtype']} rounding + {EXPORT_ABS_TOL:g}: was the export not fp32?")
    if problems:
        return Check("export", FAIL, "; ".join(problems), measured)
    rounding = meta.get("storage_rounding") or {}
    return Check("export", PASS,
                 f"{meta['dtype']} cache = online fp32 teacher within the storage rounding on {samples} views "
                 f"(max |diff| {max_diff:.2g}); storage changed the argmax in {rounding.get('argmax_changed_rows')} "
                 f"and the sort in {rounding.get('sort_changed_rows')} of {rounding.get('rows')} rows", measured)


def compare_losses(reference, other, rtol: float = LOSS_RTOL) -> dict:
    """Per-step relative differences |other - reference| / |reference| of two loss trajectories."""
    a, b = [float(x) for x in reference], [float(x) for x in other]
    out = {"steps": len(a), "rtol": rtol, "max_rel_diff": None, "worst_step": None, "within": False}
    if len(a) != len(b) or not a:
        out["problem"] = f"the runs logged {len(a)} and {len(b)} steps"
        return out
    if not all(math.isfinite(x) for x in a + b):
        out["problem"] = "a loss is not finite"
        return out
    rel = [abs(y - x) / abs(x) if x != 0 else (0.0 if y == 0 else math.inf) for x, y in zip(a, b)]
    worst = max(range(len(rel)), key=rel.__getitem__)
    out.update(max_rel_diff=rel[worst], worst_step=worst + 1, within=rel[worst] <= rtol)
    return out


def check_losses(exact: dict, fast: dict, fast_precision: str) -> Check:
    for name, run in (("exact", exact), ("fast", fast)):
        if "error" in run:
            return Check("losses", FAIL, f"the {name} run failed: {run['error']}")
    cmp = compare_losses(exact["losses"], fast["losses"])
    label = f"exact (online teacher) vs {fast_precision} (cache)"
    if not cmp["within"]:
        why = cmp.get("problem") or (f"step {cmp['worst_step']} differs by {cmp['max_rel_diff']:.3g} relative "
                                     f"(allowed {LOSS_RTOL:g})")
        return Check("losses", FAIL, f"{label}: {why}", cmp)
    return Check("losses", PASS, f"{label}: {cmp['steps']} per-step losses within {cmp['max_rel_diff']:.2g} "
                                 f"relative (allowed {LOSS_RTOL:g})", cmp)


def check_host_syncs(runs: dict[str, dict], cuda: bool) -> Check:
    """PASS when every run timed its windows with the sync check on and nothing synced."""
    errors = {name: run["error"] for name, run in runs.items() if "error" in run}
    if errors:
        return Check("host_syncs", FAIL, "; ".join(f"{name}: {err}" for name, err in errors.items()))
    windows = {name: run.get("host_sync_windows", 0) for name, run in runs.items()}
    steps = {name: run["timed_steps"] for name, run in runs.items()}
    measured = {"windows_checked": windows, "timed_steps": steps}
    if not cuda:
        return Check("host_syncs", SKIP, "CUDA's sync debug mode exists only on CUDA: nothing checked", measured)
    if min(windows.values()) < 1:
        return Check("host_syncs", FAIL, f"no timed window ran with the sync check on ({windows})", measured)
    return Check("host_syncs", PASS, "no host sync in " + ", ".join(
        f"{steps[n]} timed steps of the {n} path" for n in runs), measured)


def check_speed(paths: dict[str, dict]) -> Check:
    missing = [name for name in ("reference", "exact", "fast") if "error" in paths.get(name, {"error": "not run"})]
    if missing:
        return Check("speed", FAIL, "; ".join(f"{n}: {paths.get(n, {}).get('error', 'not run')}" for n in missing))
    ms = {name: paths[name]["ms_per_step"] for name in ("reference", "exact", "fast")}
    measured = {"ms_per_step": ms, "timed_steps": {n: paths[n]["timed_steps"] for n in ms},
                "fast_speedup": ms["reference"] / ms["fast"]}
    detail = (f"reference {ms['reference']:.2f}, exact {ms['exact']:.2f}, fast {ms['fast']:.2f} ms/step "
              f"(fast = {measured['fast_speedup']:.1f}x the reference loop)")
    if ms["fast"] >= ms["reference"]:
        return Check("speed", FAIL, detail + ": the fast path must beat the reference loop", measured)
    return Check("speed", PASS, detail, measured)


def check_concurrency(rows: list[dict], counts) -> Check:
    measured = {"processes": [r["processes"] for r in rows],
                "aggregate_steps_per_s": [r["aggregate_steps_per_s"] for r in rows],
                "mean_ms_per_step": [r["mean_ms_per_step"] for r in rows]}
    if [r["processes"] for r in rows] != list(counts) or any(r["timed_steps"] < 1 for r in rows):
        return Check("concurrency", FAIL, f"measured {measured['processes']}, asked for {list(counts)}", measured)
    return Check("concurrency", PASS, ", ".join(
        f"{r['processes']}: {r['aggregate_steps_per_s']:.0f} steps/s" for r in rows) + " in aggregate", measured)


def _attempt(step, *args, **kwargs) -> dict:
    """Run one measuring step; a failure becomes {"error": ...} so that the others still run."""
    try:
        return step(*args, **kwargs)
    except Exception as exc:  # the report must say what broke, whatever it was
        log(f"{getattr(step, '__name__', step)} failed: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}".strip()}


def _attempt_check(name: str, check, *args, **kwargs) -> Check:
    """Run one check; an exception is that check's FAIL."""
    result = _attempt(check, *args, **kwargs)
    return Check(name, FAIL, result["error"]) if isinstance(result, dict) else result


def _sizes(options: Options):
    from sortkd.speed.workload import Sizes

    sizes = Sizes(classes=options.classes, train_per_class=options.train_per_class,
                  test_per_class=options.test_per_class, batch_size=options.batch_size, epochs=1,
                  warmup=options.warmup, steps=options.steps)
    # Each epoch times all its steps but one: enough epochs for warm-up and every timed step.
    sizes.epochs = 2 + math.ceil((options.warmup + options.steps) / max(1, sizes.steps_per_epoch - 1))
    return sizes


def describe_device(device) -> dict:
    import torch

    if device.type == "cuda":
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return {"device": names[0], "gpus": len(names), "gpu_names": names}
    return {"device": f"cpu ({platform.processor() or platform.machine()})", "gpus": 0, "gpu_names": []}


def run_checks(options: Options, device: str, workdir: Path) -> dict:
    """Every check and measurement on ``device`` ("cuda"; "cpu" in the tests), in ``workdir``."""
    import torch

    from sortkd.speed import concurrency
    from sortkd.speed.projection import export_projection
    from sortkd.speed.reference import time_reference
    from sortkd.speed.timing import time_train_run
    from sortkd.speed.workload import export_cache, fast_precision, prepare, release_memory, torch_device

    workdir = Path(workdir)
    dev = torch_device(device)
    cuda = dev.type == "cuda"
    hardware = describe_device(dev)
    gpus = max(1, hardware["gpus"])
    checks: dict[str, Check] = {}
    t_start = time.perf_counter()

    log("GPU slots: two concurrent processes")
    slot_devices = visible_device_ids() if cuda else ["0", "1"]
    checks["gpu_slots"] = _attempt_check("gpu_slots", check_gpu_slots, slot_devices, workdir / "slots",
                                         init_cuda=cuda)
    sizes = _sizes(options)
    log(f"data and teacher: {sizes.num_train} training images, {options.teacher}")
    prep = prepare(workdir, sizes, options.teacher)
    log("export (fp32 forward)")
    meta = _attempt(export_cache, prep, options.teacher, dev, workdir)
    if "error" in meta:
        checks["export"] = Check("export", FAIL, f"the export failed: {meta['error']}")
    else:
        checks["export"] = _attempt_check("export", check_export, Path(prep.teacher_dir), options.teacher,
                                          Path(prep.data), Path(prep.cache_dir), dev)
    release_memory(dev)

    paths: dict[str, dict] = {}
    for path in ("exact", "fast"):
        log(f"{path} path: {options.warmup} warm-up + {options.steps} timed steps")
        if path == "fast" and "error" in meta:
            paths[path] = {"error": "no cache: the export failed"}
            continue
        paths[path] = _attempt(time_train_run, prep, options.teacher, options.student, device, sizes, path,
                               workdir, threads=options.threads, check_syncs=True, keep_losses=True)
        release_memory(dev)
    checks["losses"] = check_losses(paths["exact"], paths["fast"], fast_precision(device))
    checks["host_syncs"] = check_host_syncs(paths, cuda)
    log("reference-style loop")
    paths["reference"] = _attempt(time_reference, prep, options.teacher, options.student, sizes, dev,
                                  options.workers)
    release_memory(dev)
    checks["speed"] = check_speed(paths)

    export = export_projection(prep.export_s, prep.num_train, prep.cache_dtype) if prep.export_s else None
    epoch_seconds, overhead = {}, None
    fast = paths["fast"]
    if "error" not in fast and fast.get("epoch_s") is not None:
        overhead = epoch_overhead_s(fast["epoch_s"], sizes.steps_per_epoch, fast["ms_per_step"])
        epoch_seconds[options.student] = cifar_epoch_seconds(fast["ms_per_step"], overhead)
    rows: list[dict] = []
    hours: dict[str, float] = {}
    recommended = None
    if "error" in meta:
        checks["concurrency"] = Check("concurrency", FAIL, "not run: the export failed")
    else:
        log(f"concurrency: {', '.join(map(str, options.concurrency))} fast-path processes per GPU")
        swept = _attempt(concurrency.sweep, prep, options.teacher, options.student, device, sizes,
                         list(options.concurrency), workdir, threads=options.threads)
        if isinstance(swept, dict):
            checks["concurrency"] = Check("concurrency", FAIL, swept["error"])
        else:
            rows = swept
            checks["concurrency"] = check_concurrency(rows, options.concurrency)
    if rows and overhead is not None and export is not None:
        for row in rows:
            hours[str(row["processes"])] = grid_hours(row["processes"], row["mean_ms_per_step"], overhead, gpus,
                                                      export["projected_s_per_teacher"])
        recommended = recommend_jobs_per_device({int(n): h for n, h in hours.items()})

    for path in ("exact", "fast"):
        for key in ("losses", "wall_first", "wall_last"):  # compared above / only for the sweep
            paths[path].pop(key, None)
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **hardware,
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "options": asdict(options), "grid": dict(GRID),
        "workload": {"teacher": options.teacher, "student": options.student, "train_images": sizes.num_train,
                     "test_images": options.classes * options.test_per_class, "batch_size": sizes.batch_size,
                     "steps_per_epoch": sizes.steps_per_epoch, "fast_precision": fast_precision(device),
                     "cache_dtype": prep.cache_dtype},
        "checks": {name: asdict(check) for name, check in checks.items()},
        "passed": all(c.status != FAIL for c in checks.values()),
        "speed": paths, "export": export, "export_meta": None if "error" in meta else meta,
        "concurrency": rows,
        "epoch_overhead_s": overhead,
        "epoch_seconds": epoch_seconds,
        "grid_hours": hours,
        "jobs_per_device_recommended": recommended,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    return report


# --- output ----------------------------------------------------------------------------------

def format_table(report: dict) -> str:
    checks = report["checks"]
    width = max([len("check")] + [len(name) for name in checks])
    lines = [f"sortkd gpu-check: {report['device']} ({report['gpus']} GPU), torch {report['torch']}, "
             f"{report['seconds']} s",
             f"{'check':<{width}}  status  detail",
             f"{'-' * width}  ------  ------"]
    for name, check in checks.items():
        lines.append(f"{name:<{width}}  {check['status']:<6}  {check['detail']}")
    for arch, seconds in report.get("epoch_seconds", {}).items():
        lines.append(f"{arch}: {seconds:.2f} s per CIFAR-100 epoch of one run (goal on an H200: "
                     f"<= {GOAL_EPOCH_S} s)")
    if report.get("grid_hours"):
        lines.append(f"full grid ({GRID['runs']} runs x {GRID['epochs']} epochs) on this machine: " + ", ".join(
            f"{h:.1f} h at {n} per GPU" for n, h in report["grid_hours"].items()))
        lines.append(f"recommended compute.jobs_per_device: {report['jobs_per_device_recommended']}")
    failed = [name for name, check in checks.items() if check["status"] == FAIL]
    lines.append("result: " + (f"FAIL ({', '.join(failed)})" if failed else f"PASS ({len(checks)} checks)"))
    return "\n".join(lines)


def _json_safe(value):
    """JSON has no inf or NaN: write them as strings rather than as invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_report(report: dict, path: Path) -> None:
    from sortkd.files import atomic_write_text

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), json.dumps(_json_safe(report), indent=2, sort_keys=True, allow_nan=False) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--slot-worker":
        sys.exit(_slot_worker(sys.argv[2]))
    sys.exit("usage: python -m sortkd gpu-check [options]")
