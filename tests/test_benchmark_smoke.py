"""Smoke tests of benchmarks/train_speed.py and the sortkd.speed modules behind it: it runs,
prints its table and ends with one JSON line; the step clock times what it should.

No timing is asserted here (speed is measured by the benchmark, never by a unit test).
"""
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
    lines, result = _run("--device", "cpu", "--quick", "--out", str(out), "--paths", "reference,exact,fast,mlkd")
    table = "\n".join(lines[:-1])
    assert "ms/step" in table and "grid h" in table
    for path in ("reference", "exact", "fast", "mlkd", "strong", "export"):
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
    # MLKD: the same cache for the weak view; the strong view's two costs measured on their own.
    assert result["paths"]["mlkd"]["teacher_logits"] == "cache" and "strong: online" in result["paths"]["mlkd"]["what"]
    assert result["mlkd_time_vs_fast"] == result["mlkd_ms_per_step"] / result["fast_ms_per_step"]
    assert _positive(result["strong_view"]["render_ms_per_batch"])
    assert _positive(result["strong_view"]["teacher_forward_ms_per_batch"])
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


def test_step_clock_skips_warmup_and_epoch_boundaries():
    from sortkd.speed.timing import StepClock, StopBenchmark

    syncs = []
    # 3 epochs of 4 steps, 2 warm-up steps: epoch 1 times steps 3-4, epochs 2 and 3 steps 2-4.
    clock = StepClock(steps_per_epoch=4, warmup=2, max_timed=None, sync=lambda: syncs.append(1))
    for _ in range(12):
        clock.append(None)
    assert clock.timed == 2 + 3 + 3
    assert len(syncs) == 2 * 3  # one at each window start and end, none in between
    assert clock.ms_per_step >= 0

    clock = StepClock(steps_per_epoch=4, warmup=2, max_timed=4, sync=lambda: None)
    with pytest.raises(StopBenchmark):
        for _ in range(12):
            clock.append(None)
    assert clock.timed == 4 and clock.done == 7


def test_step_clock_needs_two_steps_per_epoch():
    from sortkd.speed.timing import StepClock

    with pytest.raises(ValueError, match="at least 2 steps"):
        StepClock(steps_per_epoch=1, warmup=1, max_timed=None, sync=lambda: None)


class _RecordingGuard:
    def __init__(self, events):
        self.events = events
        self.is_open = False

    def open(self):
        assert not self.is_open
        self.is_open = True
        self.events.append("open")

    def close(self):
        if self.is_open:
            self.events.append("close")
        self.is_open = False


def test_step_clock_guards_exactly_the_timed_steps():
    """The host-sync guard is on while the timed steps run and off across epoch boundaries,
    and the device syncs of the clock itself fall outside it."""
    from sortkd.speed.timing import StepClock

    events = []
    guard = _RecordingGuard(events)
    clock = StepClock(steps_per_epoch=4, warmup=2, max_timed=None, sync=lambda: events.append("sync"),
                      guard=guard, keep_losses=True)
    guarded_steps = []
    for step in range(1, 13):
        if guard.is_open:  # this step's work runs inside a window
            guarded_steps.append(step)
        clock.append(float(step))
    assert guarded_steps == [3, 4, 6, 7, 8, 10, 11, 12]
    assert len(guarded_steps) == clock.timed
    assert events == ["sync", "open", "close", "sync"] * 3
    assert clock.losses == [float(s) for s in range(1, 13)]


def test_host_sync_guard_checks_nothing_off_cuda():
    import torch

    from sortkd.speed.timing import HostSyncGuard

    guard = HostSyncGuard(torch.device("cpu"))
    guard.open()
    guard.close()
    assert guard.windows == 0  # nothing was checked, and the count says so


def test_benchmark_options():
    from sortkd.speed.benchmark import parse_args, sizes_from_args

    args = parse_args(["--device", "cpu", "--quick"])
    assert (args.teacher, args.student, args.threads) == ("resnet14", "resnet8", 1)
    assert args.paths == ["reference", "exact", "fast"]
    sizes = sizes_from_args(args)
    assert (sizes.num_train, sizes.steps_per_epoch) == (32, 4)
    args = parse_args(["--device", "cpu", "--paths", "fast,exact", "--concurrency", "1,2,4,8", "--steps", "7"])
    assert args.paths == ["fast", "exact"] and args.concurrency == [1, 2, 4, 8]
    assert sizes_from_args(args).steps == 7
    for bad in (["--paths", "fast,slow"], ["--concurrency", "0,2"], ["--concurrency", "two"]):
        with pytest.raises(SystemExit):
            parse_args(["--device", "cpu", *bad])


def test_projection_of_grid_hours():
    from sortkd.speed.projection import aggregate_grid_hours, export_projection, grid_step_hours

    steps = 264 * 240 * 782  # the grid's training steps
    assert grid_step_hours(2.5) == pytest.approx(steps * 0.0025 / 3600, rel=1e-12)
    assert aggregate_grid_hours(100.0) == pytest.approx(steps / 100.0 / 3600, rel=1e-12)
    export = export_projection(20.0, 500, "float16")
    assert export["views"] == 500 * 162 and export["views_per_s"] == pytest.approx(4050.0)
    assert export["projected_s_per_teacher"] == pytest.approx(20.0 * 100)  # 50 000 / 500 images
    assert export["projected_hours_all_teachers"] == pytest.approx(6 * 2000 / 3600)
    assert export_projection(None, 500, "float16") is None
