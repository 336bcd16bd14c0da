"""Distillation losses and the registry of training methods."""
from sortkd.losses.ctkd import GlobalTemperature, cosine_lambda, gradient_reversal
from sortkd.losses.dkd import dkd_loss
from sortkd.losses.kd import kd_loss
from sortkd.losses.registry import METHODS, LossOutput, Method, compute_loss, get_method, register, resolve_hparams
from sortkd.losses.standardize import standardize

__all__ = [
    "GlobalTemperature", "cosine_lambda", "gradient_reversal", "dkd_loss", "kd_loss",
    "METHODS", "LossOutput", "Method", "compute_loss", "get_method", "register",
    "resolve_hparams", "standardize",
]
