"""`python -m sortkd gpu-check`: every part that does not need CUDA, run on the CPU.

The CUDA run itself cannot happen here; docs/benchmarks.md lists what only it can catch.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sortkd import gpu_check
from sortkd.gpu_check import FAIL, PASS, SKIP, Check

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def test_without_cuda_it_says_so_in_one_line_and_exits_2(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "sortkd", "gpu-check", "--out", str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA GPU"), lines
    assert not out.exists()


# --- the projection ---------------------------------------------------------------------

def test_grid_hours_arithmetic():
    from sortkd.speed.projection import (cifar_epoch_seconds, epoch_overhead_s, grid_hours,
                                         recommend_jobs_per_device)

    # 4 runs per GPU on 1 GPU: ceil(264 / 4) = 66 waves of 240 epochs of
    # (782 steps x 2 ms + 0.5 s), after 6 exports of 100 s one at a time.
    assert cifar_epoch_seconds(2.0, 0.5) == pytest.approx(782 * 0.002 + 0.5)
    assert grid_hours(4, 2.0, 0.5, 1, 100.0) == pytest.approx((66 * 240 * 2.064 + 6 * 100.0) / 3600)
    # 8 per GPU on 8 GPUs: 64 lanes, ceil(264 / 64) = 5 waves; exports ceil(6 / 8) = 1 round.
    assert grid_hours(8, 3.0, 0.0, 8, 100.0) == pytest.approx((5 * 240 * 782 * 0.003 + 100.0) / 3600)
    # An epoch of 10 steps at 2 ms that took 0.05 s spent 0.03 s outside its steps.
    assert epoch_overhead_s(0.05, 10, 2.0) == pytest.approx(0.03)
    assert epoch_overhead_s(0.019, 10, 2.0) == 0.0
    with pytest.raises(ValueError, match="runs_per_gpu"):
        grid_hours(0, 2.0, 0.5, 1, 100.0)
    # The fewest runs per GPU within 10 % of the best: 4 (10.5 h <= 1.1 x 10.0 h), not 8.
    assert recommend_jobs_per_device({1: 40.0, 2: 21.0, 4: 10.5, 8: 10.0}) == 4
    assert recommend_jobs_per_device({1: 40.0, 2: 21.0, 4: 12.0, 8: 10.0}) == 8
    with pytest.raises(ValueError, match="no concurrency"):
        recommend_jobs_per_device({})


# --- losses, syncs, speed -----------------------------------------------------------------

def test_compare_losses():
    same = gpu_check.compare_losses([2.0, 1.0, 0.5], [2.0, 1.0, 0.5])
    assert same["within"] and same["max_rel_diff"] == 0.0 and same["steps"] == 3
    near = gpu_check.compare_losses([2.0, 1.0, 0.5], [2.02, 1.0, 0.509])
    assert near["within"] and near["max_rel_diff"] == pytest.approx(0.018) and near["worst_step"] == 3
    far = gpu_check.compare_losses([2.0, 1.0, 0.5], [2.0, 1.03, 0.5])
    assert not far["within"] and far["worst_step"] == 2 and far["max_rel_diff"] == pytest.approx(0.03)
    assert not gpu_check.compare_losses([1.0, 2.0], [1.0])["within"]
    assert not gpu_check.compare_losses([], [])["within"]
    assert not gpu_check.compare_losses([1.0, float("nan")], [1.0, 1.0])["within"]
    zero = gpu_check.compare_losses([0.0, 1.0], [1e-9, 1.0])
    assert not zero["within"] and math.isinf(zero["max_rel_diff"])


def test_check_losses_and_host_syncs():
    ok = {"losses": [1.0, 0.9], "timed_steps": 5, "host_sync_windows": 2}
    off = {"losses": [1.0, 0.8], "timed_steps": 5, "host_sync_windows": 2}
    assert gpu_check.check_losses(ok, dict(ok), "bf16").status == PASS
    assert gpu_check.check_losses(ok, off, "bf16").status == FAIL
    died = {"error": "RuntimeError: called a synchronizing CUDA operation"}
    assert "synchronizing" in gpu_check.check_losses(ok, died, "bf16").detail

    assert gpu_check.check_host_syncs({"exact": ok, "fast": ok}, cuda=True).status == PASS
    assert gpu_check.check_host_syncs({"exact": ok, "fast": died}, cuda=True).status == FAIL
    unchecked = dict(ok, host_sync_windows=0)
    assert gpu_check.check_host_syncs({"exact": ok, "fast": unchecked}, cuda=True).status == FAIL
    # On the CPU nothing can be checked: never a PASS.
    assert gpu_check.check_host_syncs({"exact": unchecked, "fast": unchecked}, cuda=False).status == SKIP


def test_check_speed():
    paths = {"reference": {"ms_per_step": 14.8, "timed_steps": 300},
             "exact": {"ms_per_step": 12.0, "timed_steps": 300},
             "fast": {"ms_per_step": 7.4, "timed_steps": 300}}
    check = gpu_check.check_speed(paths)
    assert check.status == PASS and check.measured["fast_speedup"] == pytest.approx(2.0)
    slow = dict(paths, fast={"ms_per_step": 15.0, "timed_steps": 300})
    assert gpu_check.check_speed(slow).status == FAIL
    assert gpu_check.check_speed(dict(paths, reference={"error": "OSError: x"})).status == FAIL
    assert gpu_check.check_speed({"exact": paths["exact"], "fast": paths["fast"]}).status == FAIL


# --- table and JSON -------------------------------------------------------------------------

def _report(checks):
    from dataclasses import asdict

    return {"device": "NVIDIA Test GPU", "gpus": 2, "torch": "2.11.0", "seconds": 12.5,
            "checks": {c.name: asdict(c) for c in checks}, "passed": all(c.status != FAIL for c in checks),
            "epoch_seconds": {"resnet8x4": 1.31}, "grid_hours": {"1": 30.0, "2": 16.0, "4": 9.0, "8": 8.5},
            "jobs_per_device_recommended": 4, "odd": float("inf")}


def test_table_and_report_file(tmp_path):
    checks = [Check("gpu_slots", PASS, "2 concurrent runs took slots 0 and 1"),
              Check("losses", FAIL, "step 7 differs by 0.031 relative", {"max_rel_diff": 0.031}),
              Check("host_syncs", SKIP, "nothing checked")]
    report = _report(checks)
    table = gpu_check.format_table(report).splitlines()
    rows = {line.split()[0]: line.split()[1] for line in table[3:6]}
    assert rows == {"gpu_slots": "PASS", "losses": "FAIL", "host_syncs": "SKIP"}
    assert "NVIDIA Test GPU" in table[0]
    assert any("1.31 s per CIFAR-100 epoch" in line for line in table)
    assert any("recommended compute.jobs_per_device: 4" in line for line in table)
    assert table[-1] == "result: FAIL (losses)"

    out = tmp_path / "results" / "gpu_check.json"
    gpu_check.write_report(report, out)
    written = json.loads(out.read_text())
    assert written["checks"]["losses"] == {"name": "losses", "status": "FAIL",
                                           "detail": "step 7 differs by 0.031 relative",
                                           "measured": {"max_rel_diff": 0.031}}
    assert written["odd"] == "inf"  # strict JSON: no Infinity literal
    assert written["grid_hours"]["4"] == 9.0 and written["jobs_per_device_recommended"] == 4

    passing = _report([Check("export", PASS, "ok"), Check("host_syncs", SKIP, "nothing checked")])
    assert gpu_check.format_table(passing).splitlines()[-1] == "result: PASS (2 checks)"


# --- the export against the online teacher, on the CPU -----------------------------------

@pytest.fixture(scope="module")
def micro_cache(tmp_path_factory):
    from sortkd.speed.workload import Prepared, Sizes, export_cache, prepare

    work = tmp_path_factory.mktemp("gpu_check_export")
    sizes = Sizes(classes=4, train_per_class=3, test_per_class=2, batch_size=4, epochs=1, warmup=1, steps=None)
    prep = prepare(work, sizes, "resnet8")
    dirs = {}
    for dtype in ("float16", "float32"):
        p = Prepared(**{**prep.__dict__})
        export_cache(p, "resnet8", CPU, work / dtype, dtype=dtype)
        dirs[dtype] = Path(p.cache_dir)
    return prep, dirs


def _check_export(prep, cache_dir):
    return gpu_check.check_export(Path(prep.teacher_dir), "resnet8", Path(prep.data), cache_dir, CPU, samples=600)


def test_export_check_passes_on_a_true_export(micro_cache):
    prep, dirs = micro_cache
    for dtype, cache_dir in dirs.items():
        check = _check_export(prep, cache_dir)
        assert check.status == PASS, check.detail
        assert check.measured["dtype"] == dtype and check.measured["samples"] == 600
        assert check.measured["max_excess_over_bound"] <= 0
    assert _check_export(prep, dirs["float32"]).measured["max_abs_diff"] < 1e-4


def test_export_check_fails_on_a_bf16_forward(micro_cache, tmp_path):
    """A cache holding bf16-rounded logits (what a bf16 forward would give) is caught."""
    import shutil

    prep, dirs = micro_cache
    bad = tmp_path / "bf16_cache"
    shutil.copytree(dirs["float32"], bad)
    logits = np.load(bad / "train_logits.npy")
    rounded = torch.from_numpy(logits).to(torch.bfloat16).float().numpy()
    assert not np.array_equal(rounded, logits)
    np.save(bad / "train_logits.npy", rounded)  # same shape and dtype: same size, meta.json still fits
    check = _check_export(prep, bad)
    assert check.status == FAIL and "not fp32" in check.detail
    assert check.measured["max_excess_over_bound"] > 0


def test_export_check_fails_when_meta_says_low_precision(micro_cache, tmp_path):
    import shutil

    prep, dirs = micro_cache
    bad = tmp_path / "meta_bf16"
    shutil.copytree(dirs["float32"], bad)
    meta = json.loads((bad / "meta.json").read_text())
    meta["forward_dtype"] = "bfloat16"
    (bad / "meta.json").write_text(json.dumps(meta))
    check = _check_export(prep, bad)
    assert check.status == FAIL and "bfloat16" in check.detail


# --- GPU slots with real processes ------------------------------------------------------------

def test_slot_check_two_devices(tmp_path):
    check = gpu_check.check_gpu_slots(["0", "1"], tmp_path, init_cuda=False, timeout_s=60)
    assert check.status == PASS, check.detail
    assert sorted(check.measured["slots"]) == [0, 1]
    assert sorted(check.measured["cuda_visible_devices"]) == ["0", "1"]


def test_slot_check_one_device_two_slots(tmp_path):
    check = gpu_check.check_gpu_slots(["7"], tmp_path, jobs_per_device=2, init_cuda=False, timeout_s=60)
    assert check.status == PASS, check.detail
    assert sorted(check.measured["slots"]) == [0, 1] and check.measured["cuda_visible_devices"] == ["7", "7"]


def test_slot_check_fails_when_runs_cannot_share(tmp_path):
    # One slot for two concurrent runs: the second one times out waiting.
    check = gpu_check.check_gpu_slots(["0"], tmp_path, jobs_per_device=1, init_cuda=False, timeout_s=3)
    assert check.status == FAIL and "did not both get a slot" in check.detail


# --- the whole check, on the CPU ----------------------------------------------------------------

@pytest.mark.slow
def test_run_checks_on_the_cpu(tmp_path):
    from sortkd.speed.projection import grid_hours, recommend_jobs_per_device

    options = gpu_check.Options(teacher="resnet8", student="resnet8", classes=4, train_per_class=8,
                                test_per_class=4, batch_size=8, warmup=2, steps=10, concurrency=(1, 2),
                                workers=0, threads=1)
    report = gpu_check.run_checks(options, "cpu", tmp_path)
    status = {name: c["status"] for name, c in report["checks"].items()}
    assert status["gpu_slots"] == status["export"] == status["losses"] == status["concurrency"] == PASS, report
    assert status["host_syncs"] == SKIP
    assert status["speed"] in (PASS, FAIL)  # which is faster on a busy CPU is not asserted
    assert set(report["speed"]) == {"reference", "exact", "fast"}
    assert all(report["speed"][p]["timed_steps"] > 0 for p in report["speed"])
    # The exact and the cached run saw the same fp32 teacher logits (float32 cache on the CPU).
    assert report["checks"]["losses"]["measured"]["max_rel_diff"] < 1e-5
    assert report["export_meta"]["forward_dtype"] == "float32"
    # The projection is the arithmetic of what was measured.
    fast = report["speed"]["fast"]
    assert report["epoch_seconds"] == {"resnet8": pytest.approx(782 * fast["ms_per_step"] / 1000
                                                                + report["epoch_overhead_s"])}
    expected = {str(r["processes"]): grid_hours(r["processes"], r["mean_ms_per_step"], report["epoch_overhead_s"],
                                                1, report["export"]["projected_s_per_teacher"])
                for r in report["concurrency"]}
    assert report["grid_hours"] == pytest.approx(expected)
    assert report["jobs_per_device_recommended"] == recommend_jobs_per_device(
        {int(n): h for n, h in expected.items()})
    table = gpu_check.format_table(report)
    assert "host_syncs   SKIP" in table
    gpu_check.write_report(report, tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text())["device"].startswith("cpu")
