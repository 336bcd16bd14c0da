"""The Snakemake DAG: lint, the full grid's dry run, the demo end to end, change detection, resume.

The demo runs in a temp copy of the workflow with smaller sizes (--config) to keep CI short;
the README's full demo command is the same DAG at its configured size.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sortkd.losses import METHODS

pytestmark = pytest.mark.slow  # every test here runs Snakemake

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = yaml.safe_load((REPO / "config.demo.yaml").read_text())
DEMO_METHODS = list(DEMO_CONFIG["methods"])
# Small but complete: the demo's methods, base and sort, two seeds; kd on both pairs (one reads
# the logit cache, one runs its teacher online), every other method on the cache pair only:
# each method runs through the DAG once, in 30 jobs instead of the demo's 42.
CACHE_PAIR = "resnet14-resnet8"
TEST_METHOD_PAIRS = {m: [CACHE_PAIR] for m in DEMO_METHODS if m != "kd"}
DEMO_PAIRS = list(yaml.safe_load((REPO / DEMO_CONFIG["pairs_table"]).read_text()))
PAIRS_PER_METHOD = {m: len(TEST_METHOD_PAIRS.get(m, DEMO_PAIRS)) for m in DEMO_METHODS}
SMALL = ["data={source: synthetic, root: results/demo/data, download: false, "
         "synthetic: {num_classes: 5, train_per_class: 16, test_per_class: 8, seed: 0}}",
         "recipe={epochs: 2, batch_size: 16, lr: 0.05, lr_milestones: [1]}",
         "teacher_recipe={epochs: 2, lr_milestones: [1]}",
         "method_pairs={" + ", ".join(f"{m}: [{CACHE_PAIR}]" for m in TEST_METHOD_PAIRS) + "}"]


def snakemake_env() -> dict:
    """The environment of a Snakemake subprocess: this Python first on PATH, no GPU, and this
    checkout's package first on the import path (the rules and the Snakefile import sortkd)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path}


def snakemake(workdir, *args, config=SMALL, timeout=600, check=True):
    env = snakemake_env()
    # Targets and flags first: --configfile takes every word after it.
    cmd = [sys.executable, "-m", "snakemake", *args, "--cores", "2", "--configfile", "config.demo.yaml"]
    if config:
        cmd += ["--config", *config]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def copy_workflow(dst: Path) -> Path:
    for name in ("Snakefile", "config.yaml", "config.demo.yaml"):
        shutil.copy(REPO / name, dst / name)
    shutil.copytree(REPO / "workflow", dst / "workflow")
    shutil.copytree(REPO / "envs", dst / "envs")
    return dst


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run."""
    counts = {}
    for line in output.split("Job stats:")[1].splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def dry_run(workdir, *args, **kw):
    proc = snakemake(workdir, "-n", *args, **kw)
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("configfile", ["config.yaml", "config.demo.yaml"])
def test_lint_is_clean(configfile):
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--configfile", configfile],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env=snakemake_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr


def test_full_grid_dry_run():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--cores", "all",
                           "--resources", "gpu=4"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=snakemake_env())
    assert proc.returncode == 0, proc.stderr
    counts = job_counts(proc.stdout + proc.stderr)
    # 11 pairs x 4 methods x {base, sort} x 3 seeds; 6 distinct teachers, imported and exported once.
    assert counts == {"download_teachers": 1, "prepare_data": 1, "teacher_import": 6, "logits_export": 6,
                      "student_train": 264, "report": 1, "all": 1, "total": 280}


def test_config_errors_are_one_clear_line(tmp_path):
    copy_workflow(tmp_path)
    out = snakemake(tmp_path, "-n", config=["methods={kdd: {}}"], check=False)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    allowed = ", ".join(sorted(m for m in METHODS if m != "vanilla"))
    assert f"config: methods: 'kdd' is not allowed; allowed: {allowed}" in text
    out = snakemake(tmp_path, "-n", config=["compute={device: gpu}"], check=False)
    assert out.returncode != 0
    assert "config: compute.device: 'gpu' is not one of ['cuda', 'cpu']" in out.stdout + out.stderr
    out = snakemake(tmp_path, "-n", config=["pairs=[resnet14-resnet9]"], check=False)
    assert out.returncode != 0
    assert "config: pairs: 'resnet14-resnet9' is not allowed" in out.stdout + out.stderr


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("demo"))
    t0 = time.time()
    snakemake(workdir, timeout=900)
    print(f"small demo took {time.time() - t0:.0f} s")
    return workdir


def test_demo_outputs_exist_and_are_sane(demo):
    out = demo / "results" / "demo"
    runs = pd.read_csv(out / "runs.csv")
    assert "mlkd" in DEMO_METHODS and DEMO_CONFIG["method_pairs"]["mlkd"] == [CACHE_PAIR]  # the two-view method
    assert DEMO_PAIRS == [CACHE_PAIR, "resnet20-resnet8"] and PAIRS_PER_METHOD["kd"] == 2
    assert len(runs) == sum(PAIRS_PER_METHOD.values()) * 2 * 2
    for column in ("dataset", "teacher", "student", "method", "variant", "seed", "best_top1", "best_epoch",
                   "final_top1", "teacher_top1", "epochs", "wall_s"):
        assert column in runs.columns, column
    assert runs[["best_top1", "final_top1", "teacher_top1"]].apply(lambda c: c.between(0, 100)).all().all()
    assert (runs["best_top1"] >= runs["final_top1"]).all()
    assert (runs["epochs"] == 2).all() and (runs["wall_s"] > 0).all()
    for method in DEMO_METHODS:
        for variant in ("base", "sort"):
            assert len(runs[(runs.method == method) & (runs.variant == variant)]) == 2 * PAIRS_PER_METHOD[method]
    # The cached pair and the online pair both ran.
    summaries = [json.loads(p.read_text()) for p in out.glob("students/*/*/*/*/summary.json")]
    assert {s["teacher_logits"] for s in summaries} == {"cache", "online"}
    assert (out / "logits" / "resnet14" / "meta.json").exists()
    assert not (out / "logits" / "resnet20").exists()
    table = (out / "table.md").read_text()
    assert "KD + sort" in table and "MLKD + sort" in table and "Δ sort − base" in table
    mlkd = [s for s in summaries if s["run"]["method"] == "mlkd"]
    assert len(mlkd) == 4 and {s["run"]["pair"] for s in mlkd} == {"resnet14-resnet8"}
    for png in ["forest.png", "wrong_share_vs_delta.png", "curves_resnet14-resnet8.png",
                "curves_resnet20-resnet8.png"]:
        assert (out / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("table.csv", "table.tex", "deltas.csv"):
        assert (out / name).stat().st_size > 0
    # Every rule left a log and a benchmark.
    assert (out / "logs" / "report.log").exists() and (out / "benchmarks" / "report.tsv").exists()
    assert len(list((out / "logs" / "student_train").rglob("*.log"))) == len(runs)
    # Teacher checkpoints and logit caches are protected: read-only once written.
    for protected in ("teachers/resnet14/model.pt", "teachers/resnet20/model.pt",
                      "logits/resnet14/train_logits.npy", "logits/resnet14/test_logits.npy"):
        assert (out / protected).stat().st_mode & 0o222 == 0, protected
    for writable in ("teachers/resnet14/teacher.json", "logits/resnet14/meta.json"):
        assert (out / writable).stat().st_mode & 0o200, writable


def test_second_dry_run_has_nothing_to_do(demo):
    out = dry_run(demo)
    assert "Nothing to be done" in out, out[-3000:]


def test_changing_one_hyperparameter_reruns_only_that_method(demo):
    out = dry_run(demo, config=SMALL + ["methods={kd: {temperature: 3}, dkd: {warmup: 3}, "
                                         "ctkd: {lambda_epochs: 3}, lskd: {}}"])
    counts = job_counts(out)
    assert counts == {"student_train": 8, "report": 1, "all": 1, "total": 10}, out[-3000:]
    rerun_methods = set(re.findall(r"output: results/demo/students/[^/]+/(\w+)/", out))
    assert rerun_methods == {"kd"}, out[-3000:]


def test_report_builds_html(demo):
    proc = snakemake(demo, "--report", "report.html")
    html = (demo / "report.html").read_bytes()
    assert len(html) > 10_000 and b"forest.png" in html, proc.stderr[-2000:]


def test_killed_student_resumes_when_workflow_reruns(demo):
    target = "results/demo/students/resnet14-resnet8/kd/sort/seed0/summary.json"
    longer = SMALL[:1] + ["recipe={epochs: 8, batch_size: 16, lr: 0.05, lr_milestones: [6]}", *SMALL[2:]]
    env = snakemake_env()
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "config.demo.yaml",
           "--config", *longer, "--", target]
    metrics = demo / target.replace("summary.json", "metrics.jsonl")
    shutil.rmtree(metrics.parent)  # only the new run's epochs may count below
    proc = subprocess.Popen(cmd, cwd=demo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and the training job, as a crash would
    proc.wait(timeout=60)
    done = len(metrics.read_text().splitlines())
    assert 2 <= done < 8
    snakemake(demo, "--unlock", config=longer)  # what a user does after Snakemake itself was killed
    snakemake(demo, target, config=longer)
    log = (demo / "results/demo/logs/student_train/resnet14-resnet8/kd/sort/seed0.log").read_text()
    assert f"resuming after epoch {done}" in log
    summary = json.loads((demo / target).read_text())
    assert summary["epochs"] == 8
