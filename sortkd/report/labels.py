"""Human-readable names for methods, variants and teacher → student pairs."""
from __future__ import annotations

import pandas as pd

# Registry name -> the column name the papers use. Unknown methods keep their registry name.
METHOD_LABELS = {"kd": "KD", "dkd": "DKD", "lskd": "KD+LS", "ctkd": "CTKD"}
COMPARISON_LABELS = {"sort-base": "sort − base", "swap-base": "swap − base"}


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def variant_label(method: str, variant: str) -> str:
    """'KD' for the baseline, 'KD + sort' / 'KD + swap' for the transformed runs."""
    name = method_label(method)
    return name if variant == "base" else f"{name} + {variant}"


def pair_labels(runs: pd.DataFrame) -> dict[str, str]:
    """pair key -> 'teacher → student', from the teacher/student columns (names may hold '-')."""
    first = runs.drop_duplicates("pair")
    return {row.pair: f"{row.teacher} → {row.student}" for row in first.itertuples()}
