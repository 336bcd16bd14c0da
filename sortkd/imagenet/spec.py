"""The fully resolved description of one ImageNet student run.

``python -m sortkd train-imagenet --spec JSON|@file`` reads it. Keys (defaults = methods.md §3):

- ``name``: label used in messages, e.g. "imagenet/resnet34-resnet18/kd/sort/seed0";
- ``data``: the ImageNet root holding train/<wnid>/*.JPEG and val/<wnid>/*.JPEG;
- ``teacher_arch``: resnet18 | resnet34 | resnet50 (torchvision);
- ``teacher_weights``: a member of the arch's torchvision weights enum ("IMAGENET1K_V1"), or
  "none" for random weights (tests, dry runs);
- ``arch``: the student, resnet18 | resnet34 | resnet50 | mobilenetv1;
- ``method``, ``variant`` (base | sort | swap), ``hparams``: as in the method registry;
- ``seed``; ``experiment`` (default "default"); ``pair`` (default "<teacher_arch>-<arch>");
- ``epochs`` 100, ``batch_size`` 512 (global: split evenly over the processes), ``lr`` 0.2,
  ``lr_milestones`` [30, 60, 90], ``lr_gamma`` 0.1, ``weight_decay`` 1e-4, ``momentum`` 0.9;
- ``image_size`` 224 (train crop and val crop); ``resize_size`` (val shorter side before the
  centre crop, default image_size·256/224);
- ``device`` cpu | cuda; ``precision`` exact (fp32) | bf16 (autocast + channels_last, CUDA);
- ``threads``: CPU threads of the whole job, shared by its processes (default: all cores);
  ``loader_workers``: DataLoader workers per process (default: derived from ``threads``);
- ``decode``: cpu (PIL in the workers) | gpu (nvjpeg, CUDA only);
- ``sync_bn`` true: batch norm over the global batch, so the run does not depend on the number
  of processes;
- ``max_steps_per_epoch``: cap on the steps of an epoch (tests), default none;
- ``eval_batch_size``: per-process validation batch (default: the per-process train batch).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..spec_io import SpecIO
from ..variants import VARIANTS
from .models import STUDENT_ARCHS, TEACHER_ARCHS, teacher_weights

DEVICES = ("cpu", "cuda")
PRECISIONS = ("exact", "bf16")
DECODERS = ("cpu", "gpu")


@dataclass(frozen=True)
class ImageNetRunSpec(SpecIO):
    _kind = "ImageNet run"

    name: str
    data: str
    teacher_arch: str
    arch: str
    method: str
    variant: str = "base"
    teacher_weights: str = "IMAGENET1K_V1"
    hparams: dict = field(default_factory=dict)
    seed: int = 0
    experiment: str = "default"
    pair: str | None = None
    epochs: int = 100
    batch_size: int = 512
    lr: float = 0.2
    lr_milestones: tuple = (30, 60, 90)
    lr_gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    image_size: int = 224
    resize_size: int | None = None
    device: str = "cpu"
    precision: str = "exact"
    threads: int | None = None
    loader_workers: int | None = None
    decode: str = "cpu"
    sync_bn: bool = True
    max_steps_per_epoch: int | None = None
    eval_batch_size: int | None = None

    def __post_init__(self):
        from ..losses import METHODS, resolve_hparams
        from .views import default_resize_size

        def fail(problem):
            raise ValueError(f"run {self.name}: {problem}")

        def one_of(key, value, allowed):
            if value not in allowed:
                fail(f"{key}={value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")

        one_of("teacher_arch", self.teacher_arch, TEACHER_ARCHS)
        one_of("arch", self.arch, STUDENT_ARCHS)
        one_of("method", self.method, tuple(m for m in METHODS if m != "vanilla"))
        one_of("variant", self.variant, VARIANTS)
        one_of("device", self.device, DEVICES)
        one_of("precision", self.precision, PRECISIONS)
        one_of("decode", self.decode, DECODERS)
        teacher_weights(self.teacher_arch, self.teacher_weights)
        resolve_hparams(self.method, self.hparams)
        expected_pair = f"{self.teacher_arch}-{self.arch}"
        if self.pair is None:
            object.__setattr__(self, "pair", expected_pair)
        elif self.pair != expected_pair:
            fail(f"pair {self.pair!r} does not name teacher-student {expected_pair!r}")
        if self.resize_size is None:
            object.__setattr__(self, "resize_size", default_resize_size(self.image_size))
        object.__setattr__(self, "lr_milestones", tuple(int(m) for m in self.lr_milestones))
        for key in ("epochs", "batch_size", "image_size"):
            if getattr(self, key) < 1:
                fail(f"{key} must be >= 1")
        if self.resize_size < self.image_size:
            fail(f"resize_size {self.resize_size} is smaller than the crop image_size {self.image_size}")
        if self.device != "cuda" and (self.precision == "bf16" or self.decode == "gpu"):
            fail("precision 'bf16' and decode 'gpu' are CUDA paths; use precision 'exact' and decode 'cpu' "
                 "on the CPU")
