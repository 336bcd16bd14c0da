"""GPU slot assigner, exercised with real concurrent processes (no GPU needed: made-up ids)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sortkd import gpu_slots
from sortkd.gpu_slots import acquire_gpu_slots

WORKER = Path(__file__).resolve().parent / "helpers" / "slot_worker.py"


@pytest.fixture
def workers(tmp_path):
    """Start slot_worker.py processes; kills any still running when the test ends."""
    started: list[subprocess.Popen] = []

    def start(name: str, devices: str, *, jobs_per_device: int = 1, count: int = 1,
              hold_s: float = 0.3, timeout_s: float | None = 30.0,
              preset: str | None = None) -> tuple[subprocess.Popen, Path]:
        out = tmp_path / f"{name}.json"
        env = dict(os.environ)
        env.pop("CUDA_VISIBLE_DEVICES", None)  # conftest sets it; workers must start clean
        if preset is not None:
            env["CUDA_VISIBLE_DEVICES"] = preset
        cmd = [sys.executable, str(WORKER), "--devices", devices,
               "--jobs-per-device", str(jobs_per_device), "--count", str(count),
               "--lock-dir", str(tmp_path / "locks"), "--hold-s", str(hold_s),
               "--out", str(out)]
        if timeout_s is not None:
            cmd += ["--timeout-s", str(timeout_s)]
        log = open(tmp_path / f"{name}.log", "w")
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        started.append(proc)
        return proc, out

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for_record(path: Path, timeout_s: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"worker never wrote {path}")
        time.sleep(0.02)
    return json.loads(path.read_text())


def finish(proc: subprocess.Popen, out: Path, expect_rc: int = 0) -> dict:
    rc = proc.wait(timeout=30)
    log = out.with_suffix(".log").read_text()
    assert rc == expect_rc, f"worker exited {rc}:\n{log}"
    return json.loads(out.read_text())


def overlaps(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


@pytest.fixture
def no_preset(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_eight_jobs_share_two_slots_without_overlap(workers):
    procs = [workers(f"job{i}", "3,7", hold_s=0.3) for i in range(8)]
    records = [finish(proc, out) for proc, out in procs]

    assert len(records) == 8
    for rec in records:
        assert not rec["preset"] and not rec["torch_imported"]
        (slot,) = rec["slots"]
        expected = ["3", "7"][slot % 2]
        assert rec["cuda_visible_devices"] == rec["env"] == expected
        assert rec["devices"] == [expected]
    assert {rec["slots"][0] for rec in records} == {0, 1}
    for slot in (0, 1):
        on_slot = sorted((r for r in records if r["slots"] == [slot]), key=lambda r: r["start"])
        for earlier, later in zip(on_slot, on_slot[1:]):
            assert later["start"] >= earlier["end"], f"slot {slot} was held twice at once"


def test_two_jobs_per_device_run_together_and_a_third_waits(workers, tmp_path):
    first = workers("first", "0", jobs_per_device=2, hold_s=2.0)
    second = workers("second", "0", jobs_per_device=2, hold_s=2.0)
    wait_for_record(first[1])
    wait_for_record(second[1])
    third = workers("third", "0", jobs_per_device=2, hold_s=0.0)

    a, b, c = (finish(proc, out) for proc, out in (first, second, third))
    assert {a["cuda_visible_devices"], b["cuda_visible_devices"], c["cuda_visible_devices"]} \
        == {"0"}
    assert {a["slots"][0], b["slots"][0]} == {0, 1}
    assert overlaps(a, b)
    assert c["start"] >= min(a["end"], b["end"])
    assert "waiting for a free GPU slot" in (tmp_path / "third.log").read_text()


def test_sigkilled_holder_frees_its_slot(workers):
    holder_proc, holder_out = workers("holder", "0", hold_s=60.0)
    holder = wait_for_record(holder_out)
    waiter_proc, waiter_out = workers("waiter", "0", hold_s=0.0, timeout_s=20.0)
    time.sleep(0.5)
    assert not waiter_out.exists(), "the slot was handed out twice"

    holder_proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    holder_proc.wait(timeout=10)
    waiter = finish(waiter_proc, waiter_out)

    assert waiter["slots"] == holder["slots"] == [0]
    assert waiter["start"] - killed_at < 5.0


def test_preset_cuda_visible_devices_is_kept_and_locks_nothing(workers):
    preset_proc, preset_out = workers("preset", "0,1", hold_s=3.0, preset="5")
    kept = wait_for_record(preset_out)
    assert kept["preset"] is True
    assert kept["slots"] == []
    assert kept["devices"] == ["5"]
    assert kept["cuda_visible_devices"] == kept["env"] == "5"

    # While the preset job runs, another job can still take every configured slot.
    greedy_proc, greedy_out = workers("greedy", "0,1", count=2, hold_s=0.0, timeout_s=5.0)
    greedy = finish(greedy_proc, greedy_out)
    assert greedy["slots"] == [0, 1]
    assert preset_proc.poll() is None, "the preset job should still be running"
    finish(preset_proc, preset_out)


def test_empty_preset_means_no_gpu_and_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    lines: list[str] = []
    with acquire_gpu_slots(["0"], lock_dir=tmp_path / "locks", log=lines.append) as lease:
        assert lease == gpu_slots.SlotLease(slots=(), devices=(), cuda_visible_devices="",
                                            preset=True)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert not (tmp_path / "locks").exists()
    assert "no GPU" in lines[0]


def test_count_two_takes_two_distinct_devices(workers):
    proc, out = workers("ddp", "3,7", jobs_per_device=2, count=2, hold_s=0.0)
    rec = finish(proc, out)
    assert rec["devices"] == ["3", "7"]
    assert rec["cuda_visible_devices"] == rec["env"] == "3,7"
    assert len(set(rec["slots"])) == 2


def test_multi_gpu_job_never_holds_a_partial_set_while_waiting(workers):
    blocker_proc, blocker_out = workers("blocker", "3,7", hold_s=2.0)
    blocker = wait_for_record(blocker_out)
    assert blocker["devices"] == ["3"]
    ddp_proc, ddp_out = workers("ddp", "3,7", count=2, hold_s=0.0, timeout_s=20.0)
    time.sleep(0.3)
    # Device 7 is free; the waiting two-GPU job must not sit on it.
    single_proc, single_out = workers("single", "3,7", hold_s=0.0, timeout_s=3.0)
    single = finish(single_proc, single_out)
    blocker = finish(blocker_proc, blocker_out)
    ddp = finish(ddp_proc, ddp_out)

    assert single["devices"] == ["7"] and single["start"] < blocker["end"]
    assert ddp["devices"] == ["3", "7"] and ddp["start"] >= blocker["end"]


def test_timeout_raises_a_clear_error(workers, no_preset, tmp_path):
    _, holder_out = workers("holder", "0", hold_s=30.0)
    wait_for_record(holder_out)
    lines: list[str] = []
    with pytest.raises(TimeoutError, match=r"no free GPU slot after .*lock dir"):
        with acquire_gpu_slots(["0"], lock_dir=tmp_path / "locks", poll_s=0.05,
                               timeout_s=0.4, log=lines.append):
            pass
    waiting = [line for line in lines if "waiting" in line]
    assert len(waiting) == 1, "expected one line when waiting starts, not one per poll"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_with_block_sets_then_restores_environment_and_frees_the_slot(no_preset, tmp_path):
    locks = tmp_path / "locks"
    for _ in range(2):  # the second round only succeeds if the first released the slot
        with acquire_gpu_slots([4], lock_dir=locks, timeout_s=0.5, log=lambda _: None) as lease:
            assert lease.slots == (0,) and lease.devices == ("4",)
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "4"
        assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_hold_gpu_slots_keeps_the_lease_until_released(workers, no_preset, tmp_path):
    quiet = dict(lock_dir=tmp_path / "locks", log=lambda _: None)
    try:
        lease = gpu_slots.hold_gpu_slots(["2"], **quiet)
        assert lease.slots == (0,)
        assert lease.cuda_visible_devices == os.environ["CUDA_VISIBLE_DEVICES"] == "2"
        assert gpu_slots.hold_gpu_slots(["2"], **quiet) is lease
        blocked_proc, blocked_out = workers("blocked", "2", hold_s=0.0, timeout_s=0.3)
        blocked = finish(blocked_proc, blocked_out, expect_rc=3)
        assert "no free GPU slot" in blocked["error"]
    finally:
        gpu_slots.release_held_gpu_slots()
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    after_proc, after_out = workers("after", "2", hold_s=0.0, timeout_s=5.0)
    assert finish(after_proc, after_out)["slots"] == [0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(devices=[]), "devices list is empty"),
    (dict(devices=["0"], jobs_per_device=0), "jobs_per_device must be an integer >= 1"),
    (dict(devices=["0", "1"], count=3), "asks for 3 GPUs but only 2 distinct"),
    (dict(devices=["0", "0"], count=2), "asks for 2 GPUs but only 1 distinct"),
    (dict(devices=["0", ""]), "invalid GPU device id"),
    (dict(devices=["0"], count=0), "count .* must be an integer >= 1"),
])
def test_invalid_configuration_is_rejected(no_preset, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        with acquire_gpu_slots(lock_dir=tmp_path / "locks", **kwargs):
            pass


# --- the one GPU set-up of every CUDA command ---------------------------------------------------

@pytest.fixture
def no_slot_env(monkeypatch):
    # setenv first, so that monkeypatch records the variable's state before the test and
    # removes what hold_job_gpus writes: a leftover would reach every later subprocess (the
    # Slurm workflow tests check that their jobs report no slot).
    monkeypatch.setenv(gpu_slots.SLOT_ENV, "left over")
    monkeypatch.delenv(gpu_slots.SLOT_ENV)
    yield
    gpu_slots.release_held_gpu_slots()


def test_a_command_takes_its_slots_records_them_and_says_so(no_preset, no_slot_env, tmp_path):
    lines = []
    lease = gpu_slots.hold_job_gpus("5,6", jobs_per_device=1, lock_dir=tmp_path / "locks", count=2, log=lines.append)
    assert lease.slots == (0, 1) and lease.devices == ("5", "6")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5,6" and os.environ[gpu_slots.SLOT_ENV] == "0,1"
    assert lines[-1] == "GPU: CUDA_VISIBLE_DEVICES=5,6 (slot 0,1)"


def test_a_command_keeps_the_schedulers_devices(monkeypatch, no_slot_env, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setenv(gpu_slots.SLOT_ENV, "0,1")  # inherited from a parent that held slots: not ours
    lines = []
    lease = gpu_slots.hold_job_gpus("0", lock_dir=tmp_path / "locks", log=lines.append)
    assert lease.preset and gpu_slots.SLOT_ENV not in os.environ
    assert lines[-1] == "GPU: CUDA_VISIBLE_DEVICES=3 (kept from the scheduler)"
    assert not (tmp_path / "locks").exists()


def test_a_command_that_already_started_cuda_is_refused(no_preset, no_slot_env, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    # CUDA reads CUDA_VISIBLE_DEVICES once, at its start: a slot taken later would not apply.
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(RuntimeError, match="CUDA was initialised before the GPU slot was taken"):
        gpu_slots.hold_job_gpus("0", lock_dir=tmp_path / "locks", log=lambda _: None)
    assert "CUDA_VISIBLE_DEVICES" not in os.environ and not (tmp_path / "locks").exists()
