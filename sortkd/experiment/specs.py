"""JSON in and out for the frozen dataclasses that describe one run (CIFAR and ImageNet)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any
from sortkd.files import config_hash
from dataclasses import dataclass, field
from sortkd.models.imagenet import STUDENT_ARCHS, TEACHER_ARCHS, teacher_weights


# --- spec_io ------------------------------------------------------------------

class SpecIO:
    """Mixin: ``from_dict`` rejects unknown keys, ``from_json`` takes JSON or ``@file``."""

    _kind = "run"

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"unknown {cls._kind} setting(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join(sorted(allowed))}")
        return cls(**data)

    @classmethod
    def from_json(cls, text_or_path: str):
        """Accepts a JSON string, or ``@path`` to a JSON file."""
        if text_or_path.startswith("@"):
            text_or_path = Path(text_or_path[1:]).read_text()
        return cls.from_dict(json.loads(text_or_path))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d

    @property
    def hash(self) -> str:
        """Keys the checkpoint: every setting, the thread count included (it can change float sums)."""
        return config_hash(self.to_dict())


# --- variants -----------------------------------------------------------------

VARIANTS = ("base", "sort", "swap")


# --- run_spec -----------------------------------------------------------------

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
        from sortkd.losses import METHODS
        from sortkd.models import ARCHS

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


# --- spec ---------------------------------------------------------------------

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
        from sortkd.losses import METHODS, resolve_hparams
        from sortkd.data.imagenet import default_resize_size

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
