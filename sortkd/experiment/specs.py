"""Run specs: the frozen, validated description of one run, CIFAR (RunSpec) or ImageNet (ImageNetRunSpec).

The grid builds every spec once, at DAG construction, with COMPLETE hyper-parameters; the
rule passes it to the job as JSON (Snakemake's params trigger then reruns exactly the runs
whose settings changed), and the job reads it back with the same validation. Nothing
downstream fills in a default: what the spec says is what runs.

This module imports no torch: the CLI's help and the report read it. The checks that need
the registries (methods, architectures) import them when a spec is built.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from sortkd.files import config_hash

VARIANTS = ("base", "sort", "swap")
DEVICES = ("cpu", "cuda")
PRECISIONS = ("exact", "bf16")  # bf16: autocast (CUDA, and the CPU's autocast in tests)
KINDS = ("teacher", "student")
TEACHER_LOGITS = ("online", "cache")
DECODERS = ("cpu", "gpu")

# Settings that change no number of a run. They are left out of the hash that keys the
# checkpoint, so that switching one on for a finished grid resumes each run from its last
# checkpoint (at once) instead of training it again.
UNHASHED = ("tensorboard",)


@dataclass(frozen=True, kw_only=True)
class Spec:
    """What CIFAR and ImageNet runs share: identity, method, recipe, compute, JSON and hash."""

    _kind: ClassVar[str] = "run"

    name: str                      # e.g. "demo/resnet14-resnet8/kd/sort/seed0": used in messages
    data: str
    arch: str                      # the network being trained
    method: str
    variant: str = "base"
    hparams: dict = field(default_factory=dict)  # every hyper-parameter of the method, no fewer, no more
    seed: int = 0
    experiment: str = "default"
    pair: str | None = None
    teacher_arch: str | None = None
    epochs: int
    batch_size: int
    lr: float
    lr_milestones: tuple
    lr_gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float
    device: str = "cpu"
    precision: str = "exact"
    threads: int | None = None
    tensorboard: bool = False      # also write TensorBoard event files next to metrics.jsonl

    # --- validation --------------------------------------------------------------------

    def fail(self, problem: str):
        raise ValueError(f"run {self.name}: {problem}")

    def one_of(self, key: str, value: Any, allowed) -> None:
        if value not in allowed:
            self.fail(f"{key}={value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")

    def allowed_methods(self) -> tuple[str, ...]:
        raise NotImplementedError

    def validate(self) -> None:
        """The checks of one dataset (subclasses)."""

    def __post_init__(self):
        object.__setattr__(self, "lr_milestones", tuple(int(m) for m in self.lr_milestones))
        self.one_of("method", self.method, self.allowed_methods())
        self.one_of("variant", self.variant, VARIANTS)
        self.one_of("device", self.device, DEVICES)
        self.one_of("precision", self.precision, PRECISIONS)
        if not isinstance(self.tensorboard, bool):
            self.fail(f"tensorboard={self.tensorboard!r} is not allowed; allowed: true, false")
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                self.fail(f"{key} must be >= 1")
        self._check_hparams()
        self.validate()

    def _check_hparams(self) -> None:
        from sortkd.losses import get_method

        expected = set(get_method(self.method).defaults)
        unknown = sorted(set(self.hparams) - expected)
        if unknown:
            self.fail(f"method {self.method!r} has no hyper-parameter {', '.join(map(repr, unknown))}; "
                      f"allowed: {', '.join(sorted(expected))}")
        missing = sorted(expected - set(self.hparams))
        if missing:
            self.fail(f"hparams lack {', '.join(map(repr, missing))} of method {self.method!r}: a spec carries "
                      f"every hyper-parameter of its method (complete them with "
                      f"sortkd.losses.resolve_hparams({self.method!r}, overrides))")
        for key, value in self.hparams.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.fail(f"hparams.{key}={value!r} is not a number")

    # --- JSON in and out ---------------------------------------------------------------

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

    def to_json(self) -> str:
        """One line, keys sorted: the form a rule passes on the command line."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def hash(self) -> str:
        """Keys the checkpoint: every setting that can change a number, the thread count included
        (it can change float sums)."""
        return config_hash({k: v for k, v in self.to_dict().items() if k not in UNHASHED})


@dataclass(frozen=True, kw_only=True)
class RunSpec(Spec):
    """One CIFAR run: a teacher (method 'vanilla') or a student (a distillation method)."""

    kind: str
    dataset: str = "cifar100"
    method: str = "vanilla"
    epochs: int = 240
    batch_size: int = 64
    lr: float = 0.05
    lr_milestones: tuple = (150, 180, 210)
    weight_decay: float = 5e-4
    teacher_dir: str | None = None  # holds model.pt and teacher.json
    teacher_logits: str = "online"
    cache_dir: str | None = None

    def allowed_methods(self) -> tuple[str, ...]:
        from sortkd.losses import METHODS

        return tuple(METHODS)

    def validate(self) -> None:
        from sortkd.models import ARCHS

        self.one_of("kind", self.kind, KINDS)
        self.one_of("arch", self.arch, ARCHS)
        self.one_of("teacher_logits", self.teacher_logits, TEACHER_LOGITS)
        if self.kind == "student":
            if self.method == "vanilla":
                self.fail("a student needs a distillation method, not 'vanilla'")
            if not self.teacher_arch or not self.teacher_dir:
                self.fail("a student needs teacher_arch and teacher_dir")
            self.one_of("teacher_arch", self.teacher_arch, ARCHS)
            if self.teacher_logits == "cache" and not self.cache_dir:
                self.fail("teacher_logits='cache' needs cache_dir")
        elif self.method != "vanilla" or self.variant != "base":
            self.fail("a teacher trains with method 'vanilla', variant 'base'")


@dataclass(frozen=True, kw_only=True)
class ImageNetRunSpec(Spec):
    """One ImageNet student; the teacher runs online with torchvision's pretrained weights."""

    _kind: ClassVar[str] = "ImageNet run"

    teacher_arch: str
    teacher_weights: str = "IMAGENET1K_V1"
    epochs: int = 100
    batch_size: int = 512          # global: split evenly over the processes of a run
    lr: float = 0.2
    lr_milestones: tuple = (30, 60, 90)
    weight_decay: float = 1e-4
    image_size: int = 224
    resize_size: int | None = None
    loader_workers: int | None = None
    decode: str = "cpu"
    # Upstream wraps the model in DataParallel: batch-norm statistics per GPU. true = global BN.
    sync_bn: bool = False
    max_steps_per_epoch: int | None = None
    eval_batch_size: int | None = None

    def allowed_methods(self) -> tuple[str, ...]:
        from sortkd.losses import METHODS

        return tuple(m for m in METHODS if m != "vanilla")

    def validate(self) -> None:
        from sortkd.data.imagenet import default_resize_size
        from sortkd.models.imagenet import STUDENT_ARCHS, TEACHER_ARCHS, teacher_weights

        self.one_of("teacher_arch", self.teacher_arch, TEACHER_ARCHS)
        self.one_of("arch", self.arch, STUDENT_ARCHS)
        self.one_of("decode", self.decode, DECODERS)
        teacher_weights(self.teacher_arch, self.teacher_weights)
        expected_pair = f"{self.teacher_arch}-{self.arch}"
        if self.pair is None:
            object.__setattr__(self, "pair", expected_pair)
        elif self.pair != expected_pair:
            self.fail(f"pair {self.pair!r} does not name teacher-student {expected_pair!r}")
        if self.resize_size is None:
            object.__setattr__(self, "resize_size", default_resize_size(self.image_size))
        if self.image_size < 1:
            self.fail("image_size must be >= 1")
        if self.resize_size < self.image_size:
            self.fail(f"resize_size {self.resize_size} is smaller than the crop image_size {self.image_size}")
        if self.device != "cuda" and self.decode == "gpu":
            self.fail("decode 'gpu' (nvJPEG) is one of the CUDA paths; use decode 'cpu' on the CPU")
