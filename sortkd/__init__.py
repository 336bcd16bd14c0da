"""SortKD: parameter-free logit distillation via sorting.

``from sortkd import sort_logits`` is all a user of the transform needs; the
rest of the package is the experiment pipeline.
"""
from .transform import apply_variant, sort_logits, swap_logits

__version__ = "0.1.0"
__all__ = ["sort_logits", "swap_logits", "apply_variant", "__version__"]
