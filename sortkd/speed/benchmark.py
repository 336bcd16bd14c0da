"""Training-speed benchmark: the reference-style KD loop against the project's two paths.

In one process, on the same generated CIFAR-format data and the same teacher -> student pair
(default resnet32x4 -> resnet8x4, KD with the sort variant, batch 64), it times

* ``reference``: the loop of the public KD code (sortkd.speed.reference): DataLoader workers and
  PIL transforms, fp32, the teacher forward and a ``.item()`` every step;
* ``exact``: ``train_run`` with the teacher online and precision ``exact``;
* ``fast``: ``train_run`` with the teacher-logit cache (exported first in fp32, timed on its
  own) and, on CUDA, precision ``bf16`` (autocast + channels_last) with a float16 cache. On
  the CPU the cache is float32 and the precision stays ``exact``.

Warm-up steps are not timed, nor is any interval that crosses an epoch boundary; on CUDA the
device is synchronized at the start and the end of every timed window, never in between
(sortkd.speed.timing). Output: a table, then ONE JSON line, printed last on stdout (progress
goes to stderr).

    python benchmarks/train_speed.py --device cpu --quick
    python benchmarks/train_speed.py --device cuda
    python benchmarks/train_speed.py --device cuda --concurrency 1,2,4,8

``--paths reference,exact,fast,mlkd`` adds MLKD + sort on the fast path (weak logits from the
cache, the strong view's teacher run online) and times the strong view's two costs on their own:
rendering it and the teacher forward on it.

``--concurrency`` launches N processes of the fast path at once (after one shared export) and
reports the aggregate steps/s: the number behind ``compute.jobs_per_device``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import torch

from sortkd.speed import concurrency
from sortkd.speed.projection import GRID, GRID_EPOCHS, GRID_RUNS, GRID_STEPS_PER_EPOCH, GRID_TEACHERS
from sortkd.speed.projection import export_projection, grid_step_hours
from sortkd.speed.reference import time_reference
from sortkd.speed.timing import METHOD, OPTIONAL_PATHS, PATHS, VARIANT, time_strong_view, time_train_run
from sortkd.speed.workload import (Prepared, Sizes, default_pair, default_sizes, export_cache, fast_precision, work_folder,
                                   log, prepare, release_memory, torch_device)


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
        "warmup_steps": sizes.warmup, "max_timed_steps": sizes.steps, "grid": dict(GRID),
    }


def _fmt(value, spec: str, missing: str = "-") -> str:
    if value is None:  # keep the column width: ">9.3f" -> ">9"
        return format(missing, spec.split(".")[0])
    return format(value, spec)


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
    strong = result.get("strong_view")
    if strong:
        print(f"strong     per batch of {strong['batch_size']}: render {strong['render_ms_per_batch']:.2f} ms, "
              f"teacher forward {strong['teacher_forward_ms_per_batch']:.2f} ms (over {strong['batches']} batches; "
              "the mlkd row includes both, plus the student's second forward and backward)")
    if export:
        print(f"export     {export['views']} views ({export['images']} images x 162) in "
              f"{export['seconds']:.2f} s, {export['views_per_s']:.0f} views/s, fp32 forward, "
              f"{export['dtype']} cache; projected {export['projected_s_per_teacher']:.0f} s per teacher "
              f"at 50000 images, {export['projected_hours_all_teachers']:.2f} h for {GRID_TEACHERS} teachers "
              "(included in the fast path's grid h)")
    print(f"grid h = {GRID_RUNS} runs x {GRID_EPOCHS} epochs x {GRID_STEPS_PER_EPOCH} steps x ms/step "
          "(training steps only: no evaluation or checkpoints), measured at the size above"
          + ("; --quick sizes are far from the real step cost" if result["quick"] else ""))


def run_comparison(args, sizes: Sizes, workdir: Path) -> dict:
    device = torch_device(args.device)
    prep = prepare(workdir, sizes, args.teacher)
    paths: dict[str, dict] = {}
    strong_view = None
    for path in args.paths:
        if path in ("fast", "mlkd") and prep.export_s is None:
            export_cache(prep, args.teacher, device, workdir)
            log(f"export: {prep.export_s:.2f} s")
        t0 = time.perf_counter()
        if path == "reference":
            paths[path] = time_reference(prep, args.teacher, args.student, sizes, device, args.workers)
        else:
            paths[path] = time_train_run(prep, args.teacher, args.student, args.device, sizes, path, workdir,
                                         threads=args.threads)
            paths[path].pop("wall_first")
            paths[path].pop("wall_last")
        log(f"{path}: {paths[path]['ms_per_step']:.2f} ms/step over {paths[path]['timed_steps']} steps "
            f"({time.perf_counter() - t0:.1f} s in all)")
        release_memory(device)
        if path == "mlkd":
            strong_view = time_strong_view(prep, args.teacher, args.device, sizes)
            release_memory(device)
    export = export_projection(prep.export_s, prep.num_train, prep.cache_dtype)
    ref = paths.get("reference")
    for name, row in paths.items():
        row["grid_hours"] = grid_step_hours(row["ms_per_step"])
        if name in ("fast", "mlkd") and export:
            row["grid_hours"] += export["projected_hours_all_teachers"]
        if ref:
            row["time_ratio"] = row["ms_per_step"] / ref["ms_per_step"]
            row["speedup"] = ref["ms_per_step"] / row["ms_per_step"]
    result = {**common_header(args, sizes, prep), "mode": "compare", "paths": paths, "export": export}
    if strong_view:
        result["strong_view"] = strong_view
    if "mlkd" in paths and "fast" in paths:
        result["mlkd_time_vs_fast"] = paths["mlkd"]["ms_per_step"] / paths["fast"]["ms_per_step"]
    # Flat copies of the headline numbers, for scripts.
    for name, row in paths.items():
        result[f"{name}_ms_per_step"] = row["ms_per_step"]
        result[f"{name}_grid_hours"] = row["grid_hours"]
        if ref and name != "reference":
            result[f"{name}_speedup"] = row["speedup"]
    if export:
        result["export_s"] = export["seconds"]
    return result


def run_concurrency(args, sizes: Sizes, workdir: Path) -> dict:
    device = torch_device(args.device)
    prep = prepare(workdir, sizes, args.teacher)
    export_cache(prep, args.teacher, device, workdir)
    log(f"export: {prep.export_s:.2f} s")
    rows = concurrency.sweep(prep, args.teacher, args.student, args.device, sizes, args.concurrency, workdir,
                             threads=args.threads, barrier_timeout_s=args.barrier_timeout)
    export = export_projection(prep.export_s, prep.num_train, prep.cache_dtype)
    if export:
        for row in rows:
            row["grid_hours"] += export["projected_hours_all_teachers"]
    best = max(rows, key=lambda r: r["aggregate_steps_per_s"])
    return {**common_header(args, sizes, prep), "mode": "concurrency", "path": "fast",
            "precision": fast_precision(args.device), "cache_dtype": prep.cache_dtype,
            "export": export, "concurrency": rows, "best_processes": best["processes"],
            "best_aggregate_steps_per_s": best["aggregate_steps_per_s"]}


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


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks/train_speed.py", description=__doc__.split("\n\n")[0],
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
    p.add_argument("--paths", default=",".join(PATHS),
                   help=f"comma-separated subset of {','.join(PATHS + OPTIONAL_PATHS)} (default {','.join(PATHS)})")
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
    bad = [x for x in args.paths if x not in PATHS + OPTIONAL_PATHS]
    if bad or not args.paths:
        p.error(f"--paths: unknown {bad}; allowed: {', '.join(PATHS + OPTIONAL_PATHS)}")
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
        workdir = work_folder(stack, args.keep, "sortkd-bench-")
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
