"""The fully resolved description of one training run (teacher or student).

The Snakemake rules build it from config.yaml and pass it as JSON to
``python -m sortkd train``; its hash keys the checkpoint used for resume.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .spec_io import SpecIO
from .variants import VARIANTS

KINDS = ("teacher", "student")
TEACHER_LOGITS = ("online", "cache")
DEVICES = ("cpu", "cuda")
PRECISIONS = ("exact", "bf16")


@dataclass(frozen=True)
class RunSpec(SpecIO):
    kind: str
    name: str                      # e.g. "demo/resnet14-resnet8/kd/sort/seed0": used in messages
    data: str                      # the converted data set (.npz)
    arch: str                      # the network being trained
    experiment: str = "default"
    dataset: str = "cifar100"
    method: str = "vanilla"
    variant: str = "base"
    hparams: dict = field(default_factory=dict)
    seed: int = 0
    epochs: int = 240
    batch_size: int = 64
    lr: float = 0.05
    lr_milestones: tuple = (150, 180, 210)
    lr_gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    pair: str | None = None
    teacher_arch: str | None = None
    teacher_dir: str | None = None  # holds model.pt and teacher.json
    teacher_logits: str = "online"
    cache_dir: str | None = None
    device: str = "cpu"
    precision: str = "exact"
    threads: int | None = None

    def __post_init__(self):
        from .losses import METHODS
        from .models import ARCHS

        def one_of(key, value, allowed):
            if value not in allowed:
                raise ValueError(f"run {self.name}: {key}={value!r} is not allowed; "
                                 f"allowed: {', '.join(map(str, allowed))}")

        one_of("kind", self.kind, KINDS)
        one_of("arch", self.arch, ARCHS)
        one_of("method", self.method, tuple(METHODS))
        one_of("variant", self.variant, VARIANTS)
        one_of("teacher_logits", self.teacher_logits, TEACHER_LOGITS)
        one_of("device", self.device, DEVICES)
        one_of("precision", self.precision, PRECISIONS)
        object.__setattr__(self, "lr_milestones", tuple(int(m) for m in self.lr_milestones))
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"run {self.name}: epochs and batch_size must be >= 1")
        if self.kind == "student":
            if self.method == "vanilla":
                raise ValueError(f"run {self.name}: a student needs a distillation method, not 'vanilla'")
            if not self.teacher_arch or not self.teacher_dir:
                raise ValueError(f"run {self.name}: a student needs teacher_arch and teacher_dir")
            one_of("teacher_arch", self.teacher_arch, ARCHS)
            if self.teacher_logits == "cache" and not self.cache_dir:
                raise ValueError(f"run {self.name}: teacher_logits='cache' needs cache_dir")
        elif self.method != "vanilla" or self.variant != "base":
            raise ValueError(f"run {self.name}: a teacher trains with method 'vanilla', variant 'base'")
