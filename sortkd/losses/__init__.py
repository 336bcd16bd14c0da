"""Distillation losses and the registry of training methods."""
from .ctkd import GlobalTemperature, cosine_lambda, gradient_reversal
from .dkd import dkd_loss
from .kd import kd_loss
from .registry import METHODS, LossOutput, Method, compute_loss, get_method, register, resolve_hparams
from .standardize import standardize

__all__ = [
    "GlobalTemperature", "cosine_lambda", "gradient_reversal", "dkd_loss", "kd_loss",
    "METHODS", "LossOutput", "Method", "compute_loss", "get_method", "register",
    "resolve_hparams", "standardize",
]
