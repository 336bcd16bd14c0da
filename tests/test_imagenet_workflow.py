"""The ImageNet experiment inside the DAG: dry run of the full grid, and one real 2-process job."""
import json
import re
import shlex
import subprocess
import sys

from sortkd.experiment.config import TEACHER_ARCHIVE_URL
from tests.fake_imagenet import make_fake_imagenet
from tests.test_workflow import REPO, copy_workflow, job_counts, snakemake_env


def run_snakemake(workdir, *args, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=snakemake_env(),
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
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=snakemake_env())
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


# --- the upstream values, written from methods.md §2-§4 (not from the tables) ---------------------

# methods.md §4: (student LR, DKD beta, KD+LS (T_b, w), DKD+LS (T_b, w, beta)) per CIFAR pair.
CIFAR_PAIRS = {
    "resnet56-resnet20": (0.05, 2, (2, 9), (3, 18, 2)),
    "resnet110-resnet32": (0.05, 2, (2, 9), (2, 15, 2)),
    "resnet32x4-resnet8x4": (0.05, 8, (2, 9), (2, 9, 8)),
    "wrn_40_2-wrn_16_2": (0.05, 6, (2, 9), (2, 12, 2)),
    "wrn_40_2-wrn_40_1": (0.05, 6, (2, 9), (2, 12, 2)),
    "vgg13-vgg8": (0.05, 6, (3, 9), (2, 15, 2)),
    "resnet32x4-ShuffleV1": (0.01, 8, (2, 9), (2, 9, 8)),
    "resnet32x4-ShuffleV2": (0.01, 8, (2, 9), (2, 9, 8)),
    "wrn_40_2-ShuffleV1": (0.01, 8, (2, 9), (2, 9, 8)),
    "vgg13-MobileNetV2": (0.01, 6, (3, 9), (3, 9, 2)),
    "ResNet50-MobileNetV2": (0.01, 8, (3, 1), (2, 15, 2)),
}
# methods.md §2: CTKD's curriculum (theta = 1, T = 1 + 20 sigmoid, lambda from 0 to -1).
CTKD = {"init": 1.0, "t_min": 1.0, "t_range": 20.0, "lambda_min": -1.0, "lambda_max": 0.0}


def cifar_upstream(pair: str, method: str) -> dict:
    _, beta, (t_b, w), _ = CIFAR_PAIRS[pair]
    return {
        "kd": {"temperature": 4, "ce_weight": 0.1, "kd_weight": 0.9},
        "dkd": {"temperature": 4, "ce_weight": 1, "alpha": 1, "beta": beta, "warmup": 20},
        "ctkd": {"ce_weight": 0.1, "kd_weight": 0.9, "lambda_epochs": 10, **CTKD},
        "lskd": {"temperature": t_b, "ce_weight": 0.1, "kd_weight": w},
    }[method]


def imagenet_upstream(pair: str, method: str) -> dict:
    beta = {"resnet34-resnet18": 0.5, "resnet50-mobilenetv1": 2.0}[pair]
    return {
        "kd": {"temperature": 1, "ce_weight": 0.5, "kd_weight": 0.5},
        "dkd": {"temperature": 1, "ce_weight": 1, "alpha": 1, "beta": beta, "warmup": 1},
        # CTKD's ImageNet script: CE and KD weights 1, a 5-epoch curriculum.
        "ctkd": {"ce_weight": 1, "kd_weight": 1, "lambda_epochs": 5, **CTKD},
        # LSKD's ImageNet KD+LS.
        "lskd": {"temperature": 2, "ce_weight": 1.0, "kd_weight": 9},
    }[method]


def printed_specs(output: str, command: str) -> list[dict]:
    specs = []
    for line in output.splitlines():
        if f"python -m sortkd {command} " in line:
            words = shlex.split(line[line.index("python -m sortkd"):])
            specs.append(json.loads(words[words.index("--spec") + 1]))
    return specs


def test_dry_run_prints_the_upstream_value_of_every_setting_in_every_student_spec(tmp_path):
    root = make_fake_imagenet(tmp_path / "imagenet", num_classes=3, train_per_class=1, val_per_class=1)
    out = run_snakemake(REPO, "-n", "-p", "--cores", "all", "--config", f"imagenet={{enabled: true, root: {root}}}")

    cifar = printed_specs(out, "train")
    assert len(cifar) == 264 and all(spec["kind"] == "student" for spec in cifar)
    for spec in cifar:
        lr = CIFAR_PAIRS[spec["pair"]][0]
        assert spec["hparams"] == cifar_upstream(spec["pair"], spec["method"]), spec["name"]
        assert {k: spec[k] for k in ("lr", "epochs", "batch_size", "lr_milestones", "lr_gamma", "momentum",
                                     "weight_decay")} == {
            "lr": lr, "epochs": 240, "batch_size": 64, "lr_milestones": [150, 180, 210], "lr_gamma": 0.1,
            "momentum": 0.9, "weight_decay": 5e-4}, spec["name"]

    imagenet = printed_specs(out, "train-imagenet")
    assert len(imagenet) == 16
    for spec in imagenet:
        assert spec["hparams"] == imagenet_upstream(spec["pair"], spec["method"]), spec["name"]
        assert {k: spec[k] for k in ("lr", "epochs", "batch_size", "lr_milestones", "lr_gamma", "momentum",
                                     "weight_decay", "image_size", "resize_size", "sync_bn")} == {
            "lr": 0.2, "epochs": 100, "batch_size": 512, "lr_milestones": [30, 60, 90], "lr_gamma": 0.1,
            "momentum": 0.9, "weight_decay": 1e-4, "image_size": 224, "resize_size": 256,
            "sync_bn": False}, spec["name"]

    # The teachers come from the one archive address; their logits are exported once, in fp32
    # (no precision flag), and stored as float16 under the default bf16 training.
    assert re.search(rf"download-teachers --out \S+ --url {re.escape(TEACHER_ARCHIVE_URL)} ", out)
    exports = [line for line in out.splitlines() if "python -m sortkd export-logits" in line]
    assert len(exports) == 6 and all("--dtype float16" in line and "--exact" not in line for line in exports)
