"""Several fast-path runs on one device at once: the measurement behind ``jobs_per_device``.

For each process count N, N real processes (``python -m sortkd.speed.concurrency CONFIG``)
load the cache exported once beforehand, warm up, wait at a file barrier, then time their fast
path together. The aggregate is ``steps/s = sum of timed steps / (last window end - first
window start)``; that wall window may include per-epoch evaluations, so it errs low.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from sortkd.speed.projection import aggregate_grid_hours
from sortkd.speed.workload import Prepared, Sizes, log

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def worker_main(config_path: str) -> int:
    """One fast-path process of the sweep: prints one JSON line (its timing)."""
    import torch

    from sortkd.speed.timing import time_train_run

    cfg = json.loads(Path(config_path).read_text())
    sizes, prep = Sizes(**cfg["sizes"]), Prepared(**cfg["prep"])
    barrier_dir, wid = Path(cfg["barrier_dir"]), cfg["worker"]
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])

    def barrier() -> None:
        (barrier_dir / f"ready.{wid}").write_text("")
        deadline = time.time() + cfg["barrier_timeout_s"]
        while not (barrier_dir / "go").exists():
            if time.time() > deadline:
                raise TimeoutError("the other benchmark processes never became ready")
            time.sleep(0.002)

    row = time_train_run(prep, cfg["teacher"], cfg["student"], cfg["device"], sizes, "fast",
                         Path(cfg["workdir"]), out_name=f"c{cfg['processes']}_w{wid}",
                         threads=cfg["threads"], barrier=barrier)
    print(json.dumps(row), flush=True)
    return 0


def _worker_env() -> dict:
    # The workers must import this very package (a worktree, not an installed copy).
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
    return env


def run_processes(prep: Prepared, teacher: str, student: str, device: str, sizes: Sizes, processes: int,
                  workdir: Path, threads: int, barrier_timeout_s: float = 1800.0) -> dict:
    """Run ``processes`` fast-path processes together; their aggregate speed."""
    workdir = Path(workdir)
    barrier_dir = workdir / f"barrier_{processes}"
    shutil.rmtree(barrier_dir, ignore_errors=True)
    barrier_dir.mkdir(parents=True)
    procs, logs = [], []
    for wid in range(processes):
        cfg = {"teacher": teacher, "student": student, "device": device, "sizes": asdict(sizes),
               "prep": asdict(prep), "workdir": str(workdir), "barrier_dir": str(barrier_dir), "worker": wid,
               "processes": processes, "threads": threads, "barrier_timeout_s": barrier_timeout_s}
        cfg_path = barrier_dir / f"worker{wid}.json"
        cfg_path.write_text(json.dumps(cfg))
        out, err = open(barrier_dir / f"w{wid}.out", "w+"), open(barrier_dir / f"w{wid}.err", "w+")
        logs.append((out, err))
        procs.append(subprocess.Popen([sys.executable, "-m", "sortkd.speed.concurrency", str(cfg_path)],
                                      stdout=out, stderr=err, cwd=str(PACKAGE_ROOT), env=_worker_env()))
    try:
        deadline = time.time() + barrier_timeout_s
        while len(list(barrier_dir.glob("ready.*"))) < processes:
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
    row = {"processes": processes, "threads_per_process": threads, "aggregate_steps_per_s": rate,
           "wall_s": wall, "timed_steps": steps,
           "mean_ms_per_step": sum(r["ms_per_step"] for r in results) / processes,
           "grid_hours": aggregate_grid_hours(rate)}
    log(f"concurrency {processes}: {rate:.1f} steps/s in all, {row['mean_ms_per_step']:.2f} ms/step per process")
    return row


def sweep(prep: Prepared, teacher: str, student: str, device: str, sizes: Sizes, counts: list[int],
          workdir: Path, threads: int | None = None, barrier_timeout_s: float = 1800.0) -> list[dict]:
    """One row per process count; on the CPU each process gets cores / N threads by default."""
    rows = []
    for n in counts:
        per_process = threads or max(1, (os.cpu_count() or 1) // n)
        rows.append(run_processes(prep, teacher, student, device, sizes, n, workdir, per_process,
                                  barrier_timeout_s))
    base = rows[0]["aggregate_steps_per_s"]
    for row in rows:
        row["speedup_vs_first"] = row["aggregate_steps_per_s"] / base
    return rows


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1]))
