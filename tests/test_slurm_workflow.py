"""The project's demo workflow through the SLURM profile, on the real single-node Slurm.

The cluster is the session fixture `slurm_cluster` (tests/slurm/cluster_fixture.py; opt-in with
SORTKD_SLURM_TESTS=1, which `.ci/run` sets): two CPUs, declared as two cores even where
they are the two threads of one core, and two fake GPUs (gres on /dev/tty0-1), so Slurm runs
two GPU jobs at once, each with its own CUDA_VISIBLE_DEVICES; a poller of squeue records which
jobs ran together. The demo is shrunk with --config as in tests/test_workflow.py
(generated data of 5 classes x 8 train / 8 test images, 2 epochs) to both demo pairs (one reads
the teacher logit cache, one runs its teacher online), one method (kd), base and sort, one
seed: 9 Slurm jobs. `compute` asks for one GPU
per training/export job, so those jobs request a (fake) GPU from Slurm while they compute on
the CPU with one thread, exactly like the local reference run.

The same config runs twice: through `--profile workflow/profiles/slurm --workflow-profile
tests/slurm/profile` in one temp copy of the workflow, and locally (`--cores 2`) in another.
Every Snakemake call is wrapped in `timeout -s KILL`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from itertools import combinations
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from slurm.cluster_fixture import (KILLED, REPO, TEST_PROFILE, check_profile_was_honoured, clean_env, kill_run,
                                   submitted_ids)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

RUN_LIMIT_S = 420  # hard limit (SIGKILL) of one Snakemake run
OUT = "results/demo"
# config.demo.yaml with one method and one seed: `--config methods=...` cannot shrink it
# (Snakemake merges dicts key by key), so the test writes this copy of it next to the original.
CONFIG_FILE = "config.slurm-test.yaml"
SMALL = ["data={source: synthetic, root: results/demo/data, download: false, "
         "synthetic: {num_classes: 5, train_per_class: 8, test_per_class: 8, seed: 0}}",
         "recipe={epochs: 2, batch_size: 16, lr: 0.05, lr_milestones: [1]}",
         "teacher_recipe={epochs: 2, lr_milestones: [1]}",
         # One (fake) GPU per training/export job, computed on the CPU with one thread.
         "compute={device: cpu, precision: exact, threads: 1, gpus_per_job: 1, gpu_devices: [0], "
         "jobs_per_device: 1, mem_mb: 1000}"]
PAIRS = {"resnet14-resnet8": "cache", "resnet20-resnet8": "online"}
TEACHERS = ["resnet14", "resnet20"]
METHODS, VARIANTS, SEEDS = ["kd"], ["base", "sort"], [0]
JOBS = {"prepare_data": 1, "teacher_train": 2, "logits_export": 1, "student_train": 4, "report": 1}
# The student cancelled mid-training, with more epochs than the grid so that it can be caught.
TARGET = "resnet14-resnet8/kd/sort/seed0"
LONG_EPOCHS = 40
LONG = [*SMALL[:1], f"recipe={{epochs: {LONG_EPOCHS}, batch_size: 16, lr: 0.05, lr_milestones: [30]}}",
        *SMALL[2:]]
# runs.csv columns that may differ between two runs of the same config and seeds.
NOT_RESULTS = {"wall_s", "git_revision", "slurm_job_id"}
TIMING = {"epoch_s", "images_per_s", "wall_s"}

DURATIONS: dict[str, float] = {}


def copy_workflow(dst: Path) -> Path:
    for name in ("Snakefile", "config.yaml", "config.demo.yaml"):
        shutil.copy(REPO / name, dst / name)
    shutil.copytree(REPO / "workflow", dst / "workflow")
    shutil.copytree(REPO / "envs", dst / "envs")
    demo = yaml.safe_load((dst / "config.demo.yaml").read_text())
    demo["methods"] = {m: demo["methods"][m] for m in METHODS}
    demo["seeds"] = SEEDS
    (dst / CONFIG_FILE).write_text(yaml.safe_dump(demo, sort_keys=False))
    return dst


def _env(slurm: bool) -> dict[str, str]:
    env = clean_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    if not slurm:
        env["CUDA_VISIBLE_DEVICES"] = ""  # locally no GPU at all; under Slurm, Slurm sets it
    return env


def _cmd(workdir: Path, slurm: bool, targets: list[str], config: list[str], extra: list[str]) -> list[str]:
    cmd = ["timeout", "-s", "KILL", str(RUN_LIMIT_S), sys.executable, "-m", "snakemake", *targets, *extra]
    if slurm:
        cmd += ["--profile", str(workdir / "workflow" / "profiles" / "slurm"),
                "--workflow-profile", str(TEST_PROFILE)]
    else:
        cmd += ["--cores", "2"]
    # --configfile and --config take every word after them: targets and flags come first.
    return cmd + ["--configfile", CONFIG_FILE, "--config", *config]


def start(workdir: Path, name: str, *, slurm: bool, targets=(), config=SMALL, extra=()) -> subprocess.Popen:
    """Start Snakemake in the background; its output goes to <workdir>/<name>.log."""
    log = open(workdir / f"{name}.log", "w")
    proc = subprocess.Popen(_cmd(workdir, slurm, list(targets), list(config), list(extra)), cwd=workdir,
                            env=_env(slurm), stdout=log, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    log.close()
    proc.log_path = workdir / f"{name}.log"
    proc.t0 = time.monotonic()
    return proc


def finish(proc: subprocess.Popen, name: str) -> tuple[int, str]:
    """Wait for a run started by `start`; returns (exit code, its log); notes its duration."""
    try:
        proc.wait(timeout=RUN_LIMIT_S + 60)
    finally:
        kill_run(proc)
    DURATIONS[name] = time.monotonic() - proc.t0
    log = proc.log_path.read_text()
    assert proc.returncode not in KILLED, f"Snakemake ({name}) hung and was killed after {RUN_LIMIT_S} s:\n{log}"
    return proc.returncode, log


def run(workdir: Path, name: str, **kw) -> tuple[int, str]:
    return finish(start(workdir, name, **kw), name)


def student_paths() -> list[str]:
    return [f"{p}/{m}/{v}/seed{s}" for p in PAIRS for m in METHODS for v in VARIANTS for s in SEEDS]


def provenances(workdir: Path) -> dict[str, dict]:
    """provenance.json of every student and teacher run, by run."""
    out = {f"teacher {t}": workdir / OUT / "teachers" / t / "provenance.json" for t in TEACHERS}
    out.update({f"student {p}": workdir / OUT / "students" / p / "provenance.json" for p in student_paths()})
    return {name: json.loads(path.read_text()) for name, path in out.items()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def metrics(path: Path) -> list[dict]:
    """metrics.jsonl without its timing fields (those differ from run to run)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def without_timing(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in TIMING}


class RunningJobsWatcher:
    """Polls squeue while a workflow runs and keeps every set of jobs seen RUNNING together.

    What ran at the same time comes from Slurm itself: the timestamps in provenance.json cover
    only the training loop (about a second of each job here), so two jobs that Slurm did run
    side by side often have training windows that do not overlap to the second.
    """

    def __init__(self, interval_s: float = 0.2):
        self.interval_s = interval_s
        self.together: set[frozenset[str]] = set()
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i"], capture_output=True,
                                 text=True, env=clean_env(), timeout=30)
            if out.returncode == 0:
                self.polls += 1
                running = frozenset(out.stdout.split())
                if len(running) >= 2:
                    self.together.add(running)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "RunningJobsWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


@pytest.fixture(scope="module")
def grid(slurm_cluster, tmp_path_factory):
    """The shrunk demo, run through the SLURM profile and locally (same config, same seeds)."""
    on_slurm = copy_workflow(tmp_path_factory.mktemp("slurm"))
    local = copy_workflow(tmp_path_factory.mktemp("local"))
    # Both at once: the local run uses the cores that the Slurm run leaves idle while
    # Snakemake waits between status queries. Neither run's results depend on the other.
    t0 = time.monotonic()
    with RunningJobsWatcher() as watcher:
        slurm_proc = start(on_slurm, "slurm", slurm=True)
        local_proc = start(local, "local", slurm=False)
        try:
            lrc, llog = finish(local_proc, "local")
            rc, log = finish(slurm_proc, "slurm")
        finally:
            kill_run(local_proc)
            kill_run(slurm_proc)
    DURATIONS["both"] = time.monotonic() - t0
    assert rc == 0, f"the demo failed on Slurm:\n{log}"
    assert lrc == 0, f"the demo failed locally:\n{llog}"
    print(f"\ndemo grid ({sum(JOBS.values())} jobs), run side by side: {DURATIONS['slurm']:.1f} s on "
          f"Slurm, {DURATIONS['local']:.1f} s locally with --cores 2, {DURATIONS['both']:.1f} s in all",
          file=sys.stderr)
    return {"slurm": on_slurm, "local": local, "log": log, "together": watcher.together,
            "polls": watcher.polls}


def test_every_job_ran_as_its_own_slurm_job(grid):
    log, workdir = grid["log"], grid["slurm"]
    check_profile_was_honoured(log)
    # Snakemake submitted every job of the DAG (all but the target rule `all`) to Slurm, once:
    # a retried job would show up as an extra submission.
    submitted = submitted_ids(log)
    assert len(submitted) == sum(JOBS.values()) and len(set(submitted)) == len(submitted), log
    for rule, count in JOBS.items():
        assert len(re.findall(rf"^rule {rule}:$", log, re.M)) == count, (rule, log)
    # Slurm kept one log per job (test profile), named by its job id.
    logged = sorted(p.stem for p in (workdir / "logs" / "slurm").rglob("*.log"))
    assert logged == sorted(submitted), (logged, submitted)

    # Each training job recorded the Slurm job it ran in; they are distinct submitted jobs.
    prov = provenances(workdir)
    ids = {name: p["slurm_job_id"] for name, p in prov.items()}
    assert all(isinstance(j, str) and j.isdigit() for j in ids.values()), ids
    assert len(set(ids.values())) == len(ids), ids
    assert set(ids.values()) <= set(submitted), (ids, submitted)
    # ... and the report carries it into runs.csv.
    runs = pd.read_csv(workdir / OUT / "runs.csv", dtype={"slurm_job_id": str})
    from_csv = {f"student {r.pair}/{r.method}/{r.variant}/seed{r.seed}": r.slurm_job_id for r in runs.itertuples()}
    assert from_csv == {k: v for k, v in ids.items() if k.startswith("student")}


def test_gpu_jobs_got_their_device_from_slurm(grid):
    prov = provenances(grid["slurm"])
    n_gpus = int(os.environ.get("SORTKD_SLURM_GPUS", "2"))
    for name, p in prov.items():
        # The test started Snakemake without CUDA_VISIBLE_DEVICES: only Slurm can have set it.
        assert p["cuda_visible_devices"] in {str(i) for i in range(n_gpus)}, (name, p["cuda_visible_devices"])
        # The project's own GPU slot assigner stood aside.
        assert p["gpu_slot"] is None, (name, p["gpu_slot"])
    # Training jobs that Slurm ran at the same time (seen together in one squeue poll) had
    # different GPUs.
    by_job = {p["slurm_job_id"]: (name, p["cuda_visible_devices"]) for name, p in prov.items()}
    pairs = set()
    for running in grid["together"]:
        for a, b in combinations(sorted(j for j in running if j in by_job), 2):
            pairs.add((a, b))
            assert by_job[a][1] != by_job[b][1], (by_job[a], by_job[b])
    assert pairs, (f"squeue never showed two training jobs running at once ({grid['polls']} polls): "
                   "Slurm ran the GPU jobs one at a time, so the distinct-GPU check saw nothing")
    print(f"\n{len(pairs)} pairs of training jobs ran at once (squeue, {grid['polls']} polls), "
          "each pair on two GPUs", file=sys.stderr)


def test_results_equal_a_local_run(grid):
    on_slurm = pd.read_csv(grid["slurm"] / OUT / "runs.csv")
    local = pd.read_csv(grid["local"] / OUT / "runs.csv")
    key = ["pair", "method", "variant", "seed"]
    expected = sorted((p, m, v, s) for p in PAIRS for m in METHODS for v in VARIANTS for s in SEEDS)
    for run_path in student_paths():  # both teacher sources ran
        summary = json.loads((grid["slurm"] / OUT / "students" / run_path / "summary.json").read_text())
        assert summary["teacher_logits"] == PAIRS[run_path.split("/")[0]], run_path
    assert sorted(on_slurm[key].itertuples(index=False, name=None)) == expected
    assert sorted(local[key].itertuples(index=False, name=None)) == expected
    for column in ("best_top1", "best_top5", "best_epoch", "final_top1", "final_top5", "teacher_top1",
                   "teacher_wrong_frac", "epochs", "config_hash", "device"):
        assert column in on_slurm.columns, column
    # Same thread count per job on both sides.
    for runs in (on_slurm, local):
        assert runs["device"].str.startswith("cpu (").all(), runs["device"]
        assert runs["device"].str.endswith(", 1 threads)").all(), runs["device"]
    assert local["slurm_job_id"].isna().all() and on_slurm["slurm_job_id"].notna().all()

    columns = [c for c in on_slurm.columns if c not in NOT_RESULTS]
    assert columns == [c for c in local.columns if c not in NOT_RESULTS]
    a = on_slurm[columns].sort_values(key).reset_index(drop=True)
    b = local[columns].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    # Epoch by epoch too (losses to the last bit, not only the accuracies of 40 test images).
    for run_path in student_paths():
        assert metrics(grid["slurm"] / OUT / "students" / run_path / "metrics.jsonl") == \
            metrics(grid["local"] / OUT / "students" / run_path / "metrics.jsonl"), run_path
    # Upstream too: the same teacher weights and the same exported logit cache, bit for bit.
    # (Not model.pt's sha256: torch.save records the name of the temporary file that
    # model.pt is written to, so the bytes differ even when the weights are equal.)
    for t in TEACHERS:
        ta, tb = (json.loads((w / OUT / "teachers" / t / "teacher.json").read_text())
                  for w in (grid["slurm"], grid["local"]))
        ta.pop("checkpoint_sha256"), tb.pop("checkpoint_sha256")
        assert ta == tb, t
        wa, wb = (torch.load(w / OUT / "teachers" / t / "model.pt", map_location="cpu")["model"]
                  for w in (grid["slurm"], grid["local"]))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), t
    for f in ("train_logits.npy", "test_logits.npy"):
        assert sha256(grid["slurm"] / OUT / "logits" / "resnet14" / f) == \
            sha256(grid["local"] / OUT / "logits" / "resnet14" / f), f


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_cancelled_student_fails_the_workflow_and_resumes_from_its_checkpoint(grid):
    """scancel mid-training -> the workflow fails; rerun -> it resumes and ends as if never stopped."""
    from sortkd.training.loop import load_checkpoint

    target = f"{OUT}/students/{TARGET}/summary.json"
    on_slurm, local = grid["slurm"], grid["local"]
    # Only this run's epochs may count: drop the grid's 2-epoch run of the target.
    for w in (on_slurm, local):
        shutil.rmtree(w / OUT / "students" / TARGET)

    # The uninterrupted reference, locally.
    rc, llog = run(local, "local-long", slurm=False, targets=[target], config=LONG)
    assert rc == 0, llog

    # On Slurm, cancel the job once it has finished at least one epoch but not all.
    run_dir = on_slurm / OUT / "students" / TARGET
    proc = start(on_slurm, "slurm-cancelled", slurm=True, targets=[target], config=LONG,
                 extra=["--retries", "0"])
    job_id, done = None, 0
    deadline = time.monotonic() + RUN_LIMIT_S
    try:
        while time.monotonic() < deadline:
            if job_id is None:
                ids = submitted_ids(proc.log_path.read_text())
                job_id = ids[0] if ids else None
            done = _lines(run_dir / "metrics.jsonl")
            if job_id is not None and done >= 1:
                break
            assert proc.poll() is None, f"Snakemake ended before the job trained:\n{proc.log_path.read_text()}"
            time.sleep(0.05)
        else:
            pytest.fail(f"the student job did not finish an epoch within {RUN_LIMIT_S} s")
        assert done < LONG_EPOCHS, "the student finished before it could be cancelled: raise LONG_EPOCHS"
        subprocess.run(["scancel", job_id], check=True, timeout=30)
        t_cancel = time.monotonic()
        rc, log = finish(proc, "slurm-cancelled")
    finally:
        kill_run(proc)
    DURATIONS["cancel-to-failure"] = time.monotonic() - t_cancel
    assert rc != 0, log
    assert re.search(rf"SLURM-job '{job_id}' failed, SLURM status is: 'CANCELLED'", log), log
    assert not (on_slurm / target).exists()
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    assert ckpt is not None, "the cancelled job left no checkpoint"
    k = ckpt["epoch"]
    stopped_at = _lines(run_dir / "metrics.jsonl")
    # The checkpoint is written just before metrics.jsonl at the end of an epoch.
    assert 1 <= stopped_at <= k <= stopped_at + 1 and k < LONG_EPOCHS, (stopped_at, k)

    # Running the workflow again resumes the run from its checkpoint, in a new Slurm job.
    rc, log = run(on_slurm, "slurm-resumed", slurm=True, targets=[target], config=LONG,
                  extra=["--retries", "0"])
    assert rc == 0, log
    check_profile_was_honoured(log)
    train_log = (on_slurm / OUT / "logs" / "student_train" / f"{TARGET}.log").read_text()
    assert f"resuming after epoch {k} " in train_log, train_log
    assert f"epoch {k}/{LONG_EPOCHS}," not in train_log and f"epoch {k + 1}/{LONG_EPOCHS}," in train_log, train_log
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["slurm_job_id"] in submitted_ids(log) and prov["slurm_job_id"] != job_id

    # ... and ends exactly where the uninterrupted local run ended.
    reference = local / OUT / "students" / TARGET
    resumed = json.loads((run_dir / "summary.json").read_text())
    uninterrupted = json.loads((reference / "summary.json").read_text())
    assert resumed["epochs"] == LONG_EPOCHS
    assert without_timing(resumed) == without_timing(uninterrupted)
    assert metrics(run_dir / "metrics.jsonl") == metrics(reference / "metrics.jsonl")
    print(f"\ncancel/resume: local {LONG_EPOCHS}-epoch reference {DURATIONS['local-long']:.1f} s; "
          f"cancelled after epoch {k} ({DURATIONS['cancel-to-failure']:.1f} s from scancel to the "
          f"workflow's failure, {DURATIONS['slurm-cancelled']:.1f} s in all); resumed run "
          f"{DURATIONS['slurm-resumed']:.1f} s", file=sys.stderr)
