"""Distillation losses and the registry of training methods.

Every module of this package is imported here, so a method registers itself just by living in
a file of ``sortkd/losses/`` (see ``registry.py`` for the ``Method`` interface).
"""
import importlib
import pkgutil

from sortkd.losses.registry import VIEWS, METHODS, LossOutput, Method, compute_loss, get_method, register, resolve_hparams


def _import_method_modules() -> None:
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
    # Name order, whatever order the modules imported each other in.
    ordered = sorted(METHODS.items())
    METHODS.clear()
    METHODS.update(ordered)


_import_method_modules()

from sortkd.losses.ctkd import GlobalTemperature, cosine_lambda, gradient_reversal  # noqa: E402
from sortkd.losses.dkd import dkd_loss  # noqa: E402
from sortkd.losses.kd import kd_loss  # noqa: E402
from sortkd.losses.lskd import standardize  # noqa: E402
from sortkd.losses.mlkd import mlkd_loss  # noqa: E402

__all__ = [
    "GlobalTemperature", "cosine_lambda", "gradient_reversal", "dkd_loss", "kd_loss", "mlkd_loss",
    "METHODS", "VIEWS", "LossOutput", "Method", "compute_loss", "get_method", "register",
    "resolve_hparams", "standardize",
]
