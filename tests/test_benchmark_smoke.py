"""Smoke tests of benchmarks/train_speed.py: it runs, prints its table and ends with one JSON line.

No timing is asserted here (speed is measured by the benchmark, never by a unit test).
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "train_speed.py"


def _run(*args, timeout=900):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, "no output on stdout"
    return lines, json.loads(lines[-1])


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def test_quick_cpu_comparison(tmp_path):
    out = tmp_path / "speed.json"
    lines, result = _run("--device", "cpu", "--quick", "--out", str(out))
    table = "\n".join(lines[:-1])
    assert "ms/step" in table and "grid h" in table
    for path in ("reference", "exact", "fast", "export"):
        assert any(line.startswith(path) for line in lines[:-1]), f"no table row for {path}:\n{table}"

    assert result["benchmark"] == "train_speed" and result["mode"] == "compare"
    assert result["device"] == "cpu" and result["quick"] is True
    for key in ("reference_ms_per_step", "exact_ms_per_step", "fast_ms_per_step",
                "reference_grid_hours", "exact_grid_hours", "fast_grid_hours",
                "exact_speedup", "fast_speedup", "export_s", "batch_size", "num_train", "steps_per_epoch"):
        assert _positive(result[key]), f"{key} = {result.get(key)!r}"
    for name in ("reference", "exact", "fast"):
        row = result["paths"][name]
        for key in ("ms_per_step", "timed_steps", "grid_hours", "time_ratio", "speedup"):
            assert _positive(row[key]), f"paths.{name}.{key} = {row.get(key)!r}"
    assert result["paths"]["reference"]["time_ratio"] == 1.0
    assert result["paths"]["exact"]["teacher_logits"] == "online"
    assert result["paths"]["fast"]["teacher_logits"] == "cache"
    assert result["grid"] == {"runs": 264, "epochs": 240, "steps_per_epoch": 782, "teachers": 6,
                              "train_images": 50000}
    assert _positive(result["export"]["projected_hours_all_teachers"])
    # --out holds the same JSON as the last line.
    assert json.loads(out.read_text()) == result


@pytest.mark.slow
def test_quick_cpu_concurrency():
    lines, result = _run("--device", "cpu", "--quick", "--concurrency", "1,2")
    assert "steps/s (all)" in "\n".join(lines[:-1])
    assert result["mode"] == "concurrency"
    assert [row["processes"] for row in result["concurrency"]] == [1, 2]
    for row in result["concurrency"]:
        for key in ("aggregate_steps_per_s", "mean_ms_per_step", "wall_s", "timed_steps", "grid_hours"):
            assert _positive(row[key]), f"{key} = {row.get(key)!r}"
    assert result["best_processes"] in (1, 2)


def _load_module():
    if "train_speed" in sys.modules:
        return sys.modules["train_speed"]
    spec = importlib.util.spec_from_file_location("train_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_speed"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_step_clock_skips_warmup_and_epoch_boundaries():
    bench = _load_module()
    syncs = []
    # 3 epochs of 4 steps, 2 warm-up steps: epoch 1 times steps 3-4, epochs 2 and 3 steps 2-4.
    clock = bench.StepClock(steps_per_epoch=4, warmup=2, max_timed=None, sync=lambda: syncs.append(1))
    for _ in range(12):
        clock.append(None)
    assert clock.timed == 2 + 3 + 3
    assert len(syncs) == 2 * 3  # one at each window start and end, none in between
    assert clock.ms_per_step >= 0

    clock = bench.StepClock(steps_per_epoch=4, warmup=2, max_timed=4, sync=lambda: None)
    with pytest.raises(bench.StopBenchmark):
        for _ in range(12):
            clock.append(None)
    assert clock.timed == 4 and clock.done == 7


def test_step_clock_needs_two_steps_per_epoch():
    bench = _load_module()
    with pytest.raises(ValueError, match="at least 2 steps"):
        bench.StepClock(steps_per_epoch=1, warmup=1, max_timed=None, sync=lambda: None)
