"""Registry of training methods.

An entry turns (student logits, teacher logits, labels, per-epoch schedule values,
hyper-parameters) into named, already weighted loss terms. The run's variant
(base / sort / swap) is applied to the teacher logits in ``compute_loss`` only,
so every method gets it the same way. Adding a method is one ``register`` call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from sortkd.sorting import apply_variant
from sortkd.losses.ctkd import GlobalTemperature, cosine_lambda
from sortkd.losses.dkd import dkd_loss
from sortkd.losses.kd import kd_loss
from sortkd.losses.standardize import standardize

TermsFn = Callable[..., "tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]"]


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    defaults: Mapping[str, float]
    terms: TermsFn  # (student, teacher, target, hp, schedule, state) -> (terms, diagnostics)
    schedule: Callable[[int, Mapping[str, float]], dict[str, float]] = lambda epoch, hp: {}
    make_state: Callable[[Mapping[str, float]], nn.Module | None] = lambda hp: None
    needs_teacher: bool = True


@dataclass
class LossOutput:
    terms: dict[str, torch.Tensor]
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def total(self) -> torch.Tensor:
        return sum(self.terms.values())


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join(sorted(METHODS))}") from None


def resolve_hparams(name: str, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """The method's defaults updated by ``overrides``; an unknown key is an error."""
    method = get_method(name)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(method.defaults))
    if unknown:
        raise ValueError(
            f"method {name!r} has no hyper-parameter {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(method.defaults))}"
        )
    return {**method.defaults, **overrides}


def compute_loss(name: str, student: torch.Tensor, teacher: torch.Tensor | None,
                 target: torch.Tensor, epoch: int, hparams: Mapping[str, float],
                 variant: str = "base", state: nn.Module | None = None,
                 schedule: Mapping[str, float | torch.Tensor] | None = None) -> LossOutput:
    """Named loss terms of method ``name`` at ``epoch`` (1-based).

    ``schedule`` overrides the per-epoch values (e.g. device tensors inside a
    CUDA graph); by default they are computed from ``epoch``.
    """
    method = get_method(name)
    hp = resolve_hparams(name, hparams)
    if schedule is None:
        schedule = method.schedule(epoch, hp)
    if method.needs_teacher:
        if teacher is None:
            raise ValueError(f"method {name!r} needs teacher logits")
        teacher = apply_variant(teacher, target, variant)
    elif variant != "base":
        raise ValueError(f"method {name!r} has no teacher, so variant {variant!r} means nothing")
    terms, diagnostics = method.terms(student, teacher, target, hp, schedule, state)
    return LossOutput(terms, diagnostics)


def _ce(student, target):
    return F.cross_entropy(student, target)


# --- the entries -----------------------------------------------------------

def _vanilla_terms(student, teacher, target, hp, schedule, state):
    return {"ce": _ce(student, target)}, {}


def _kd_terms(student, teacher, target, hp, schedule, state):
    return {
        "ce": hp["ce_weight"] * _ce(student, target),
        "kd": hp["kd_weight"] * kd_loss(student, teacher, hp["temperature"]),
    }, {}


def _dkd_schedule(epoch, hp):
    return {"warmup": min(epoch / hp["warmup"], 1.0) if hp["warmup"] > 0 else 1.0}


def _dkd_terms(student, teacher, target, hp, schedule, state):
    kd = dkd_loss(student, teacher, target, hp["alpha"], hp["beta"], hp["temperature"])
    return {"ce": hp["ce_weight"] * _ce(student, target), "dkd": schedule["warmup"] * kd}, {}


def _ctkd_schedule(epoch, hp):
    return {"lambda": cosine_lambda(epoch, int(hp["lambda_epochs"]), hp["lambda_min"], hp["lambda_max"])}


def _ctkd_state(hp):
    return GlobalTemperature(hp["init"], hp["t_min"], hp["t_range"])


def _ctkd_temperature(state, schedule):
    if state is None:
        raise ValueError("CTKD needs its GlobalTemperature state (Method.make_state)")
    return state(schedule["lambda"])


def _ctkd_terms(student, teacher, target, hp, schedule, state):
    temperature = _ctkd_temperature(state, schedule)
    terms = {
        "ce": hp["ce_weight"] * _ce(student, target),
        "kd": hp["kd_weight"] * kd_loss(student, teacher, temperature),
    }
    return terms, {"ctkd_temperature": temperature.detach(),
                   "ctkd_lambda": torch.as_tensor(schedule["lambda"])}


def _lskd_terms(student, teacher, target, hp, schedule, state):
    kd = kd_loss(standardize(student), standardize(teacher), hp["temperature"])
    return {"ce": hp["ce_weight"] * _ce(student, target), "kd": hp["kd_weight"] * kd}, {}


def _dkd_ls_terms(student, teacher, target, hp, schedule, state):
    w = hp["weight"]
    kd = dkd_loss(standardize(student), standardize(teacher), target,
                  hp["alpha"] * w, hp["beta"] * w, hp["temperature"])
    return {"ce": hp["ce_weight"] * _ce(student, target), "dkd": schedule["warmup"] * kd}, {}


def _dkd_ctkd_terms(student, teacher, target, hp, schedule, state):
    temperature = _ctkd_temperature(state, schedule)
    kd = dkd_loss(student, teacher, target, hp["alpha"], hp["beta"], temperature)
    return {"ce": hp["ce_weight"] * _ce(student, target), "dkd": kd}, {
        "ctkd_temperature": temperature.detach(), "ctkd_lambda": torch.as_tensor(schedule["lambda"])}


_CTKD_DEFAULTS = {"init": 1.0, "t_min": 1.0, "t_range": 20.0,
                  "lambda_min": -1.0, "lambda_max": 0.0, "lambda_epochs": 10}

register(Method("vanilla", "cross-entropy only (teachers)", {}, _vanilla_terms, needs_teacher=False))
register(Method("kd", "Hinton KD", {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9}, _kd_terms))
register(Method("dkd", "Decoupled KD",
                {"temperature": 4.0, "ce_weight": 1.0, "alpha": 1.0, "beta": 8.0, "warmup": 20},
                _dkd_terms, schedule=_dkd_schedule))
register(Method("ctkd", "KD with a curriculum (global, learnable) temperature",
                {"ce_weight": 0.1, "kd_weight": 0.9, **_CTKD_DEFAULTS},
                _ctkd_terms, schedule=_ctkd_schedule, make_state=_ctkd_state))
register(Method("lskd", "KD on standardized logits",
                {"temperature": 2.0, "ce_weight": 0.1, "kd_weight": 9.0}, _lskd_terms))
register(Method("dkd_ls", "DKD on standardized logits (α, β scaled by weight)",
                {"temperature": 2.0, "weight": 9.0, "ce_weight": 1.0, "alpha": 1.0, "beta": 8.0,
                 "warmup": 20}, _dkd_ls_terms, schedule=_dkd_schedule))
register(Method("dkd_ctkd", "DKD with the curriculum temperature",
                {"ce_weight": 1.0, "alpha": 1.0, "beta": 2.0, **_CTKD_DEFAULTS},
                _dkd_ctkd_terms, schedule=_ctkd_schedule, make_state=_ctkd_state))
