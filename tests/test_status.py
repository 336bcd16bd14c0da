"""`python -m sortkd status` on results folders made by the real trainer and the real CLI.

The grid: one pair (resnet8 -> resnet8, the tiny teacher), kd, base/sort, seeds 0-2 = 6 runs:
base/seed0 done, sort/seed0 stopped after epoch 2 of 3, base/seed1 failed (its job log holds the
CLI's error line), the other three pending. Every expected number is re-derived here from the
files the runs wrote.
"""
import contextlib
import dataclasses
import json
import shutil
import traceback
from pathlib import Path

import pytest
import yaml

from sortkd import status as st
from sortkd.cli import main
from sortkd.experiment.grid import Grid, StudentRun
from sortkd.training.cifar import train_run

EPOCHS = 3
PAIR = "resnet8-resnet8"


def write_config(root: Path, device: str = "cpu", **compute) -> Path:
    (root / "pairs.yaml").write_text(yaml.safe_dump({PAIR: {"teacher": "resnet8", "student": "resnet8",
                                                            "lr": 0.05}}))
    config = {
        "experiment": "t", "dataset": "synthetic-cifar",
        "data": {"source": "synthetic", "root": "data"},
        "compute": {"device": device, "precision": "exact", "threads": 1, **compute},
        "teacher_logits": "online",
        "recipe": {"epochs": EPOCHS, "batch_size": 16, "lr": 0.05, "lr_milestones": [2]},
        "teachers": {"resnet8": {"source": "download"}},
        "pairs_table": "pairs.yaml",
        "methods": {"kd": {}}, "variants": ["base", "sort"], "seeds": [0, 1, 2],
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_as_job(log: Path, fn):
    """Like the Snakemake rule: the job's stdout and stderr go to its log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        return fn()


@pytest.fixture(scope="module")
def results(tiny_data, tiny_teacher, tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    config = st.load_config(write_config(root))
    grid = Grid(config, root=root)
    (root / "data").mkdir()
    shutil.copy(tiny_data, root / grid.data_file)
    shutil.copytree(tiny_teacher, root / grid.teacher_dir("resnet8"))

    def spec(run):  # the grid's spec, with its relative paths made absolute for this process
        s = grid.student_spec(run)
        assert s.epochs == EPOCHS
        return dataclasses.replace(s, data=str(root / s.data), teacher_dir=str(root / s.teacher_dir))

    def paths(run):
        return root / grid.student_dir(run), root / grid.out / "logs" / "student_train" / f"{run.path}.log"

    done, stopped, failed = StudentRun(PAIR, "kd", "base", 0), StudentRun(PAIR, "kd", "sort", 0), \
        StudentRun(PAIR, "kd", "base", 1)
    run_dir, log = paths(done)
    run_as_job(log, lambda: train_run(spec(done), run_dir))
    run_dir, log = paths(stopped)
    run_as_job(log, lambda: train_run(spec(stopped), run_dir, stop_after_epoch=2))
    run_dir, log = paths(failed)
    broken = dataclasses.replace(spec(failed), teacher_dir=str(root / "results/t/teachers/missing"))
    rc = run_as_job(log, lambda: main(["train", "--spec", json.dumps(broken.to_dict()),
                                       "--out-dir", str(run_dir)]))
    assert rc == 1
    return {"root": root, "config": config, "grid": grid, "paths": paths,
            "done": done, "stopped": stopped, "failed": failed}


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def last_activity(run_dir: Path, log: Path) -> float:
    return max((run_dir / "metrics.jsonl").stat().st_mtime, log.stat().st_mtime)


def by_name(report) -> dict:
    return {r.name: r for r in report.runs}


def test_states_eta_and_totals(results):
    root, paths = results["root"], results["paths"]
    source = st.source_from_config(results["config"], root)
    stopped_dir, stopped_log = paths(results["stopped"])
    stopped_rows = metrics(stopped_dir)
    assert [r["epoch"] for r in stopped_rows] == [1, 2]
    t = sum(r["epoch_s"] for r in stopped_rows) / 2           # the mean of its (≤5) recent epochs
    idle = 0.5 * t
    report = st.collect(source, now=last_activity(stopped_dir, stopped_log) + idle)
    runs = by_name(report)
    assert [r.name for r in report.runs] == [r.path for r in results["grid"].student_runs()]

    done_dir, _ = paths(results["done"])
    summary = json.loads((done_dir / "summary.json").read_text())
    done = runs[results["done"].path]
    assert (done.state, done.best_top1, done.final_top1, done.best_epoch) == \
        ("done", summary["best_top1"], summary["final_top1"], summary["best_epoch"])

    running = runs[results["stopped"].path]
    assert (running.state, running.epochs_done, running.epochs_total) == ("running", 2, EPOCHS)
    assert running.last_epoch_s == stopped_rows[-1]["epoch_s"]
    assert running.epoch_s == pytest.approx(t, rel=1e-12)
    # ETA: (E - e) epochs at t, less the time the current epoch has run, but at least (E - e - 1) epochs.
    # (abs: now - mtime loses float bits at Unix-epoch magnitudes)
    assert running.eta_s == pytest.approx(max((EPOCHS - 2) * t - idle, (EPOCHS - 3) * t), abs=1e-5)

    failed_dir, failed_log = paths(results["failed"])
    error_lines = [l for l in failed_log.read_text().splitlines() if l.startswith("sortkd train: error: ")]
    assert len(error_lines) == 1 and "teacher info" in error_lines[0]
    failed = runs[results["failed"].path]
    assert (failed.state, failed.error, failed.log) == ("failed", error_lines[0], str(failed_log))
    assert not (failed_dir / "summary.json").exists()

    pending = [r for r in report.runs if r.state == "pending"]
    assert sorted(r.name for r in pending) == sorted(
        f"{PAIR}/kd/{v}/seed{s}" for v, s in (("sort", 1), ("base", 2), ("sort", 2)))

    # Estimates for runs without epochs of their own: every measured epoch of the same pair.
    measured = [r["epoch_s"] for r in metrics(done_dir) + stopped_rows]
    estimate = sum(measured) / len(measured)
    for run in pending + [failed]:
        assert (run.epoch_s_source, run.left_s) == ("pair", pytest.approx(EPOCHS * estimate, rel=1e-9))

    totals = report.totals
    assert totals.counts == {"done": 1, "running": 1, "stalled": 0, "failed": 1, "pending": 3}
    assert totals.unit == "CPU-hours"                          # device cpu: 1 thread per job
    assert totals.spent_h == pytest.approx(sum(measured) / 3600, rel=1e-9)
    left_job_s = running.eta_s + 4 * EPOCHS * estimate
    assert totals.left_h == pytest.approx(left_job_s / 3600, rel=1e-9)
    assert totals.without_estimate == 0
    assert (totals.running, totals.wall_concurrency) == (1, 1)
    assert totals.wall_left_s == pytest.approx(max(left_job_s / 1, running.eta_s), rel=1e-9)

    text = st.render_text(report)
    assert "runs: 1 done, 1 running, 0 stalled, 1 failed, 3 pending (6 in all)" in text
    width = st.ERROR_WIDTH                     # the text view cuts long error lines; --json has them whole
    shown = error_lines[0] if len(error_lines[0]) <= width else error_lines[0][:width - 1] + "…"
    assert f"failed   epoch 0/{EPOCHS}  {shown}  log: {failed_log}" in text
    assert f"epoch 2/{EPOCHS}" in text and f"ETA {st.duration(running.eta_s)}" in text
    assert f"{PAIR} · kd" in text


def test_no_new_epoch_for_three_epoch_times_is_stalled(results):
    paths = results["paths"]
    stopped_dir, stopped_log = paths(results["stopped"])
    rows = metrics(stopped_dir)
    t = sum(r["epoch_s"] for r in rows) / len(rows)
    threshold = max(3 * t, st.STALL_FLOOR_S)
    last = last_activity(stopped_dir, stopped_log)
    source = st.source_from_config(results["config"], results["root"])
    assert by_name(st.collect(source, now=last + threshold - 1))[results["stopped"].path].state == "running"
    report = st.collect(source, now=last + threshold + 1)
    stalled = by_name(report)[results["stopped"].path]
    assert (stalled.state, stalled.eta_s) == ("stalled", None)
    assert stalled.idle_s == pytest.approx(threshold + 1, abs=1e-5)
    assert stalled.left_s == pytest.approx((EPOCHS - 2) * t, rel=1e-9)
    assert report.totals.counts["stalled"] == 1 and report.totals.running == 0
    assert report.totals.wall_left_s is None                    # nothing runs, CPU: no slot count
    text = st.render_text(report)
    assert f"no new epoch for {st.duration(threshold + 1)}" in text
    assert "wall time left: unknown (no job is running now)" in text


def test_cli_json_and_text(results, monkeypatch, capsys):
    monkeypatch.chdir(results["root"])
    assert main(["status", "--config", "config.yaml", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    states = {r["name"]: r["state"] for r in data["runs"]}
    assert states[results["done"].path] == "done" and states[results["failed"].path] == "failed"
    assert states[results["stopped"].path] in ("running", "stalled")   # real clock: either, by now
    assert data["totals"]["counts"]["pending"] == 3 and data["experiment"] == "t"
    failed = next(r for r in data["runs"] if r["state"] == "failed")
    assert failed["log"] == f"results/t/logs/student_train/{results['failed'].path}.log"

    assert main(["status", "--config", "config.yaml"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("sortkd status · experiment t · results/t · ")
    assert "sortkd train: error: teacher info" in text


def test_teachers_trained_in_the_grid_are_runs_too(results):
    config = json.loads(json.dumps(results["config"]))
    config["teachers"]["resnet8"]["source"] = "train"
    report = st.collect(st.source_from_config(config, results["root"]))
    teacher = report.runs[0]
    teacher_dir = results["root"] / results["grid"].teacher_dir("resnet8")
    summary = json.loads((teacher_dir / "summary.json").read_text())
    assert (teacher.group, teacher.name, teacher.state, teacher.best_top1) == \
        ("teachers", "resnet8", "done", summary["best_top1"])
    assert teacher.spent_s == sum(r["epoch_s"] for r in metrics(teacher_dir))
    # The students' estimates still come from student epochs only.
    pending = next(r for r in report.runs if r.state == "pending")
    done_dir, _ = results["paths"](results["done"])
    stopped_dir, _ = results["paths"](results["stopped"])
    measured = [r["epoch_s"] for r in metrics(done_dir) + metrics(stopped_dir)]
    assert pending.epoch_s == pytest.approx(sum(measured) / len(measured), rel=1e-12)


def test_experiment_folder_lists_what_is_on_disk(results):
    root = results["root"]
    report = st.collect(st.source_from_experiment(root / "results" / "t"))
    runs = by_name(report)
    # The teacher folder was made by train_run (metrics.jsonl): it counts as a teacher trained here.
    assert sorted(runs) == sorted(["resnet8"] + [r.path for r in (results["done"], results["stopped"],
                                                                  results["failed"])])
    assert (runs["resnet8"].group, runs["resnet8"].state) == ("teachers", "done")
    # Without a config the planned epochs come from the job log's progress lines.
    assert runs[results["stopped"].path].epochs_total == EPOCHS
    assert runs[results["done"].path].state == "done" and runs[results["failed"].path].state == "failed"
    assert report.totals.counts["pending"] == 0
    assert report.totals.unit == "CPU-hours"                    # from the done run's provenance.json


def test_half_written_files_count_as_not_there_yet(results, tmp_path):
    src = results["paths"](results["done"])[0]
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    full = (run_dir / "metrics.jsonl").read_text()
    lines = full.splitlines(keepends=True)
    (run_dir / "metrics.jsonl").write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    summary = (run_dir / "summary.json").read_text()
    (run_dir / "summary.json").write_text(summary[: len(summary) // 2])
    assert [r["epoch"] for r in st.read_metrics(run_dir / "metrics.jsonl")] == list(range(1, EPOCHS))
    target = st.RunTarget("cifar", "x", "resnet8", PAIR, "kd", "base", 0, run_dir, tmp_path / "no.log", EPOCHS, 1)
    run = st.read_run(target, now=0.0)
    assert (run.state, run.epochs_done) == ("running", EPOCHS - 1)


def test_error_line_of_a_traceback():
    try:
        raise ValueError("the first line\nthe second line")
    except ValueError:
        trace = traceback.format_exc()
    log = "[run] epoch 1/3, lr 0.05, loss 1.0\n" + trace
    assert st.log_error(log) == "ValueError: the first line"
    # torchrun prefixes each rank's lines
    assert st.log_error("".join(f"[rank0]: {line}\n" for line in log.splitlines())) == "ValueError: the first line"
    # the CLI's one-line error wins over a traceback printed with SORTKD_TRACEBACK
    assert st.log_error("sortkd train-imagenet: error: bad spec\n" + trace) == "sortkd train-imagenet: error: bad spec"
    assert st.log_error("[run] epoch 1/3, lr 0.05\n") is None
    assert st.log_epochs_total(log) == 3


# --- the plan, before the first job ---------------------------------------------------------

def test_plan_on_an_empty_folder_without_an_estimate(tmp_path, monkeypatch, capsys):
    write_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["status", "--config", "config.yaml"]) == 0
    text = capsys.readouterr().out
    assert "nothing has run yet. The plan: 6 training jobs (6 CIFAR student runs)" in text
    assert "no estimate of the CPU-hours exists yet" in text

    write_config(tmp_path, device="cuda")
    assert main(["status", "--config", "config.yaml"]) == 0
    text = capsys.readouterr().out
    assert "no estimate of the GPU-hours exists yet. To get one, run `python -m sortkd gpu-check` on the GPU box" \
        in text


def test_plan_from_the_gpu_check_json(tmp_path):
    epoch_s = 12.5
    config = st.load_config(write_config(tmp_path, device="cuda", gpu_devices=[0, 1], jobs_per_device=2))
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "gpu_check.json").write_text(json.dumps(
        {"epoch_seconds": {"resnet8": epoch_s, "resnet32x4": 30.0}, "jobs_per_device_recommended": 4}))
    report = st.collect(st.source_from_config(config, tmp_path))
    assert report.nothing_started
    runs = 6
    # A job holds one slot = 1/jobs_per_device of a GPU; 2 GPUs x 2 jobs run at once.
    assert report.totals.left_h == pytest.approx(runs * EPOCHS * epoch_s / 2 / 3600, rel=1e-12)
    assert report.totals.wall_left_s == pytest.approx(runs * EPOCHS * epoch_s / (2 * 2), rel=1e-12)
    assert report.totals.spent_h == 0
    text = st.render_text(report)
    assert f"estimated GPU-hours: {st.hours(report.totals.left_h)} (from {tmp_path}/results/gpu_check.json)" in text
    assert f"resnet8         6 runs × {EPOCHS} epochs × 12.50 s/epoch" in text
    assert f"wall time ≈ {st.duration(runs * EPOCHS * epoch_s / 4)} at 4 concurrent jobs" in text
    assert "gpu-check recommends compute.jobs_per_device: 4 (the config has 2)" in text


def test_imagenet_runs_join_the_grid(tmp_path):
    table = Path(__file__).resolve().parents[1] / "workflow" / "tables" / "imagenet.yaml"
    path = write_config(tmp_path, device="cuda", gpu_devices=[0, 1, 2, 3], jobs_per_device=2)
    config = yaml.safe_load(path.read_text())
    config["imagenet"] = {"enabled": True, "root": "imagenet", "table": str(table), "methods": ["kd"],
                          "variants": ["base", "sort"], "seeds": [0], "gpus_per_run": 8}
    path.write_text(yaml.safe_dump(config))
    for split in ("train", "val"):
        (tmp_path / "imagenet" / split).mkdir(parents=True)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "gpu_check.json").write_text(json.dumps({"epoch_seconds": {"resnet8": 10.0}}))
    report = st.collect(st.source_from_config(st.load_config(path), tmp_path))
    imagenet = [r for r in report.runs if r.group == "imagenet"]
    pairs = sorted(yaml.safe_load(table.read_text())["pairs"])
    assert sorted(r.name for r in imagenet) == sorted(f"{p}/kd/{v}/seed0" for p in pairs for v in ("base", "sort"))
    assert {r.devices for r in imagenet} == {8 / 2}            # 8 GPU slots of 1/2 GPU each
    assert {r.epochs_total for r in imagenet} == {100}         # the table's recipe
    run = imagenet[0]
    assert run.log == str(tmp_path / "results/t/logs/imagenet_student" / f"{run.name}.log")
    # The gpu-check measures CIFAR students only: the ImageNet runs have no estimate yet.
    assert report.totals.without_estimate == 4
    assert report.totals.left_h == pytest.approx(6 * EPOCHS * 10.0 / 2 / 3600, rel=1e-12)
    text = st.render_text(report)
    assert "The plan: 10 training jobs (6 CIFAR student runs, 4 ImageNet runs)" in text
    assert "no figure for 4 runs (ImageNet mobilenetv1: no measured epoch; ImageNet resnet18: no measured epoch)" \
        in text


def test_bad_arguments_are_one_line_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["status", "--config", "nope.yaml"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "sortkd status: error: config nope.yaml does not exist; pass --config FILE or --experiment DIR"]
    assert main(["status", "--experiment", "results/none"]) == 1
    assert capsys.readouterr().err.strip() == "sortkd status: error: --experiment results/none: no such folder"
    write_config(tmp_path)
    assert main(["status", "--watch", "0"]) == 1
    assert "--watch: 0.0 is not allowed" in capsys.readouterr().err
