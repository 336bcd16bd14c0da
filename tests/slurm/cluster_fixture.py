"""The real single-node Slurm of tests/slurm, as one pytest fixture shared by every SLURM test.

tests/conftest.py imports `slurm_cluster` from here, so the cluster comes up once per pytest
session, for the first test that asks for it, and goes down at the end of the session, even
when a test fails.

The cluster tests are opt-in: bringing the cluster up installs Debian packages and starts
munged, slurmctld and slurmd as root, which a plain `python -m pytest` on a workstation should
not do unasked. They run only with SORTKD_SLURM_TESTS=1 (`.ci/run` sets it) and are skipped
with a one-line reason otherwise. Where Slurm cannot be had (not root, packages not
installable) they are skipped with a reason that starts with "SLURM UNAVAILABLE:"; any other
failure of cluster_up.sh fails them. Set SORTKD_SLURM_KEEP_UP=1 to leave the cluster running.

Also here: the helpers that every Snakemake-on-Slurm test needs (a clean environment, the
profile paths, reading the submissions from Snakemake's log).
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = REPO / "tests" / "slurm"
UP = SLURM_DIR / "cluster_up.sh"
DOWN = SLURM_DIR / "cluster_down.sh"
REAL_PROFILE = REPO / "workflow" / "profiles" / "slurm"
TEST_PROFILE = SLURM_DIR / "profile"
KILLED = (-9, 124, 137)  # how `timeout -s KILL` ends a run that hung
OPT_IN = "SORTKD_SLURM_TESTS"
OPT_IN_REASON = (f"Slurm cluster tests are opt-in: set {OPT_IN}=1 to run them (they install "
                 "Debian packages and start munged/slurmctld/slurmd as root)")


def slurm_tests_enabled() -> bool:
    return os.environ.get(OPT_IN) == "1"


def clean_env() -> dict[str, str]:
    """The caller's environment without Slurm job variables or a GPU mask."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def kill_run(proc: subprocess.Popen) -> None:
    """Kill a Snakemake run we started and everything under it (`timeout` leads its group)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def submitted_ids(log: str) -> list[str]:
    """The Slurm job ids that Snakemake reports having submitted, in order."""
    return re.findall(r"submitted with SLURM jobid (\d+)", log)


def check_profile_was_honoured(log: str) -> None:
    # squeue must really be used: if the plugin falls back to sacct here, the run hangs.
    # (It warns at start-up when MinJobAge < 3 x the status interval, and falls back at the
    # first status check.)
    assert "This may cause 'squeue' to miss" not in log, log
    assert "Falling back to 'sacct'" not in log, log
    assert "Using profile" in log and str(TEST_PROFILE) in log, log


@pytest.fixture(scope="session")
def slurm_cluster():
    if not slurm_tests_enabled():
        pytest.skip(OPT_IN_REASON)
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("SLURM UNAVAILABLE: needs bash and timeout")
    # find_spec, not import: importing the plugin runs `scontrol show config`, which waits
    # ~10 s when a slurm.conf names a controller that is not running.
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.fail("snakemake-executor-plugin-slurm is not installed: pip install -e '.[slurm]'")
    t0 = time.monotonic()
    try:
        up = subprocess.run([str(UP)], capture_output=True, text=True, timeout=600)
        if up.returncode == 77:
            reason = [ln for ln in up.stderr.splitlines() if "SLURM UNAVAILABLE" in ln]
            msg = reason[-1].split("SLURM UNAVAILABLE:", 1)[1].strip() if reason else up.stderr.strip()
            pytest.skip(f"SLURM UNAVAILABLE: {msg}")
        if up.returncode != 0:
            pytest.fail(f"cluster_up.sh failed with exit code {up.returncode}:\n{up.stdout}{up.stderr}")
        print(f"\ncluster up in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        yield
    finally:
        if os.environ.get("SORTKD_SLURM_KEEP_UP") != "1":
            t1 = time.monotonic()
            down = subprocess.run([str(DOWN)], capture_output=True, text=True, timeout=120)
            print(f"cluster down in {time.monotonic() - t1:.1f} s (exit {down.returncode})", file=sys.stderr)
            if down.returncode != 0:
                pytest.fail(f"cluster_down.sh failed with exit code {down.returncode}:\n{down.stderr}")
