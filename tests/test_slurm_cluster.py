"""The SLURM path against a real single-node Slurm (tests/slurm/cluster_up.sh).

The cluster comes from the session fixture `slurm_cluster` (tests/slurm/cluster_fixture.py,
made available by tests/conftest.py): it is brought up once (as root; it installs the Debian
packages if missing) for this module and tests/test_slurm_workflow.py, and torn down at the
end of the session, even when a test fails. The cluster tests are opt-in: they run only with
SORTKD_SLURM_TESTS=1 (`.ci/run` sets it). Where Slurm cannot be had (not root, packages not
installable) they are skipped with a reason that starts with "SLURM UNAVAILABLE:".
Set SORTKD_SLURM_KEEP_UP=1 to leave the cluster running afterwards.
The profile checks at the end need no cluster. (A scancel mid-training and its resume are
tested on the project's own workflow in tests/test_slurm_workflow.py.)

Every Snakemake run is wrapped in `timeout -s KILL`: a misconfigured status command makes
the SLURM executor wait forever.
"""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from slurm.cluster_fixture import (KILLED, REAL_PROFILE, REPO, SLURM_DIR, TEST_PROFILE,
                                   check_profile_was_honoured, clean_env, kill_run, submitted_ids)

SMOKE = SLURM_DIR / "smoke" / "Snakefile"
RUN_LIMIT_S = 300  # hard limit of one Snakemake run (SIGKILL)


def _snakemake_cmd(workdir: Path, *extra: str) -> list[str]:
    return [
        "timeout", "-s", "KILL", str(RUN_LIMIT_S),
        sys.executable, "-m", "snakemake",
        "--snakefile", str(SMOKE),
        "--directory", str(workdir),
        "--profile", str(REAL_PROFILE),
        "--workflow-profile", str(TEST_PROFILE),
        *extra,
    ]


def run_smoke(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run the smoke workflow to the end; output in .stdout, duration in .seconds."""
    t0 = time.monotonic()
    proc = subprocess.run(_snakemake_cmd(workdir, *extra), cwd=workdir, env=clean_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc.seconds = time.monotonic() - t0
    assert proc.returncode not in KILLED, f"Snakemake hung and was killed after {RUN_LIMIT_S} s:\n{proc.stdout}"
    return proc


def wait_for_marker(path: Path, lines: int, proc: subprocess.Popen, limit_s: float = 120) -> list[str]:
    """Wait until the job marker has `lines` lines; returns them."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if path.exists():
            got = path.read_text().split("\n")[:-1]
            if len(got) >= lines:
                return got
        assert proc.poll() is None, f"Snakemake ended before the job started:\n{proc.stdout.read()}"
        time.sleep(0.2)
    kill_run(proc)
    pytest.fail(f"no job start recorded in {path} after {limit_s} s")


def scancel(job_id: str) -> None:
    subprocess.run(["scancel", job_id], check=True, timeout=30)


def start_smoke(workdir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(_snakemake_cmd(workdir, *extra), cwd=workdir, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.mark.slurm
@pytest.mark.slow
def test_smoke_workflow_runs_every_job_on_slurm_with_distinct_gpus(slurm_cluster, tmp_path):
    proc = run_smoke(tmp_path)
    log = proc.stdout
    assert proc.returncode == 0, log
    check_profile_was_honoured(log)

    a = json.loads((tmp_path / "out" / "gpu_a.json").read_text())
    b = json.loads((tmp_path / "out" / "gpu_b.json").read_text())
    final = json.loads((tmp_path / "out" / "final.json").read_text())

    # Every job ran as its own Slurm job, and they are exactly the jobs Snakemake submitted.
    recorded = [a["slurm_job_id"], b["slurm_job_id"], final["slurm_job_id"]]
    assert all(j.isdigit() for j in recorded), recorded
    assert len(set(recorded)) == 3, recorded
    assert sorted(submitted_ids(log)) == sorted(recorded), log

    # The two GPU jobs overlapped in time, each with its own (fake) GPU.
    assert max(a["start"], b["start"]) < min(a["end"], b["end"]), (a, b)
    assert a["cuda_visible_devices"] not in (None, "") and b["cuda_visible_devices"] not in (None, "")
    assert a["cuda_visible_devices"] != b["cuda_visible_devices"], (a, b)
    assert final["start"] >= max(a["end"], b["end"])

    # Logs of successful jobs are kept (test profile), in the real profile's log folder.
    logs = sorted((tmp_path / "logs" / "slurm").rglob("*.log"))
    assert len(logs) == 3, logs

    first, last = min(a["start"], b["start"]), final["end"]
    print(f"\nsmoke workflow: {proc.seconds:.1f} s in Snakemake, {last - first:.1f} s from first "
          f"job start to last job end, job ids {recorded}", file=sys.stderr)


@pytest.mark.slurm
@pytest.mark.slow
def test_cancelled_job_is_retried_by_the_profile(slurm_cluster, tmp_path):
    """With retries (the real profile allows 3), Snakemake resubmits a cancelled job itself."""
    target = "out/gpu_b.json"
    proc = start_smoke(tmp_path, target, "--retries", "1", "--config", "names=b", "first_sleep=120", "sleep=1")
    marker = tmp_path / "markers" / "b.started"
    first = wait_for_marker(marker, 1, proc)[0].split()[0]
    scancel(first)
    try:
        out, _ = proc.communicate(timeout=RUN_LIMIT_S + 30)
    finally:
        kill_run(proc)
    assert proc.returncode == 0, out
    attempts = [ln.split()[0] for ln in marker.read_text().splitlines()]
    assert len(attempts) == 2 and attempts[0] == first and attempts[1] != first, attempts
    assert json.loads((tmp_path / target).read_text())["slurm_job_id"] == attempts[1]


# ---- The profiles themselves (no cluster needed) ---------------------------------------------
PROJECT_RULES = {"prepare_data", "teacher_train", "teacher_import", "logits_export",
                 "student_train", "report"}


def _profile(path: Path) -> dict:
    return yaml.safe_load((path / "config.yaml").read_text())


def test_real_profile_has_the_documented_keys():
    p = _profile(REAL_PROFILE)
    assert p["executor"] == "slurm"
    assert set(p["default-resources"]) >= {"slurm_partition", "slurm_account", "runtime",
                                           "mem_mb", "cpus_per_task"}
    assert set(p["set-resources"]) >= PROJECT_RULES
    # A 240-epoch student run fits, and preempted or timed-out runs come back and resume.
    assert p["set-resources"]["student_train"]["runtime"] >= 720
    assert p["slurm-requeue"] is True and p["retries"] >= 2
    assert p["rerun-incomplete"] is True and p["keep-going"] is True
    # Every key is documented in docs/slurm.md.
    doc = (REPO / "docs" / "slurm.md").read_text()
    missing = [k for k in list(p) + list(p["default-resources"]) if f"`{k}`" not in doc]
    assert not missing, f"keys of {REAL_PROFILE}/config.yaml not in docs/slurm.md: {missing}"


def test_test_profile_keeps_squeue_status_queries():
    """The plugin drops squeue for sacct (which hangs without slurmdbd) unless
    MinJobAge >= 3 x slurm-init-seconds-before-status-checks."""
    p = _profile(TEST_PROFILE)
    assert p["slurm-status-command"] == "squeue"
    conf = (SLURM_DIR / "conf" / "slurm.conf.in").read_text()
    min_job_age = int(re.search(r"^MinJobAge=(\d+)$", conf, re.M).group(1))
    assert 3 * p["slurm-init-seconds-before-status-checks"] <= min_job_age
    # Restated in full (a workflow profile replaces whole keys), so that no real-cluster
    # request reaches the small test node.
    real = _profile(REAL_PROFILE)
    assert set(p["set-resources"]) == set(real["set-resources"])
    assert set(p["default-resources"]) == set(real["default-resources"])


@pytest.mark.parametrize("profiles", [["--profile", str(REAL_PROFILE)],
                                      ["--profile", str(REAL_PROFILE),
                                       "--workflow-profile", str(TEST_PROFILE)]],
                         ids=["real", "real+test"])
def test_profiles_are_accepted_by_snakemake(profiles, tmp_path):
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.fail("snakemake-executor-plugin-slurm is not installed: pip install -e '.[slurm]'")
    proc = subprocess.run(
        ["timeout", "-s", "KILL", "120", sys.executable, "-m", "snakemake", "--dry-run",
         "--snakefile", str(SMOKE), "--directory", str(tmp_path), *profiles],
        cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    assert proc.returncode == 0, proc.stdout
