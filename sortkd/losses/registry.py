"""The method registry: the ``Method`` base class, the ``register`` decorator and ``compute_loss``.

A method is one module of this package holding one (or a few) ``Method`` subclasses, each
decorated with ``@register``; ``import sortkd.losses`` imports every module of the package,
so a new file is all a new method needs. A method turns (student logits, teacher logits,
labels, hyper-parameters, per-epoch schedule values, optional learnable state) into named,
already weighted loss terms. The run's variant (base / sort / swap) is applied to the teacher
logits in ``compute_loss`` only, so every method gets it the same way.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import torch
from torch import nn

from sortkd.sorting import apply_variant

# The image views a method can ask for, per training sample. "weak" is the usual crop + flip;
# "strong" adds RandAugment + Cutout (sortkd.data.randaugment).
VIEWS = ("weak", "strong")

_NAME = re.compile(r"[a-z][a-z0-9_]*")


class Method:
    """Base class of a registered training method; subclasses set the class attributes below.

    For a single-view method (``views == ("weak",)``) ``terms`` receives the student and
    teacher logits as [B, C] tensors; for a multi-view method it receives dicts
    ``{view: [B, C] tensor}`` with exactly the keys of ``views``. ``teacher`` has already been
    through the run's variant.
    """

    name: str                       # registry key, used in paths and configs
    label: str                      # display name in tables and plots, e.g. "KD+LS"
    description: str
    defaults: Mapping[str, float]   # every hyper-parameter the method reads, with its default
    views: tuple[str, ...] = ("weak",)
    needs_teacher: bool = True

    def make_state(self, hp: Mapping[str, float]) -> nn.Module | None:
        """Learnable loss state trained with the student (e.g. CTKD's temperature), or None."""
        return None

    def schedule(self, epoch: int, hp: Mapping[str, float]) -> dict[str, float]:
        """Per-epoch values (epoch counted from 1) handed to ``terms``."""
        return {}

    def check(self, hp: Mapping[str, float]) -> None:
        """Reject bad hyper-parameter values with a one-line ValueError (keys are checked already)."""

    def terms(self, student, teacher, target: torch.Tensor, hp: Mapping[str, float],
              schedule: Mapping[str, float | torch.Tensor], state: nn.Module | None
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(named weighted loss terms, diagnostics); the total is the sum of the terms."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<method {self.name!r} ({self.label})>"


@dataclass
class LossOutput:
    terms: dict[str, torch.Tensor]
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def total(self) -> torch.Tensor:
        return sum(self.terms.values())


METHODS: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: instantiate ``cls`` and add it to ``METHODS`` under ``cls.name``."""
    method = cls()
    where = f"{cls.__module__}.{cls.__qualname__}"
    for attr in ("name", "label", "description", "defaults"):
        if not hasattr(method, attr):
            raise TypeError(f"method class {where} does not set {attr!r}")
    if not isinstance(method.name, str) or not _NAME.fullmatch(method.name):
        raise ValueError(f"method class {where}: name {method.name!r} must match {_NAME.pattern}")
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered "
                         f"(by {type(METHODS[method.name]).__module__})")
    taken = {m.label: m.name for m in METHODS.values()}
    if method.label in taken:
        raise ValueError(f"method {method.name!r}: label {method.label!r} is already used by "
                         f"{taken[method.label]!r}")
    views = tuple(method.views)
    if not views or views[0] != "weak" or len(set(views)) != len(views) or set(views) - set(VIEWS):
        raise ValueError(f"method {method.name!r}: views {views!r} must start with 'weak' and hold "
                         f"distinct views out of {', '.join(VIEWS)}")
    for key, value in method.defaults.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"method {method.name!r}: default {key}={value!r} is not a number "
                             f"(configs and schemas carry numbers only)")
    method.views = views
    # Read-only, so no caller can change the defaults of every later run by accident.
    method.defaults = MappingProxyType(dict(method.defaults))
    METHODS[method.name] = method
    return cls


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join(sorted(METHODS))}") from None


def resolve_hparams(name: str, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """The method's defaults updated by ``overrides``; an unknown key or a bad value is an error.

    Called once per run when the grid builds its spec; ``compute_loss`` takes the result as is.
    """
    method = get_method(name)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(method.defaults))
    if unknown:
        raise ValueError(
            f"method {name!r} has no hyper-parameter {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(method.defaults))}"
        )
    hp = {**method.defaults, **overrides}
    method.check(hp)
    return hp


def _missing_hparam(method: Method, hparams: Mapping, error: KeyError) -> Exception:
    key = error.args[0] if error.args else None
    if key in method.defaults and key not in hparams:
        return ValueError(f"method {method.name!r}: hyper-parameter {key!r} is missing; pass the "
                          f"complete dict from resolve_hparams({method.name!r}, overrides)")
    return error


def compute_loss(name: str, student, teacher, target: torch.Tensor, epoch: int,
                 hparams: Mapping[str, float], variant: str = "base", state: nn.Module | None = None,
                 schedule: Mapping[str, float | torch.Tensor] | None = None) -> LossOutput:
    """Named loss terms of method ``name`` at ``epoch`` (1-based).

    ``hparams`` must be complete (``resolve_hparams``): nothing is filled in here.
    ``student`` and ``teacher`` are [B, C] logits, or dicts ``{view: logits}`` for a method with
    several views; the variant is applied to every teacher view. ``schedule`` overrides the
    per-epoch values (e.g. device tensors inside a CUDA graph); by default they come from ``epoch``.
    """
    method = get_method(name)
    multi_view = len(method.views) > 1
    if multi_view:
        _check_views(method, "student", student)
    if method.needs_teacher:
        if teacher is None:
            raise ValueError(f"method {name!r} needs teacher logits")
        if multi_view:
            _check_views(method, "teacher", teacher)
            teacher = {view: apply_variant(logits, target, variant) for view, logits in teacher.items()}
        else:
            teacher = apply_variant(teacher, target, variant)
    elif variant != "base":
        raise ValueError(f"method {name!r} has no teacher, so variant {variant!r} means nothing")
    # A missing key surfaces as a KeyError inside the method: turned into a clear error here,
    # at no cost on the normal path.
    try:
        if schedule is None:
            schedule = method.schedule(epoch, hparams)
        terms, diagnostics = method.terms(student, teacher, target, hparams, schedule, state)
    except KeyError as error:
        raise _missing_hparam(method, hparams, error) from None
    return LossOutput(terms, diagnostics)


def _check_views(method: Method, role: str, logits) -> None:
    if not isinstance(logits, Mapping) or tuple(sorted(logits)) != tuple(sorted(method.views)):
        got = sorted(logits) if isinstance(logits, Mapping) else type(logits).__name__
        raise ValueError(f"method {method.name!r} takes {role} logits as a dict with the views "
                         f"{', '.join(method.views)}; got {got}")
