"""Shared test set-up: CPU only, one thread per test process, deterministic kernels."""
import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest
import torch

torch.set_num_threads(1)

# The real single-node Slurm of tests/slurm, shared by tests/test_slurm_*.py: one cluster
# per session (a fixture defined here, not in each module, is set up only once). Opt-in with
# SORTKD_SLURM_TESTS=1 (.ci/run sets it).
from slurm.cluster_fixture import slurm_cluster  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _deterministic():
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield


# --- small generated data and a small trained teacher, shared by the engine tests -----------

TINY_CLASSES = 5


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A generated CIFAR-format archive read by the real reader, converted to .npz."""
    from sortkd.cli import main

    root = tmp_path_factory.mktemp("data")
    out = root / "tiny.npz"
    assert main(["prepare-data", "--source", "synthetic", "--root", str(root), "--out", str(out),
                 "--num-classes", str(TINY_CLASSES), "--train-per-class", "24",
                 "--test-per-class", "8", "--seed", "1"]) == 0
    return out


def tiny_spec(data, **overrides):
    from sortkd.experiment.specs import RunSpec
    from sortkd.losses import resolve_hparams

    base = dict(kind="teacher", name="test/teacher", data=str(data), arch="resnet8", epochs=2,
                batch_size=16, lr=0.05, lr_milestones=[1], threads=1)
    base.update(overrides)
    # Specs carry complete hyper-parameters (the grid resolves them); so does a test's.
    base["hparams"] = resolve_hparams(base.get("method", "vanilla"), base.get("hparams"))
    return RunSpec.from_dict(base)


@pytest.fixture(scope="session")
def tiny_teacher(tiny_data, tmp_path_factory):
    from sortkd.training.cifar import train_run

    out = tmp_path_factory.mktemp("teacher")
    train_run(tiny_spec(tiny_data, epochs=3), out)
    return out


@pytest.fixture(scope="session")
def tiny_caches(tiny_data, tiny_teacher, tmp_path_factory):
    """The tiny teacher's logit cache in float16 and float32 (small chunks: the chunking runs)."""
    from sortkd.data.cifar import load_arrays
    from sortkd.data.views import DeviceCifar
    from sortkd.logit_cache import dataset_sha256, export_logits
    from sortkd.teachers import load_teacher

    cpu = torch.device("cpu")
    teacher, info = load_teacher(tiny_teacher, "resnet8", cpu)
    data = DeviceCifar(load_arrays(tiny_data), cpu)
    out = {}
    for dtype in ("float16", "float32"):
        d = tmp_path_factory.mktemp(f"cache_{dtype}")
        export_logits(teacher, info["checkpoint_sha256"], data, dataset_sha256(tiny_data), d,
                      dtype=dtype, images_per_chunk=7, batch_size=100, log=lambda s: None)
        out[dtype] = d
    return out
