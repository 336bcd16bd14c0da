"""The teacher-logit cache: equal to the online teacher, and rejected when it does not fit."""
import json
import shutil

import numpy as np
import pytest
import torch

from sortkd.data.cifar import load_arrays
from sortkd.data.views import DeviceCifar
from sortkd.training.cifar import train_run
from sortkd.logit_cache import CacheError, TeacherLogitCache, dataset_sha256, export_logits
from sortkd.teachers import load_teacher
from tests.conftest import tiny_spec

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def exported(tiny_data, tiny_teacher, tmp_path_factory):
    teacher, info = load_teacher(tiny_teacher, "resnet8", CPU)
    data = DeviceCifar(load_arrays(tiny_data), CPU)
    out = {}
    for dtype in ("float16", "float32"):
        d = tmp_path_factory.mktemp(f"cache_{dtype}")
        export_logits(teacher, info["checkpoint_sha256"], data, dataset_sha256(tiny_data), d,
                      dtype=dtype, images_per_chunk=7, batch_size=100, log=lambda s: None)
        out[dtype] = d
    return teacher, info, data, out


def online(teacher, data, index, views):
    with torch.no_grad():
        return teacher(data.train_batch(index, views)[0])


def test_cache_equals_online_teacher(exported, tiny_data):
    teacher, info, data, dirs = exported
    g = torch.Generator().manual_seed(0)
    index = torch.randint(0, data.num_train, (200,), generator=g)
    views = torch.randint(0, 162, (200,), generator=g)
    reference = online(teacher, data, index, views)
    for dtype, rtol in (("float32", 1e-5), ("float16", 1e-3)):
        cache = TeacherLogitCache(dirs[dtype], info["checkpoint_sha256"], dataset_sha256(tiny_data),
                                  data.num_train, data.num_classes, CPU)
        got = cache.train_logits(index, views)
        if dtype == "float32":
            torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
        else:
            # Exactly the fp16 rounding of the online logits.
            assert torch.equal(got, reference.half().float())
    meta = json.loads((dirs["float16"] / "meta.json").read_text())
    assert meta["train_shape"] == [data.num_train, 162, data.num_classes]
    assert meta["teacher_sha256"] == info["checkpoint_sha256"] and meta["dtype"] == "float16"
    assert meta["teacher_test_top1"] == pytest.approx(info["test_top1"])
    # The whole array: every (image, view) was written (no zero rows left by the chunking).
    arr = np.load(dirs["float32"] / "train_logits.npy")
    assert np.abs(arr).sum(axis=2).min() > 0


def test_student_from_cache_matches_online(exported, tiny_data, tiny_teacher, tmp_path):
    _, _, _, dirs = exported
    common = dict(kind="student", arch="resnet8", teacher_arch="resnet8", teacher_dir=str(tiny_teacher),
                  method="dkd", variant="sort", epochs=1, hparams={"warmup": 1})
    losses = {}
    for source in ("online", "cache"):
        spec = tiny_spec(tiny_data, name=f"test/{source}", teacher_logits=source,
                         cache_dir=str(dirs["float32"]), **common)
        losses[source] = []
        train_run(spec, tmp_path / source, step_losses=losses[source])
    a = torch.stack(losses["online"])
    b = torch.stack(losses["cache"])
    assert a.shape == b.shape and a.shape[0] > 5
    torch.testing.assert_close(b, a, rtol=1e-4, atol=0)
    sa = json.loads((tmp_path / "online" / "summary.json").read_text())
    sb = json.loads((tmp_path / "cache" / "summary.json").read_text())
    assert sa["final_top1"] == sb["final_top1"] and sa["final_top5"] == sb["final_top5"]
    assert sb["teacher_logits"] == "cache"


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_bad_caches_are_rejected(exported, tiny_data, tmp_path):
    _, info, data, dirs = exported
    sha, dsha = info["checkpoint_sha256"], dataset_sha256(tiny_data)
    args = (data.num_train, data.num_classes, CPU)
    with pytest.raises(CacheError, match="teacher"):
        TeacherLogitCache(dirs["float16"], "0" * 64, dsha, *args)
    with pytest.raises(CacheError, match="data set"):
        TeacherLogitCache(dirs["float16"], sha, "1" * 64, *args)
    with pytest.raises(CacheError, match="shape"):
        TeacherLogitCache(dirs["float16"], sha, dsha, data.num_train + 1, data.num_classes, CPU)
    truncated = _copy(dirs["float16"], tmp_path / "trunc")
    with open(truncated / "train_logits.npy", "r+b") as f:
        f.truncate(f.seek(0, 2) - 100)
    with pytest.raises(CacheError, match="truncated"):
        TeacherLogitCache(truncated, sha, dsha, *args)
    incomplete = _copy(dirs["float16"], tmp_path / "incomplete")
    (incomplete / "meta.json").unlink()
    with pytest.raises(CacheError, match="missing or incomplete"):
        TeacherLogitCache(incomplete, sha, dsha, *args)
    # A student pointed at a cache of another teacher refuses to start.
    other_teacher = tmp_path / "other_teacher"
    train_run(tiny_spec(tiny_data, epochs=1, seed=5), other_teacher)
    spec = tiny_spec(tiny_data, kind="student", arch="resnet8", teacher_arch="resnet8",
                     teacher_dir=str(other_teacher), method="kd", teacher_logits="cache",
                     cache_dir=str(dirs["float16"]), epochs=1)
    with pytest.raises(CacheError, match="re-export"):
        train_run(spec, tmp_path / "student")
