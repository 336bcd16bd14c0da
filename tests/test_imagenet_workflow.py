"""The ImageNet experiment inside the DAG: dry run of the full grid, and one real 2-process job."""
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.fake_imagenet import make_fake_imagenet
from tests.test_workflow import REPO, copy_workflow, job_counts


def run_snakemake(workdir, *args, timeout=600):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_default_config_with_imagenet_on_lists_its_jobs(tmp_path):
    root = tmp_path / "imagenet"
    make_fake_imagenet(root, num_classes=3, train_per_class=2, val_per_class=1)
    out = run_snakemake(REPO, "-n", "--quiet", "rules", "--cores", "all",
                        "--config", f"imagenet={{enabled: true, root: {root}}}")
    counts = job_counts(out)
    # 2 pairs x 4 methods x {base, sort} x 1 seed, plus their report; the CIFAR grid is unchanged.
    assert counts["imagenet_student"] == 16 and counts["imagenet_report"] == 1
    assert counts["student_train"] == 264


def test_imagenet_off_by_default_and_missing_data_is_a_clear_error(tmp_path):
    out = run_snakemake(REPO, "-n", "--quiet", "rules", "--cores", "all")
    assert "imagenet_student" not in out
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--config",
                           f"imagenet={{enabled: true, root: {tmp_path / 'none'}}}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "does not hold ImageNet; expected train/<wnid>/*.JPEG" in proc.stdout + proc.stderr


def test_one_imagenet_job_runs_through_the_rule_with_two_processes(tmp_path):
    (tmp_path / "wf").mkdir()
    workdir = copy_workflow(tmp_path / "wf")
    make_fake_imagenet(workdir / "imagenet", num_classes=3, train_per_class=8, val_per_class=4)
    target = "results/cifar100/imagenet/students/resnet34-resnet18/kd/sort/seed0/summary.json"
    overrides = ("{teacher_weights: none, image_size: 64, epochs: 1, batch_size: 8, lr: 0.001, "
                 "lr_milestones: [1], max_steps_per_epoch: 2}")
    run_snakemake(workdir, target, "--cores", "2", "--config", "compute={device: cpu, precision: exact}",
                  f"imagenet={{enabled: true, root: imagenet, gpus_per_run: 2, threads: 2, "
                  f"overrides: {overrides}}}")
    summary = json.loads((workdir / target).read_text())
    assert summary["run"]["dataset"] == "imagenet" and summary["run"]["variant"] == "sort"
    assert 0 <= summary["final_top1"] <= 100
    provenance = json.loads((workdir / target.replace("summary.json", "provenance.json")).read_text())
    assert provenance["world_size"] == 2 and provenance["dist_backend"] == "gloo"
    assert provenance["per_process_batch"] == 4  # the global batch (8) is split, not multiplied
