"""The ImageNet path on a fake ImageNet folder: layout, views, sampler, models, the recipe
table, N processes = 1 process, resume."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.models import ResNet18_Weights, ResNet34_Weights, ResNet50_Weights

from sortkd.cli import main
from sortkd.models import imagenet as models
from sortkd.training.distributed import init_ranks
from sortkd.data.imagenet import ImageNetLayoutError, scan_imagenet
from sortkd.data.imagenet_input import (EncodedTrainImages, EncodedValImages, collate_encoded,
                                        gpu_decode_available, train_batch_on_device, val_batch_on_device)
from sortkd.data.imagenet_input import TrainImages, ValImages
from sortkd.data.imagenet_input import ImageNetInput
from sortkd.training.launch import torchrun_command
from sortkd.data.imagenet import RankBatchSampler, ValShardSampler
from sortkd.experiment.specs import ImageNetRunSpec
from sortkd.experiment.grid import load_table, method_hparams, run_spec_dict
from sortkd.data.imagenet import RATIO, SCALE, train_view
from sortkd.losses import get_method
from tests.fake_imagenet import make_fake_imagenet, wnid

REPO = Path(__file__).resolve().parents[1]
CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 3, 8, 4
# Values that must not differ between 1 and N processes beyond float rounding.
COMPARED = ("loss_total", "loss_ce", "loss_kd", "train_top1", "test_top1", "test_top5", "teacher_wrong_frac")


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    return make_fake_imagenet(tmp_path_factory.mktemp("imagenet"), CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS)


def tiny_spec(root, **overrides) -> dict:
    # 64 px keeps the last feature maps at 2x2: at 32 px they are 1x1 and batch norm over a
    # handful of values amplifies float rounding so much that no two runs agree after a few steps.
    spec = dict(name="test/imagenet", data=str(root), teacher_arch="resnet18", teacher_weights="none",
                arch="resnet18", method="kd", variant="sort",
                hparams={"temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5},
                epochs=2, batch_size=8, lr=0.001, lr_milestones=[1], image_size=64, threads=1)
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
    num_samples, global_batch = 50, 8  # 6 full global batches; the last 2 samples are dropped
    single = RankBatchSampler(num_samples, global_batch, 0, 1, seed=3)
    ranks = [RankBatchSampler(num_samples, global_batch, r, world_size, seed=3) for r in range(world_size)]
    seen_orders = []
    for epoch in (1, 2):
        for sampler in [single, *ranks]:
            sampler.set_epoch(epoch)
        one = list(single)
        per_rank = [list(sampler) for sampler in ranks]
        assert len(one) == 6 and all(len(batches) == 6 for batches in per_rank)
        for step, batch in enumerate(one):
            assert all(len(batches[step]) == global_batch // world_size for batches in per_rank)
            assert sorted(k for batches in per_rank for k in batches[step]) == sorted(batch)
            assert all(e == epoch for e, _ in batch)
        indices = [i for batch in one for _, i in batch]
        assert len(set(indices)) == 48
        seen_orders.append(indices)
    assert seen_orders[0] != seen_orders[1]
    capped = RankBatchSampler(num_samples, global_batch, 0, world_size, seed=3, max_steps=2)
    capped.set_epoch(1)
    assert len(list(capped)) == 2
    with pytest.raises(ValueError, match="not divisible by the number of processes 3"):
        RankBatchSampler(num_samples, global_batch, 0, 3, seed=3)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        RankBatchSampler(5, global_batch, 0, 1, seed=3)
    shards = [list(ValShardSampler(11, 2, r, world_size)) for r in range(world_size)]
    assert sorted(i for shard in shards for batch in shard for i in batch) == list(range(11))


def test_loader_workers_deliver_the_same_batches_as_inline_decoding(fake_root):
    folder = scan_imagenet(fake_root)
    ranks = init_ranks("cpu")
    batches = {}
    for workers in (0, 1):
        spec = ImageNetRunSpec.from_dict(tiny_spec(fake_root, image_size=32, loader_workers=workers))
        batches[workers] = list(ImageNetInput(folder, spec, ranks).train_batches(epoch=1))
    assert len(batches[0]) == len(batches[1]) == CLASSES * TRAIN_PER_CLASS // 8
    for (x0, y0, i0), (x1, y1, i1) in zip(batches[0], batches[1]):
        assert torch.equal(x0, x1) and torch.equal(y0, y1) and torch.equal(i0, i1)


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
    assert method_hparams(table, "resnet34-resnet18", "lskd") == {}
    for pair in table["pairs"]:
        for method in table["methods"]:
            spec = ImageNetRunSpec.from_dict(run_spec_dict(table, pair, method, "sort", 0, str(fake_root)))
            assert spec.pair == pair and spec.teacher_weights == "IMAGENET1K_V1" and spec.resize_size == 256
    with pytest.raises(ValueError, match="unknown ImageNet pair 'resnet8-resnet8'"):
        run_spec_dict(table, "resnet8-resnet8", "kd", "base", 0, "data")
    assert get_method("ctkd").schedule(5, {**get_method("ctkd").defaults, "lambda_epochs": 5})["lambda"] == -1.0


@pytest.mark.parametrize("override, message", [
    ({"precision": "bf16"}, "CUDA paths"),
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
    assert [r["epoch"] for r in rows] == [1, 2] and [r["lr"] for r in rows] == [0.001, pytest.approx(0.0001)]
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
    assert record["world_size"] == 1 and record["config"]["data"] == str(fake_root)
    assert record["config_hash"] == ImageNetRunSpec.from_dict(tiny_spec(fake_root)).hash
    assert record["git_revision"] and record["versions"]["torch"] == torch.__version__


def test_two_processes_under_torchrun_match_one_process(fake_root, single_process_run, tmp_path):
    out = tmp_path / "two_processes"
    spec = tiny_spec(fake_root)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "sortkd", "train-imagenet", "--spec", json.dumps(spec), "--out-dir", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one, two = read_rows(single_process_run), read_rows(out)
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        assert (a["world_size"], b["world_size"]) == (1, 2)
        # Every step's global batch held the same samples ...
        assert a["data_order_checksum"] == b["data_order_checksum"]
        # ... and the metrics summed over ranks equal the 1-process metrics up to float sums.
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    summary_one = json.loads((single_process_run / "summary.json").read_text())
    summary_two = json.loads((out / "summary.json").read_text())
    assert summary_two.keys() == summary_one.keys()
    assert summary_two["teacher_top1"] == summary_one["teacher_top1"]
    assert json.loads((out / "provenance.json").read_text())["world_size"] == 2
    # The trained weights agree too: the gradient average of DDP + global batch norm is exact.
    weights_one = torch.load(single_process_run / "checkpoint.pt", weights_only=False)["model"]
    weights_two = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
    for name, value in weights_one.items():
        torch.testing.assert_close(weights_two[name], value, rtol=1e-4, atol=1e-5)


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
