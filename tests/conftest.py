"""Shared test set-up: CPU only, one thread per test process, deterministic kernels."""
import os
import shutil
from pathlib import Path

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


def built_once(tmp_path_factory, name: str, build) -> Path:
    """`build(folder)` once per test run, also under pytest-xdist, where every worker has its
    own session fixtures: the first worker builds into a folder that all workers share, the
    others wait on the lock and reuse the result."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder; each worker's basetemp is inside it
    folder, done = root / f"shared-{name}", root / f"shared-{name}.done"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A generated CIFAR-format archive read by the real reader, converted to .npz."""
    from sortkd.cli import main

    def build(root):
        assert main(["prepare-data", "--source", "synthetic", "--root", str(root), "--out", str(root / "tiny.npz"),
                     "--num-classes", str(TINY_CLASSES), "--train-per-class", "24",
                     "--test-per-class", "8", "--seed", "1"]) == 0

    return built_once(tmp_path_factory, "data", build) / "tiny.npz"


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

    return built_once(tmp_path_factory, "teacher", lambda out: train_run(tiny_spec(tiny_data, epochs=3), out))


CACHE_DTYPES = ("float16", "float32")


@pytest.fixture(scope="session")
def tiny_caches(tiny_data, tiny_teacher, tmp_path_factory):
    """The tiny teacher's logit cache in float16 and float32 (small chunks: the chunking runs)."""
    from sortkd.data.cifar import load_arrays
    from sortkd.data.views import DeviceCifar
    from sortkd.logit_cache import dataset_sha256, export_logits
    from sortkd.teachers import load_teacher

    def build(folder):
        cpu = torch.device("cpu")
        teacher, info = load_teacher(tiny_teacher, "resnet8", cpu)
        data = DeviceCifar(load_arrays(tiny_data), cpu)
        for dtype in CACHE_DTYPES:
            export_logits(teacher, info["checkpoint_sha256"], data, dataset_sha256(tiny_data), folder / dtype,
                          dtype=dtype, images_per_chunk=7, batch_size=100, log=lambda s: None)

    folder = built_once(tmp_path_factory, "caches", build)
    return {dtype: folder / dtype for dtype in CACHE_DTYPES}


# --- parallel runs (pytest-xdist; pyproject's addopts asks for it) ---------------------------

# The two longest groups, about 7 and 5 minutes of a 2-core machine, each start at once on a
# worker of their own; the third worker takes the other modules in file order, and the first two
# join it when their group is nearly done. (xdist would otherwise order the groups by their
# number of tests, which started these two after 2 minutes.)
LONG_GROUPS = ("slurm", "tests/test_workflow.py")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config, items):
    """Under `--dist loadgroup`, a test module runs whole on one worker (its module fixtures are
    built once), and every Slurm test shares one worker: the session's cluster must come up and
    go down once. Used with --no-loadscope-reorder, so the order set here is the order the
    groups are handed out in."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    group = {item: "slurm" if item.get_closest_marker("slurm") else item.nodeid.split("::", 1)[0]
             for item in items}
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group[item]))
    first = {name: rank for rank, name in enumerate(LONG_GROUPS)}
    items.sort(key=lambda item: first.get(group[item], len(first)))
