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
def exported(tiny_data, tiny_teacher, tiny_caches):
    teacher, info = load_teacher(tiny_teacher, "resnet8", CPU)
    data = DeviceCifar(load_arrays(tiny_data), CPU)
    return teacher, info, data, tiny_caches


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


# --- fp32 teacher forward and what float16 storage does (issue 13) --------------------------

class _NearTies(torch.nn.Module):
    """A teacher whose top logit has a partner within 1e-3: float16 storage (ulp 2^-8 near 4)
    merges or flips such pairs, so the argmax and the sort's input order change in some rows."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        z = self.model(x) * 8
        c = z.shape[1]
        top = z.argmax(1, keepdim=True)
        nudge = 1e-3 * torch.tanh(10 * z.gather(1, (top + 2) % c))
        return z.scatter(1, (top + 1) % c, z.gather(1, top) + nudge)


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """12 generated images and a random resnet8 teacher: an export takes seconds."""
    from sortkd.speed.workload import Sizes, prepare_data, prepare_teacher

    work = tmp_path_factory.mktemp("micro")
    data, data_sha = prepare_data(work, Sizes(classes=4, train_per_class=3, test_per_class=2, batch_size=4,
                                              epochs=1, warmup=1, steps=None))
    teacher_dir, teacher_sha, _ = prepare_teacher(work, "resnet8", data, data_sha)
    teacher, _ = load_teacher(teacher_dir, "resnet8", CPU)
    return {"data": data, "data_sha": data_sha, "teacher_dir": teacher_dir, "teacher_sha": teacher_sha,
            "teacher": teacher, "arrays": DeviceCifar(load_arrays(data), CPU), "work": work}


def _export(micro, out, teacher=None, dtype="float32"):
    return export_logits(teacher or micro["teacher"], micro["teacher_sha"], micro["arrays"], micro["data_sha"],
                         out, dtype=dtype, log=lambda s: None)


def test_export_is_fp32_inside_a_bf16_autocast(micro, tmp_path):
    """A bf16-configured process exporting on the CPU still stores the fp32 logits."""
    plain = _export(micro, tmp_path / "plain")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = _export(micro, tmp_path / "under_bf16")
    a = np.load(tmp_path / "plain" / "train_logits.npy")
    b = np.load(tmp_path / "under_bf16" / "train_logits.npy")
    assert np.array_equal(a, b)
    assert under["forward_dtype"] == plain["forward_dtype"] == "float32"
    assert under["tf32_during_forward"] is None  # no TF32 on the CPU
    # The fp32 logits are those of a plain forward, and a bf16 forward would have differed.
    data = micro["arrays"]
    index = torch.arange(data.num_train)
    views = (index * 37) % 162
    x = data.train_batch(index, views)[0]
    with torch.no_grad():
        fp32 = micro["teacher"](x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = micro["teacher"](x).float()
    torch.testing.assert_close(torch.from_numpy(a[index.numpy(), views.numpy()]), fp32, rtol=1e-5, atol=1e-5)
    assert (bf16 - fp32).abs().max() > 1e-3


def _numpy_sort_logits(z: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The sort, row by row from its definition: the target takes the largest value, the
    classes ranked above it move down one rank, the rest keep theirs (ties: index order)."""
    out = np.empty_like(z)
    for r in range(z.shape[0]):
        order = list(np.argsort(-z[r], kind="stable"))
        pos = order.index(target[r])
        new_order = [order[pos]] + order[:pos] + order[pos + 1:]
        out[r, new_order] = z[r, order]
    return out


def test_meta_rounding_figures_equal_a_recomputation(micro, tmp_path):
    teacher = _NearTies(micro["teacher"])
    meta16 = _export(micro, tmp_path / "f16", teacher, "float16")
    meta32 = _export(micro, tmp_path / "f32", teacher, "float32")
    f32 = np.load(tmp_path / "f32" / "train_logits.npy").astype(np.float64)
    f16 = np.load(tmp_path / "f16" / "train_logits.npy").astype(np.float64)
    n, v, c = f32.shape
    rows32, rows16 = f32.reshape(n * v, c), f16.reshape(n * v, c)
    target = np.repeat(micro["arrays"].train_y.numpy(), v)
    expected = {
        "rows": n * v,
        "max_abs_error": float(np.abs(rows16 - rows32).max()),
        "argmax_changed_rows": int((rows16.argmax(1) != rows32.argmax(1)).sum()),
        "sort_changed_rows": int((_numpy_sort_logits(rows16, target)
                                  != _numpy_sort_logits(rows32, target).astype(np.float16)).any(1).sum()),
    }
    assert meta16["storage_rounding"] == expected
    # The teacher was built to make both kinds of change happen: the figures are not all zero.
    assert expected["argmax_changed_rows"] > 0 and expected["sort_changed_rows"] > 0
    assert meta32["storage_rounding"] == {"rows": n * v, "max_abs_error": 0.0, "argmax_changed_rows": 0,
                                          "sort_changed_rows": 0}
    on_disk = json.loads((tmp_path / "f16" / "meta.json").read_text())
    assert on_disk["storage_rounding"] == expected


def test_float16_overflow_is_an_error(micro, tmp_path):
    class Huge(torch.nn.Module):
        def forward(self, x):
            return micro["teacher"](x) * 1e6

    with pytest.raises(ValueError, match="float32"):
        _export(micro, tmp_path / "huge", Huge(), "float16")
    assert not (tmp_path / "huge" / "meta.json").exists()


def test_cli_export_prints_the_figures_and_accepts_exact(micro, tmp_path, capsys):
    from sortkd.cli import main

    base = ["export-logits", "--teacher-dir", str(micro["teacher_dir"]), "--arch", "resnet8",
            "--data", str(micro["data"]), "--dtype", "float16", "--threads", "1"]
    assert main(base + ["--out-dir", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    figures = meta["storage_rounding"]
    assert f"argmax changed in {figures['argmax_changed_rows']} and the sort_logits output" in out
    assert f"by at most {figures['max_abs_error']:.3g}" in out
    assert "fp32 forward" in out and meta["forward_dtype"] == "float32"
    # --exact is kept for older workflows and changes nothing.
    assert main(base + ["--out-dir", str(tmp_path / "b"), "--exact"]) == 0
    assert np.array_equal(np.load(tmp_path / "a" / "train_logits.npy"), np.load(tmp_path / "b" / "train_logits.npy"))


def test_float32_forward_switches_a_callers_autocast_off():
    from sortkd.teachers import float32_forward

    layer = torch.nn.Linear(16, 4)
    x = torch.randn(3, 16)
    with torch.no_grad():
        reference = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert layer(x).dtype == torch.bfloat16
            with float32_forward(CPU) as tf32:
                inside = layer(x)
            assert layer(x).dtype == torch.bfloat16  # the caller's autocast is back
    assert tf32 is None and inside.dtype == torch.float32
    assert torch.equal(inside, reference)


# --- the cache on its device (issue 14) -------------------------------------------------------

def test_copy_to_device_in_chunks_is_exact(tmp_path):
    from sortkd.logit_cache import copy_to_device

    array = np.random.default_rng(0).standard_normal((37, 162, 5)).astype(np.float16)
    np.save(tmp_path / "a.npy", array)
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    # 3 rows per chunk: 13 chunks, the last one short.
    got = copy_to_device(mapped, CPU, chunk_bytes=3 * 162 * 5 * 2)
    assert got.dtype == torch.float16 and tuple(got.shape) == array.shape
    assert np.array_equal(got.numpy(), array)


def test_cache_gathers_on_its_device_only(exported, tiny_data):
    _, info, data, dirs = exported
    cache = TeacherLogitCache(dirs["float16"], info["checkpoint_sha256"], dataset_sha256(tiny_data),
                              data.num_train, data.num_classes, CPU)
    index, views = torch.tensor([0, 3]), torch.tensor([5, 161])
    got = cache.train_logits(index, views)
    stored = np.load(dirs["float16"] / "train_logits.npy")
    assert got.dtype == torch.float32 and got.device == CPU
    assert np.array_equal(got.numpy(), stored[[0, 3], [5, 161]].astype(np.float32))
    with pytest.raises(ValueError, match="index is on meta"):
        cache.train_logits(index.to("meta"), views)
