"""The fast path on the CPU (bf16 autocast + channels_last) against the exact path, and the
device-placement check of the training step: every tensor an op of the step touches lives on
the model's device, and the step never reads a value back to the host.

The placement check runs the step with the data and the models on the "meta" device, under a
dispatch mode that sees every op. On a machine without a GPU this is the closest stand-in for
CUDA: a CPU tensor meeting a device tensor (an index, a mask, a generator's draw, a cache) shows
up as an op with inputs on two devices, and ``.item()``/``.cpu()`` as a host read.
"""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from sortkd.cli import main
from sortkd.experiment.specs import ImageNetRunSpec
from sortkd.losses import resolve_hparams
from sortkd.training.cifar import CifarTrainer, train_run
from sortkd.training.distributed import Ranks
from sortkd.training.imagenet import ImageNetTrainer
from tests.conftest import tiny_spec
from tests.fake_imagenet import make_fake_imagenet

META = torch.device("meta")


# --- a demo-like pair: generated CIFAR-format data, resnet8 -> resnet8 ------------------------

@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """The demo's data set: 10 classes, 40 training and 20 test images per class."""
    root = tmp_path_factory.mktemp("demo_data")
    out = root / "demo.npz"
    assert main(["prepare-data", "--source", "synthetic", "--root", str(root), "--out", str(out),
                 "--num-classes", "10", "--train-per-class", "40", "--test-per-class", "20", "--seed", "0"]) == 0
    return out


@pytest.fixture(scope="module")
def demo_teacher(demo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_teacher")
    train_run(tiny_spec(demo_data, epochs=4, batch_size=32, lr_milestones=[3]), out)
    return out


def demo_student(data, teacher_dir, **overrides):
    spec = dict(kind="student", name="test/fast", arch="resnet8", teacher_arch="resnet8", teacher_dir=str(teacher_dir),
                pair="resnet8-resnet8", method="kd", variant="sort", epochs=1, batch_size=32)
    spec.update(overrides)
    spec["hparams"] = resolve_hparams(spec["method"], spec.get("hparams"))
    return tiny_spec(data, **spec)


def test_bf16_on_the_cpu_follows_the_exact_path(demo_data, demo_teacher, tmp_path):
    losses, summaries = {}, {}
    for precision in ("exact", "bf16"):
        losses[precision] = []
        summaries[precision] = train_run(demo_student(demo_data, demo_teacher, precision=precision),
                                         tmp_path / precision, step_losses=losses[precision])
    exact, fast = torch.stack(losses["exact"]), torch.stack(losses["bf16"])
    assert exact.dtype == fast.dtype == torch.float32 and exact.shape == fast.shape == (13,)
    # bf16 keeps 8 mantissa bits of the student's activations; over one epoch (13 steps) the
    # losses stay within 2 % of the fp32 ones (measured: 0.3 %).
    torch.testing.assert_close(fast, exact, rtol=2e-2, atol=0)
    assert not torch.equal(fast, exact)  # the bf16 run did round
    # The two students then differ only near decision boundaries: at most 10 of the 200 test
    # images (5 points) change their prediction (measured: 1 image).
    assert abs(summaries["bf16"]["final_top1"] - summaries["exact"]["final_top1"]) <= 5.0
    # The teacher's logits are fp32 in both runs, so it is wrong on exactly the same samples.
    assert summaries["bf16"]["teacher_wrong_frac"] == summaries["exact"]["teacher_wrong_frac"]
    record = json.loads((tmp_path / "bf16" / "provenance.json").read_text())
    assert record["precision"] == {"student_forward": "bf16 autocast", "teacher_forward": "fp32",
                                   "evaluation": "fp32"}


def test_bf16_student_is_channels_last_and_its_forward_is_bf16(demo_data, demo_teacher, tmp_path):
    trainer = CifarTrainer(demo_student(demo_data, demo_teacher, precision="bf16"), tmp_path)
    assert trainer.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    batch = next(trainer.train_batches(1))
    assert batch.inputs["weak"].is_contiguous(memory_format=torch.channels_last)
    with trainer.autocast():
        assert trainer.forward_model(batch.inputs["weak"]).dtype == torch.bfloat16


# --- device placement -------------------------------------------------------------------------

class DevicePlacement(TorchDispatchMode):
    """Records every op whose tensors are not all on ``device``, every read back to the host and
    every copy from the host (each of the three is a host sync per step on CUDA, or an error).

    0-dim CPU tensors are allowed as inputs: CUDA takes them as scalars (a Python number, say).
    """

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device
        self.problems: list[str] = []

    def _elsewhere(self, tensors, allow_scalars: bool) -> list[str]:
        return [f"{t.device}{list(t.shape)}" for t in tensors
                if t.device != self.device and not (allow_scalars and t.device.type == "cpu" and t.dim() == 0)]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_device = any(t.device == self.device for t in inputs)
        if func is torch.ops.aten._local_scalar_dense.default:
            self.problems.append(f"{func}: a host read (.item())")
        elsewhere = self._elsewhere(inputs, allow_scalars=True)
        if elsewhere:
            self.problems.append(f"{func}: inputs on {elsewhere}")
        if func is torch.ops.aten._to_copy.default and on_device and kwargs.get("device", self.device) != self.device:
            self.problems.append(f"{func}: a copy to {kwargs['device']}")
            return func(*args, **kwargs)
        source = args[0] if func is torch.ops.aten._to_copy.default else args[1] if func is torch.ops.aten.copy_.default else None
        target = kwargs.get("device") if func is torch.ops.aten._to_copy.default else args[0].device if source is not None else None
        if source is not None and source.device.type == "cpu" and target == self.device:
            # On CUDA a copy from pageable host memory waits for the stream: a host sync per step.
            self.problems.append(f"{func}: a host-to-device copy of {list(source.shape)}")
        out = func(*args, **kwargs)
        outputs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        # A CPU result of an op with device inputs is a copy to the host, 0-dim or not.
        elsewhere = self._elsewhere(outputs, allow_scalars=not on_device)
        if elsewhere:
            self.problems.append(f"{func}: outputs on {elsewhere}")
        return out


def test_the_placement_check_sees_mixed_devices_and_host_reads():
    x = torch.zeros(8, device=META)
    with DevicePlacement(META) as check:
        x[torch.arange(4)]                               # a CPU index on a device tensor
        torch.randperm(8, generator=torch.Generator())   # a draw made on the CPU
        x + torch.tensor(1.0)                            # a CPU scalar: fine on CUDA
        torch.tensor(1.0).to(META)                       # a copy from the host
        with pytest.raises(NotImplementedError):         # meta tensors hold no data to copy ...
            x.sum().cpu()                                # ... but the copy to the host is seen first
    assert check.problems == ["aten.arange.default: outputs on ['cpu[4]']", "aten.index.Tensor: inputs on ['cpu[4]']",
                              "aten.randperm.generator: outputs on ['cpu[8]']",
                              "aten._to_copy.default: a host-to-device copy of []", "aten._to_copy.default: a copy to cpu"]


def run_checked_step(trainer, fetch_inside: bool) -> list[str]:
    """One warm-up step (per-device constants are made on first use), then one checked step.

    ``fetch_inside``: the batch is made inside the check too (CIFAR renders it on the device);
    ImageNet batches come from host loaders by design, and only the step is checked.
    """
    _, schedule, meter = trainer.open_epoch(1)
    batches = trainer.train_batches(1)
    trainer.train_step(0, 1, next(batches), schedule, meter)
    batch = None if fetch_inside else next(batches)
    with DevicePlacement(trainer.device) as check:
        trainer.train_step(1, 1, batch or next(batches), schedule, meter)
    return check.problems


@pytest.mark.parametrize("method", ["kd", "ctkd", "dkd", "mlkd"])
@pytest.mark.parametrize("variant", ["sort", "swap"])
def test_cifar_step_keeps_every_tensor_on_the_model_device(tiny_data, tiny_teacher, tmp_path, method, variant):
    spec = demo_student(tiny_data, tiny_teacher, method=method, variant=variant, batch_size=16)
    trainer = CifarTrainer(spec, tmp_path, device=META)
    assert run_checked_step(trainer, fetch_inside=True) == []


def test_imagenet_step_keeps_every_tensor_on_the_model_device(tmp_path):
    root = make_fake_imagenet(tmp_path / "imagenet", num_classes=3, train_per_class=4, val_per_class=1)
    spec = ImageNetRunSpec.from_dict(dict(
        name="test/imagenet", data=str(root), teacher_arch="resnet18", teacher_weights="none", arch="resnet18",
        method="ctkd", variant="sort", hparams=resolve_hparams("ctkd", {}), batch_size=4, image_size=32, threads=1))
    trainer = ImageNetTrainer(spec, tmp_path / "run", Ranks(0, 1, 0, 1, META, None))
    assert run_checked_step(trainer, fetch_inside=False) == []


@pytest.mark.parametrize("method", ["kd", "mlkd"])  # mlkd: weak view from the cache, strong view online
def test_cifar_step_with_the_logit_cache_keeps_every_tensor_on_the_model_device(tiny_data, tiny_teacher, tiny_caches,
                                                                               tmp_path, method):
    spec = demo_student(tiny_data, tiny_teacher, method=method, teacher_logits="cache",
                        cache_dir=str(tiny_caches["float32"]), batch_size=16)
    trainer = CifarTrainer(spec, tmp_path / "run", device=META)
    assert run_checked_step(trainer, fetch_inside=True) == []
