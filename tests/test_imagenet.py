"""The ImageNet path on a fake ImageNet folder: layout, views, sampler, models, the recipe
table, N processes = 1 process, resume."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import ResNet18_Weights, ResNet34_Weights, ResNet50_Weights

from sortkd.cli import main
from sortkd.models import imagenet as models
from sortkd.training.distributed import Ranks, broadcast_buffers, init_ranks
from sortkd.data.imagenet import ImageNetLayoutError, scan_imagenet
from sortkd.data.imagenet_input import (EncodedTrainImages, EncodedValImages, collate_encoded,
                                        gpu_decode_available, train_batch_on_device, val_batch_on_device)
from sortkd.data.imagenet_input import (ImageNetInput, TrainImages, ValImages, compute_threads, job_threads,
                                        loader_workers, normalize_batch, process_threads)
from sortkd.training.imagenet import ImageNetTrainer
from sortkd.training.launch import torchrun_command
from sortkd.data.imagenet import RankBatchSampler, ValShardSampler
from sortkd.experiment.specs import ImageNetRunSpec
from sortkd.experiment.grid import load_table, method_hparams, run_spec_dict
from sortkd.data.imagenet import RATIO, SCALE, train_view
from sortkd.losses import METHODS, compute_loss, get_method
from sortkd.seeding import epoch_order
from tests.fake_imagenet import make_fake_imagenet, wnid

REPO = Path(__file__).resolve().parents[1]
# 21 training images: global batches of 8 leave a last partial batch of 5 (3 + 2 on two ranks).
CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 3, 7, 4
# Values that must not differ between 1 and N processes beyond float rounding.
COMPARED = ("loss_total", "loss_ce", "loss_kd", "train_top1", "test_top1", "test_top5", "teacher_wrong_frac")


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    return make_fake_imagenet(tmp_path_factory.mktemp("imagenet"), CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS)


def tiny_spec(root, **overrides) -> dict:
    # A from-scratch ResNet-18 with batch norm over a few images is chaotic in float32: one ReLU
    # flipped by rounding changes the early layers' gradients by ~0.4 %, and at lr 1e-3 the
    # trajectories of two runs equal up to summation order separate ~30x per step (1 process with
    # 2 threads differed from itself by 7e-3 after 6 steps). At lr 1e-4 they stay within ~1e-6,
    # while a gradient twice too large or a missing loss scale still moves the weights 100-1000x
    # past the tolerances of the comparisons below. 64 px keeps the last feature maps at 2x2.
    spec = dict(name="test/imagenet", data=str(root), teacher_arch="resnet18", teacher_weights="none",
                arch="resnet18", method="kd", variant="sort",
                hparams={"temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5},
                epochs=2, batch_size=8, lr=1e-4, lr_milestones=[1], image_size=64, threads=1, sync_bn=True)
    spec.update(overrides)
    return spec


def run_in_process(spec: dict, out_dir: Path, *extra) -> None:
    assert main(["train-imagenet", "--spec", json.dumps(spec), "--out-dir", str(out_dir), *extra]) == 0


def read_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single_process_run(fake_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("one_process")
    run_in_process(tiny_spec(fake_root), out)
    return out


# --- folder layout --------------------------------------------------------------------------

def test_scan_reads_sorted_classes_and_files(fake_root):
    folder = scan_imagenet(fake_root)
    assert folder.classes == tuple(wnid(i) for i in range(CLASSES))
    assert len(folder.train) == CLASSES * TRAIN_PER_CLASS and len(folder.val) == CLASSES * VAL_PER_CLASS
    assert folder.train.labels.tolist() == sorted(folder.train.labels.tolist())
    assert folder.train.path(TRAIN_PER_CLASS).startswith(str(fake_root / "train" / wnid(1)))
    # The grayscale JPEG comes out with three channels like every other image.
    image, label, index = TrainImages(folder.train, 40, seed=0)[(1, 0)]
    assert image.shape == (3, 40, 40) and image.dtype == torch.uint8 and (label, index) == (0, 0)
    image, _, _ = ValImages(folder.val, 40, 46)[5]
    assert image.shape == (3, 40, 40)


def _move_val_images_up(root):
    for path in list((root / "val").rglob("*.JPEG")):
        path.rename(root / "val" / path.name)
    for folder in (root / "val").iterdir():
        if folder.is_dir():
            folder.rmdir()


@pytest.mark.parametrize("breakage, message", [
    (lambda root: shutil.rmtree(root), "does not exist"),
    (lambda root: shutil.rmtree(root / "val"), "no val/ folder"),
    (_move_val_images_up, "instead of one sub-folder per class"),
    (lambda root: (root / "train" / "n99999999").mkdir(), "different class folders"),
    (lambda root: [p.unlink() for p in (root / "val" / wnid(2)).iterdir()], "holds no images"),
])
def test_missing_or_malformed_folder_says_which_layout_is_expected(tmp_path, breakage, message, capsys):
    root = make_fake_imagenet(tmp_path / "data", num_classes=3, train_per_class=1, val_per_class=1)
    breakage(root)
    with pytest.raises(ImageNetLayoutError, match=message) as error:
        scan_imagenet(root)
    assert "Expected layout: <root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG" in str(error.value)
    # Through the CLI: one clear line and exit status 1, no traceback.
    assert main(["train-imagenet", "--spec", json.dumps(tiny_spec(root)), "--out-dir", str(tmp_path / "run")]) == 1
    assert message in capsys.readouterr().err


# --- views, sampler, loaders ----------------------------------------------------------------

def test_train_views_come_from_seed_epoch_and_index_only():
    views = [train_view(300, 500, seed=0, epoch=1, index=i) for i in range(200)]
    assert views == [train_view(300, 500, seed=0, epoch=1, index=i) for i in range(200)]
    assert views != [train_view(300, 500, seed=0, epoch=2, index=i) for i in range(200)]
    assert views != [train_view(300, 500, seed=1, epoch=1, index=i) for i in range(200)]
    assert 60 < sum(flip for _, flip in views) < 140
    for box, _ in views:
        assert 0 <= box.top and box.top + box.height <= 300 and 0 <= box.left and box.left + box.width <= 500
        assert SCALE[0] * 0.9 <= box.height * box.width / (300 * 500) <= SCALE[1]
        assert RATIO[0] * 0.9 <= box.width / box.height <= RATIO[1] * 1.1


@pytest.mark.parametrize("world_size", [2, 4])
def test_rank_batches_together_are_the_single_process_batch(world_size):
    num_samples, global_batch = 50, 8  # 6 full global batches and a last partial one of 2, kept
    single = RankBatchSampler(num_samples, global_batch, 0, 1, seed=3)
    ranks = [RankBatchSampler(num_samples, global_batch, r, world_size, seed=3) for r in range(world_size)]
    seen_orders = []
    for epoch in (1, 2):
        for sampler in [single, *ranks]:
            sampler.set_epoch(epoch)
        one = list(single)
        per_rank = [list(sampler) for sampler in ranks]
        assert len(one) == 7 and [len(b) for b in one] == [8] * 6 + [2]
        for step, batch in enumerate(one):
            shares = [batches[step] if step < len(batches) else [] for batches in per_rank]
            # Contiguous parts of the global batch, in rank order, sizes differing by at most one.
            assert [k for share in shares for k in share] == batch
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
            assert all(e == epoch for e, _ in batch)
        # Four ranks: ranks 2 and 3 get no share of the last batch of 2.
        assert [len(batches) for batches in per_rank] == ([7, 7] if world_size == 2 else [7, 7, 6, 6])
        indices = [i for batch in one for _, i in batch]
        assert sorted(indices) == list(range(num_samples))
        seen_orders.append(indices)
    assert seen_orders[0] != seen_orders[1]
    assert [r.samples_per_epoch for r in ranks] == [num_samples] * world_size
    capped = RankBatchSampler(num_samples, global_batch, 0, world_size, seed=3, max_steps=2)
    capped.set_epoch(1)
    assert len(list(capped)) == 2 and capped.samples_per_epoch == 16
    with pytest.raises(ValueError, match="not divisible by the number of processes 3"):
        RankBatchSampler(num_samples, global_batch, 0, 3, seed=3)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        RankBatchSampler(5, global_batch, 0, 1, seed=3)
    shards = [list(ValShardSampler(11, 2, r, world_size)) for r in range(world_size)]
    assert sorted(i for shard in shards for batch in shard for i in batch) == list(range(11))


@pytest.mark.parametrize("num_samples, global_batch, world_size", [(21, 8, 2), (50, 8, 4), (21, 10, 2), (61, 12, 4)])
def test_loss_scales_make_the_process_average_the_global_batch_mean(num_samples, global_batch, world_size):
    # DDP averages the processes' gradients: sum_r scale_r * mean_r / W must be the mean over the
    # global batch, for every step, whatever the shares. Checked on float64 per-sample values.
    values = torch.randn(num_samples, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    samplers = [RankBatchSampler(num_samples, global_batch, r, world_size, seed=1) for r in range(world_size)]
    for sampler in samplers:
        sampler.set_epoch(1)
    batches = [list(sampler) for sampler in samplers]
    single = RankBatchSampler(num_samples, global_batch, 0, 1, seed=1)
    single.set_epoch(1)
    for step, batch in enumerate(single):
        averaged = torch.zeros((), dtype=torch.float64)
        for sampler, rank_batches in zip(samplers, batches):
            if step < len(rank_batches):
                scale = sampler.loss_scale(step)
                local = values[[i for _, i in rank_batches[step]]].mean()
                averaged += (1.0 if scale is None else scale) * local / world_size
        expected = values[[i for _, i in batch]].mean()
        torch.testing.assert_close(averaged, expected, rtol=1e-12, atol=0)
        if len(batch) == global_batch:
            assert all(sampler.loss_scale(step) is None for sampler in samplers)


def test_loader_workers_deliver_the_same_batches_as_inline_decoding(fake_root):
    folder = scan_imagenet(fake_root)
    ranks = init_ranks("cpu")
    batches = {}
    for workers in (0, 1):
        spec = ImageNetRunSpec.from_dict(tiny_spec(fake_root, image_size=32, loader_workers=workers))
        batches[workers] = list(ImageNetInput(folder, spec, ranks).train_batches(epoch=1))
    assert len(batches[0]) == len(batches[1]) == -(-CLASSES * TRAIN_PER_CLASS // 8)  # the partial batch is kept
    for (x0, y0, i0), (x1, y1, i1) in zip(batches[0], batches[1]):
        assert torch.equal(x0, x1) and torch.equal(y0, y1) and torch.equal(i0, i1)


def test_threads_and_loader_workers_default_to_the_cpus_of_the_job(fake_root):
    # threads: null is the GPU default; each of N processes then gets its share of the job's CPUs.
    spec = ImageNetRunSpec.from_dict(tiny_spec(fake_root, threads=None))
    cpus = len(os.sched_getaffinity(0))
    share = max(cpus // 2, 1)
    on_cpu = Ranks(0, 2, 0, 2, torch.device("cpu"), "gloo")
    on_gpu = Ranks(1, 2, 1, 2, torch.device("cuda", 1), "nccl")
    assert job_threads(spec) == cpus and process_threads(spec, on_cpu) == share
    assert (compute_threads(spec, on_cpu), loader_workers(spec, on_cpu)) == (share, 0)
    assert (compute_threads(spec, on_gpu), loader_workers(spec, on_gpu)) == (1, share - 1)


def test_gpu_decode_path_matches_pil_path(fake_root):
    # The nvjpeg path's functions, run with device="cpu": same crops and flips, same pixels up to
    # the resampler's rounding.
    folder = scan_imagenet(fake_root)
    keys = [(1, i) for i in range(len(folder.train))]
    pil = torch.stack([TrainImages(folder.train, 32, seed=0)[k][0] for k in keys]).int()
    encoded, geometry, labels, _ = collate_encoded([EncodedTrainImages(folder.train, seed=0)[k] for k in keys])
    tensor = train_batch_on_device(encoded, geometry, 32, "cpu").int()
    assert tensor.shape == pil.shape and (tensor - pil).abs().max() <= 2
    assert labels.tolist() == folder.train.labels.tolist()
    pil = torch.stack([ValImages(folder.val, 32, 36)[i][0] for i in range(len(folder.val))]).int()
    encoded = collate_encoded([EncodedValImages(folder.val)[i] for i in range(len(folder.val))])[0]
    assert (val_batch_on_device(encoded, 32, 36, "cpu").int() - pil).abs().max() <= 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without GPU")
def test_gpu_decoding_says_clearly_that_no_gpu_is_present(fake_root, capsys):
    available, why = gpu_decode_available()
    assert not available and "no CUDA GPU is present" in why
    from sortkd.speed.decode import main as benchmark_main

    assert benchmark_main(["--root", str(fake_root)]) == 1
    assert "no CUDA GPU is present" in capsys.readouterr().err


# --- models -----------------------------------------------------------------------------------

def test_teacher_loader_asks_torchvision_for_the_paper_weights(tmp_path, monkeypatch):
    assert models.teacher_weights("resnet34", "IMAGENET1K_V1") is ResNet34_Weights.IMAGENET1K_V1
    assert models.teacher_weights("resnet50", "IMAGENET1K_V1") is ResNet50_Weights.IMAGENET1K_V1
    assert models.teacher_weights("resnet18", "IMAGENET1K_V1") is ResNet18_Weights.IMAGENET1K_V1
    # methods.md §3: ResNet34 73.31 %, ResNet50 76.13 % top-1.
    assert ResNet34_Weights.IMAGENET1K_V1.meta["_metrics"]["ImageNet-1K"]["acc@1"] == pytest.approx(73.31, abs=0.005)
    assert ResNet50_Weights.IMAGENET1K_V1.meta["_metrics"]["ImageNet-1K"]["acc@1"] == pytest.approx(76.13, abs=0.005)
    assert models.teacher_weights("resnet34", "none") is None
    with pytest.raises(ValueError, match="allowed: IMAGENET1K_V1, none"):
        models.teacher_weights("resnet34", "IMAGENET1K_V9")
    with pytest.raises(ValueError, match="unknown ImageNet teacher arch 'mobilenetv1'"):
        models.teacher_weights("mobilenetv1", "none")
    # Pretrained weights predict 1000 classes: a 3-class data set is refused before any download.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(ValueError, match="predicts 1000 classes but the data set has 3"):
        models.build_teacher("resnet34", "IMAGENET1K_V1", 3, seed=0)
    assert not (tmp_path / "torch_home").exists()
    # Random weights: frozen, eval mode, drawn from the seed (and not the student's draw).
    teacher = models.build_teacher("resnet34", "none", 3, seed=0)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert teacher.fc.out_features == 3
    again = models.build_teacher("resnet34", "none", 3, seed=0).state_dict()
    other = models.build_teacher("resnet34", "none", 3, seed=1).state_dict()
    assert torch.equal(teacher.state_dict()["conv1.weight"], again["conv1.weight"])
    assert not torch.equal(teacher.state_dict()["conv1.weight"], other["conv1.weight"])
    student = models.build_student("resnet34", 3, seed=0)
    assert not torch.equal(student.state_dict()["conv1.weight"], again["conv1.weight"])


def test_students_have_the_reference_parameter_counts():
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    mobilenet = models.build_student("mobilenetv1", 1000, seed=0)
    assert count(mobilenet) == 4_231_976  # mdistiller's ImageNet MobileNetV1
    names = mobilenet.state_dict()
    assert names["model.0.0.weight"].shape == (32, 3, 3, 3) and names["model.13.3.weight"].shape == (1024, 1024, 1, 1)
    assert names["fc.weight"].shape == (1000, 1024)
    assert count(models.build_student("resnet18", 1000, seed=0)) == ResNet18_Weights.IMAGENET1K_V1.meta["num_params"]
    assert mobilenet(torch.zeros(2, 3, 32, 32)).shape == (2, 1000)


# --- recipe table and spec ----------------------------------------------------------------------

def test_imagenet_table_holds_the_paper_recipe_with_registry_names(fake_root):
    table = load_table()
    assert table["recipe"] == {"epochs": 100, "batch_size": 512, "lr": 0.2, "lr_milestones": [30, 60, 90],
                               "lr_gamma": 0.1, "weight_decay": 1e-4, "momentum": 0.9, "image_size": 224}
    assert {p: (e["teacher"], e["student"]) for p, e in table["pairs"].items()} == {
        "resnet34-resnet18": ("resnet34", "resnet18"), "resnet50-mobilenetv1": ("resnet50", "mobilenetv1")}
    assert method_hparams(table, "resnet34-resnet18", "kd") == {"temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5}
    assert method_hparams(table, "resnet34-resnet18", "dkd")["beta"] == 0.5
    assert method_hparams(table, "resnet50-mobilenetv1", "dkd") == {
        "temperature": 1.0, "warmup": 1, "alpha": 1.0, "ce_weight": 1.0, "beta": 2.0}
    assert method_hparams(table, "resnet50-mobilenetv1", "ctkd")["lambda_epochs"] == 5
    for pair in table["pairs"]:
        for method in (m for m in table["methods"] if m in METHODS):
            spec = ImageNetRunSpec.from_dict(run_spec_dict(table, pair, method, "sort", 0, str(fake_root)))
            assert spec.pair == pair and spec.teacher_weights == "IMAGENET1K_V1" and spec.resize_size == 256
    with pytest.raises(ValueError, match="unknown ImageNet pair 'resnet8-resnet8'"):
        run_spec_dict(table, "resnet8-resnet8", "kd", "base", 0, "data")
    assert get_method("ctkd").schedule(5, {**get_method("ctkd").defaults, "lambda_epochs": 5})["lambda"] == -1.0


@pytest.mark.parametrize("override, message", [
    ({"decode": "gpu"}, "CUDA paths"),
    ({"pair": "resnet34-resnet18"}, "does not name teacher-student 'resnet18-resnet18'"),
    ({"teacher_weights": "IMAGENET1K_V2"}, "unknown weights"),
    ({"hparams": {"beta": 1.0}}, "has no hyper-parameter 'beta'"),
    ({"batch": 8}, "unknown ImageNet run setting"),
])
def test_spec_rejects_bad_settings_with_a_clear_message(fake_root, override, message):
    with pytest.raises(ValueError, match=message):
        ImageNetRunSpec.from_dict(tiny_spec(fake_root, **override))


def test_torchrun_command_of_the_launcher():
    command = torchrun_command(4, '{"name": "x"}', "out", stop_after_epoch=3)
    assert command[:7] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4", "-m"]
    assert command[7:] == ["sortkd", "train-imagenet", "--spec", '{"name": "x"}', "--out-dir", "out",
                           "--stop-after-epoch", "3"]


# --- training: outputs, N processes = 1 process, resume -------------------------------------------

def test_single_process_run_writes_sane_outputs(fake_root, single_process_run):
    rows = read_rows(single_process_run)
    assert [r["epoch"] for r in rows] == [1, 2] and [r["lr"] for r in rows] == [1e-4, pytest.approx(1e-5)]
    for row in rows:
        assert all(torch.isfinite(torch.tensor(row[k])) for k in COMPARED)
        assert 0 <= row["test_top1"] <= row["test_top5"] <= 100 and 0 <= row["teacher_wrong_frac"] <= 1
        assert row["loss_total"] == pytest.approx(row["loss_ce"] + row["loss_kd"])
    summary = json.loads((single_process_run / "summary.json").read_text())
    assert summary["run"] == {"experiment": "default", "dataset": "imagenet", "kind": "student", "arch": "resnet18",
                              "teacher": "resnet18", "student": "resnet18", "pair": "resnet18-resnet18",
                              "method": "kd", "variant": "sort", "seed": 0}
    assert summary["epochs"] == 2 and summary["final_top1"] == rows[-1]["test_top1"]
    assert summary["best_top1"] == max(r["test_top1"] for r in rows)
    assert 0 <= summary["teacher_top1"] <= 100 and summary["teacher_logits"] == "online"
    assert summary["teacher_wrong_frac"] == pytest.approx(sum(r["teacher_wrong_frac"] for r in rows) / 2)
    record = json.loads((single_process_run / "provenance.json").read_text())
    assert record["world_size"] == record["processes"] == 1 and record["config"]["data"] == str(fake_root)
    assert record["precision"] == {"student_forward": "fp32", "teacher_forward": "fp32", "evaluation": "fp32"}
    assert record["config_hash"] == ImageNetRunSpec.from_dict(tiny_spec(fake_root)).hash
    assert record["git_revision"] and record["versions"]["torch"] == torch.__version__


def run_cli(spec: dict, out_dir: Path, nproc: int = 1) -> None:
    """The training command in a subprocess of its own; torchrun for more than one process."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] if nproc > 1 else []
    proc = subprocess.run(
        [sys.executable, *launcher, "-m", "sortkd", "train-imagenet", "--spec", json.dumps(spec), "--out-dir", str(out_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def assert_same_training(one: Path, other: Path) -> None:
    """Equal metrics and weights up to float rounding (the tolerances of N processes = 1 process)."""
    for a, b in zip(read_rows(one), read_rows(other), strict=True):
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["epoch"], key)
    weights_one = torch.load(one / "checkpoint.pt", weights_only=False)["model"]
    weights_other = torch.load(other / "checkpoint.pt", weights_only=False)["model"]
    for name, value in weights_one.items():
        torch.testing.assert_close(weights_other[name], value, rtol=1e-4, atol=1e-5)


def test_two_processes_under_torchrun_match_one_process(fake_root, single_process_run, tmp_path):
    # The premise first: this problem does not amplify rounding. One process with 2 threads
    # rounds differently from one with 1 thread; it must agree within the same tolerances.
    run_cli(tiny_spec(fake_root, threads=2), tmp_path / "two_threads")
    assert_same_training(single_process_run, tmp_path / "two_threads")

    out = tmp_path / "two_processes"
    run_cli(tiny_spec(fake_root), out, nproc=2)
    one, two = read_rows(single_process_run), read_rows(out)
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        assert (a["world_size"], b["world_size"]) == (1, 2)
        # Every step's global batch held the same samples ...
        assert a["data_order_checksum"] == b["data_order_checksum"]
    # ... and the metrics summed over ranks equal the 1-process metrics up to float sums, and so
    # do the trained weights: DDP's gradient average, the loss scales of the last partial batch
    # (3 + 2 images) and global batch norm make the arithmetic that of one process.
    assert_same_training(single_process_run, out)
    summary_one = json.loads((single_process_run / "summary.json").read_text())
    summary_two = json.loads((out / "summary.json").read_text())
    assert summary_two.keys() == summary_one.keys()
    assert summary_two["teacher_top1"] == summary_one["teacher_top1"]
    record = json.loads((out / "provenance.json").read_text())
    assert record["world_size"] == record["processes"] == 2 and record["batch_norm"] == "global"


def data_parallel_reference(spec: ImageNetRunSpec, world_size: int) -> tuple[dict, dict]:
    """Epoch 1 as upstream's DataParallel runs it, in one process: each device's share of the batch
    (numpy's array_split) through the student with its own batch statistics, the loss averaged
    over the global batch, the running statistics of the first device kept. Returns the metrics
    row and the student's state."""
    folder = scan_imagenet(spec.data)
    student = models.build_student(spec.arch, folder.num_classes, spec.seed)
    teacher = models.build_teacher(spec.teacher_arch, spec.teacher_weights, folder.num_classes, spec.seed)
    optimizer = torch.optim.SGD(student.parameters(), lr=spec.lr, momentum=spec.momentum,
                                weight_decay=spec.weight_decay)
    images = TrainImages(folder.train, spec.image_size, spec.seed)
    order = epoch_order(spec.seed, 1, len(folder.train)).tolist()
    sums = dict.fromkeys(("loss_total", "loss_ce", "loss_kd", "correct", "teacher_wrong"), 0.0)
    student.train()
    for first in range(0, len(order), spec.batch_size):
        batch = order[first:first + spec.batch_size]
        before = {name: value.clone() for name, value in student.named_buffers()}
        loss = 0.0
        for share in reversed(np.array_split(np.array(batch), world_size)):  # the first device last
            if len(share) == 0:
                continue
            for name, value in before.items():  # fresh tensors: autograd saved the previous ones
                owner, _, leaf = name.rpartition(".")
                setattr(student.get_submodule(owner), leaf, value.clone())
            x = normalize_batch(torch.stack([images[(1, int(i))][0] for i in share]))
            y = torch.as_tensor(folder.train.labels[share])
            logits = student(x)
            with torch.no_grad():
                teacher_logits = teacher(x)
            out = compute_loss(spec.method, logits, teacher_logits, y, 1, spec.hparams, spec.variant)
            loss = loss + out.total * len(share) / len(batch)
            n = len(share)
            sums["loss_total"] += out.total.item() * n
            sums["loss_ce"] += out.terms["ce"].item() * n
            sums["loss_kd"] += out.terms["kd"].item() * n
            sums["correct"] += (logits.argmax(1) == y).sum().item()
            sums["teacher_wrong"] += (teacher_logits.argmax(1) != y).sum().item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    n = len(order)
    row = {key: sums[key] / n for key in ("loss_total", "loss_ce", "loss_kd")}
    row.update(train_top1=100.0 * sums["correct"] / n, teacher_wrong_frac=sums["teacher_wrong"] / n)
    student.eval()
    val = ValImages(folder.val, spec.image_size, spec.resize_size)
    with torch.no_grad():
        logits = student(normalize_batch(torch.stack([val[i][0] for i in range(len(val))])))
    labels = torch.as_tensor(folder.val.labels)
    top5 = logits.topk(5 if logits.shape[1] >= 5 else logits.shape[1], dim=1).indices
    row.update(test_top1=100.0 * (top5[:, 0] == labels).double().mean().item(),
               test_top5=100.0 * (top5 == labels[:, None]).any(dim=1).double().mean().item())
    return row, student.state_dict()


def test_two_processes_with_per_process_batch_norm_compute_what_data_parallel_computes(fake_root, tmp_path):
    # Global batches of 10 over 21 images: the last holds 1 image, so rank 1 has no share of it
    # and still joins the gradient all-reduce with a zero gradient.
    spec = tiny_spec(fake_root, sync_bn=False, batch_size=10, epochs=1)
    out = tmp_path / "two_processes"
    run_cli(spec, out, nproc=2)
    (row,) = read_rows(out)
    expected, state = data_parallel_reference(ImageNetRunSpec.from_dict(spec), world_size=2)
    for key, value in expected.items():
        assert row[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    trained = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
    for name, value in state.items():
        torch.testing.assert_close(trained[name], value, rtol=1e-4, atol=1e-5)
    # Global batch norm would have normalized the first step's 10 images together: another loss.
    one_process = tmp_path / "one_process"
    run_in_process(spec, one_process)
    assert read_rows(one_process)[0]["loss_total"] != pytest.approx(row["loss_total"], rel=1e-3)
    record = json.loads((out / "provenance.json").read_text())
    assert record["processes"] == 2 and record["batch_norm"] == "per-process"


def _evaluation_statistics_worker(rank: int, init_file: str, results: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    ranks = Ranks(rank, 2, rank, 2, torch.device("cpu"), "gloo")
    norm = torch.nn.BatchNorm2d(3)
    norm(torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(rank)))  # each rank's own statistics
    broadcast_buffers(norm, ranks)
    torch.save({k: v.clone() for k, v in norm.state_dict().items()}, f"{results}.{rank}")
    torch.distributed.destroy_process_group()


def test_every_rank_evaluates_with_the_first_ranks_batch_norm_statistics(tmp_path):
    # Per-process batch norm leaves each rank with running statistics of its own shares; the
    # evaluation uses rank 0's on every rank, as DataParallel uses its first device's.
    results = str(tmp_path / "state")
    torch.multiprocessing.spawn(_evaluation_statistics_worker, args=(str(tmp_path / "init"), results), nprocs=2)
    zero, one = torch.load(f"{results}.0"), torch.load(f"{results}.1")
    reference = torch.nn.BatchNorm2d(3)
    reference(torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(0)))
    for name, value in reference.state_dict().items():
        assert torch.equal(zero[name], value) and torch.equal(one[name], value), name


def bf16_trainer(root, out_dir) -> ImageNetTrainer:
    try:
        spec = ImageNetRunSpec.from_dict(tiny_spec(root, precision="bf16", epochs=1))
    except ValueError as error:
        if "CUDA paths" not in str(error):
            raise
        pytest.skip("ImageNetRunSpec does not take precision bf16 on the CPU yet (the spec owner's change)")
    return ImageNetTrainer(spec, out_dir, init_ranks("cpu"))


def test_teacher_logits_and_evaluation_are_fp32_under_a_bf16_student(fake_root, tmp_path):
    trainer = bf16_trainer(fake_root, tmp_path)
    batch = next(trainer.train_batches(1))
    with torch.no_grad():
        fp32 = trainer.teacher(batch.inputs["weak"])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not torch.equal(trainer.teacher(batch.inputs["weak"]).float(), fp32)
        with trainer.autocast():  # even called from inside the student's autocast
            logits = trainer.teacher_logits(batch, "weak")
    assert logits.dtype == torch.float32 and torch.equal(logits, fp32)
    dtypes = []
    trainer.model.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    with trainer.autocast():
        trainer.forward_model(batch.inputs["weak"])
    trainer.evaluate()
    assert dtypes[0] == torch.bfloat16 and set(dtypes[1:]) == {torch.float32}


def test_a_run_stopped_after_epoch_one_resumes_to_the_same_result(fake_root, single_process_run, tmp_path):
    out = tmp_path / "stopped"
    run_in_process(tiny_spec(fake_root), out, "--stop-after-epoch", "1")
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == 1 and not (out / "summary.json").exists()
    assert len(read_rows(out)) == 1
    run_in_process(tiny_spec(fake_root), out)
    resumed, uninterrupted = read_rows(out), read_rows(single_process_run)
    timing = ("epoch_s", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed] == \
        [{k: v for k, v in r.items() if k not in timing} for r in uninterrupted]
    final = torch.load(out / "checkpoint.pt", weights_only=False)
    reference = torch.load(single_process_run / "checkpoint.pt", weights_only=False)
    assert final["epoch"] == 2 and final["teacher_accuracy"] == reference["teacher_accuracy"]
    assert all(torch.equal(final["model"][k], reference["model"][k]) for k in reference["model"])
    # A changed configuration does not resume from a foreign checkpoint.
    run_in_process(tiny_spec(fake_root, epochs=1, seed=5), out)
    assert len(read_rows(out)) == 1
