"""Two-view methods (MLKD) in the CIFAR trainer: the strong view and the teacher's logits for it.

The strong view's numbers are checked against the view provider's parts (crop + flip from
sortkd.data.views, RandAugment + Cutout from sortkd.data.randaugment, tested op by op against
PIL in test_randaugment.py); here: what the trainer feeds the loss, and the run end to end.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_spec
from sortkd.data.cifar import load_arrays
from sortkd.data.randaugment import rand_augment
from sortkd.data.views import DeviceCifar, crop_flip, normalize_images, pad_images
from sortkd.training.cifar import CifarTrainer, strong_epoch_draws
from sortkd.training.loop import fp32_logits

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_cache(tiny_caches):
    return tiny_caches["float32"]


def mlkd_spec(tiny_data, tiny_teacher, variant="sort", **overrides):
    base = dict(kind="student", name=f"test/mlkd/{variant}", method="mlkd", variant=variant,
                teacher_dir=str(tiny_teacher), teacher_arch="resnet8", epochs=1, batch_size=16)
    base.update(overrides)
    return tiny_spec(tiny_data, **base)


def test_strong_draws_depend_on_seed_epoch_and_sample_only():
    views_a, draws_a = strong_epoch_draws(3, 5, 200, 162)
    views_b, draws_b = strong_epoch_draws(3, 5, 200, 162)
    assert torch.equal(views_a, views_b) and torch.equal(draws_a.ops, draws_b.ops)
    assert torch.equal(draws_a.magnitudes, draws_b.magnitudes) and torch.equal(draws_a.cutout, draws_b.cutout)
    views_c, draws_c = strong_epoch_draws(3, 6, 200, 162)   # another epoch: other draws
    assert not torch.equal(views_a, views_c) and not torch.equal(draws_a.ops, draws_c.ops)
    # The strong crop is not the weak one (the upstream pipelines draw theirs independently).
    from sortkd.seeding import epoch_views
    assert not torch.equal(views_a, epoch_views(3, 5, 200, 162))
    assert int(views_a.min()) >= 0 and int(views_a.max()) < 162


def test_strong_batch_is_the_view_provider_composition_whatever_the_batch(tiny_data):
    data = DeviceCifar(load_arrays(tiny_data), CPU)
    views, draws = strong_epoch_draws(0, 0, data.num_train, data.num_views)
    index = torch.tensor([7, 3, 100, 3, 42])
    batch = data.strong_batch(index, views[index], draws[index])
    # Independent composition from the raw uint8 images of the .npz.
    raw = pad_images(torch.from_numpy(load_arrays(tiny_data).train_x))
    expected = normalize_images(rand_augment(crop_flip(raw, index, views[index]), draws[index]))
    assert batch.dtype == torch.float32 and torch.equal(batch, expected)
    # A sample's strong view does not depend on its batch mates.
    alone = data.strong_batch(index[2:3], views[index[2:3]], draws[index[2:3]])
    assert torch.equal(alone[0], batch[2])
    assert torch.equal(batch[1], batch[3])          # the same sample twice: the same view
    # It is a different image than the weak view of the same sample.
    weak, _ = data.train_batch(index, views[index])
    assert not torch.equal(weak, batch)


def test_weak_logits_from_the_cache_and_strong_logits_from_the_online_teacher(tiny_data, tiny_teacher,
                                                                            tiny_cache, tmp_path):
    spec = mlkd_spec(tiny_data, tiny_teacher, teacher_logits="cache", cache_dir=str(tiny_cache))
    trainer = CifarTrainer(spec, tmp_path / "run")
    assert trainer.teacher.describe() == "weak cache, strong online"
    batch = next(iter(trainer.train_batches(0)))
    assert set(batch.inputs) == {"weak", "strong"}
    teacher_model = trainer.teacher.sources["strong"].model
    strong = trainer.teacher_logits(batch, "strong")
    assert torch.equal(strong, fp32_logits(teacher_model, batch.inputs["strong"]))
    # The float32 cache holds exactly the teacher's fp32 logits of the weak views.
    weak = trainer.teacher_logits(batch, "weak")
    assert torch.allclose(weak, fp32_logits(teacher_model, batch.inputs["weak"]), rtol=0, atol=1e-5)


def test_base_and_sort_see_the_same_strong_views(tiny_data, tiny_teacher, tmp_path):
    base = CifarTrainer(mlkd_spec(tiny_data, tiny_teacher, variant="base"), tmp_path / "base")
    sort = CifarTrainer(mlkd_spec(tiny_data, tiny_teacher, variant="sort"), tmp_path / "sort")
    for b, s in zip(base.train_batches(1), sort.train_batches(1)):
        assert torch.equal(b.inputs["strong"], s.inputs["strong"]) and torch.equal(b.index, s.index)


def test_single_view_methods_render_no_strong_view(tiny_data, tiny_teacher, tmp_path):
    spec = tiny_spec(tiny_data, kind="student", name="test/kd", method="kd", teacher_dir=str(tiny_teacher),
                     teacher_arch="resnet8", epochs=1, batch_size=16)
    trainer = CifarTrainer(spec, tmp_path / "kd")
    assert set(next(iter(trainer.train_batches(0))).inputs) == {"weak"}
    assert trainer.teacher.describe() == "weak online"


def test_mlkd_sort_trains_one_epoch_through_the_cli(tiny_data, tiny_teacher, tiny_cache, tmp_path):
    from sortkd.losses import resolve_hparams

    spec = dict(kind="student", name="demo/mlkd/sort", data=str(tiny_data), arch="resnet8", method="mlkd",
                variant="sort", hparams=resolve_hparams("mlkd"), teacher_dir=str(tiny_teacher),
                teacher_arch="resnet8", teacher_logits="cache", cache_dir=str(tiny_cache), epochs=1,
                batch_size=16, lr=0.01, lr_milestones=[1], threads=1)
    out = tmp_path / "student"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "sortkd", "train", "--spec", json.dumps(spec),
                           "--out-dir", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "weak cache, strong online" in proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["method"] == "mlkd" and summary["run"]["variant"] == "sort" and summary["best_epoch"] == 1
    assert 0.0 <= summary["final_top1"] <= 100.0
    epoch = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    for term in ("loss_ce", "loss_kd", "loss_cc", "loss_bc"):
        assert np.isfinite(epoch[term]) and epoch[term] > 0, term
    # The run sorted some teacher-wrong samples, and the masks kept some samples.
    assert 0.0 < epoch["mlkd_mask_frac"] <= 1.0
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["teacher_logits_by_view"] == {"weak": "cache", "strong": "online"}
    assert provenance["precision"]["teacher_forward"] == "fp32"
