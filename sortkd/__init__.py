"""SortKD: parameter-free logit distillation via sorting.

``from sortkd import sort_logits`` is all a user of the transform needs; the
rest of the package is the experiment pipeline. torch is imported lazily so
that the pipeline's CLI can take a GPU slot before anything touches CUDA.
"""
__version__ = "0.1.0"
__all__ = ["sort_logits", "swap_logits", "apply_variant", "__version__"]


def __getattr__(name):
    if name in ("sort_logits", "swap_logits", "apply_variant"):
        from sortkd import sorting

        return getattr(sorting, name)
    raise AttributeError(f"module 'sortkd' has no attribute {name!r}")
