"""Paired per-seed differences (sort − base, swap − base) and their t-intervals over seeds.

The design is paired: for one (pair, method, seed) every variant shares the initial weights,
the data order and the augmentation draws, so the seed-to-seed spread cancels in the
difference. The interval is the one-sample Student t interval of the mean difference
(n − 1 degrees of freedom). With one seed there is no spread estimate and no interval.
"""
from __future__ import annotations

import json
import math
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
DELTA_METRICS = ("best_top1", "final_top1")
COMPARED_VARIANTS = ("sort", "swap")
NOTE_ONE_SEED = "one seed: no interval"
NOTE_ZERO_SPREAD = "identical differences on every seed: zero-width interval"
DELTA_COLUMNS = [
    "experiment", "dataset", "pair", "method", "comparison", "metric", "seeds", "differences",
    "n", "mean", "std", "ci_low", "ci_high", "confidence", "note",
]


def comparison_name(variant: str) -> str:
    return f"{variant}-base"


def t_interval(differences: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Two-sided Student t interval for the mean of ``differences``; (nan, nan) when n < 2."""
    values = np.asarray(differences, dtype=float)
    if values.size < 2:
        return math.nan, math.nan
    mean = float(values.mean())
    std = float(values.std(ddof=1))
    if std == 0.0:
        # scipy returns nan for a zero scale; the limit of the interval is the point itself.
        return mean, mean
    low, high = stats.t.interval(confidence, values.size - 1, loc=mean,
                                 scale=std / math.sqrt(values.size))
    return float(low), float(high)


def paired_deltas(runs: pd.DataFrame, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One row per (pair, method, comparison, metric) over the seeds both variants share."""
    rows = []
    group_columns = ["experiment", "dataset", "pair", "method"]
    for (experiment, dataset, pair, method), cell in runs.groupby(group_columns, sort=True):
        base = cell[cell["variant"] == "base"].set_index("seed")
        for variant in COMPARED_VARIANTS:
            treated = cell[cell["variant"] == variant].set_index("seed")
            seeds = sorted(set(base.index) & set(treated.index))
            if treated.empty or not seeds:
                continue
            for metric in DELTA_METRICS:
                differences = [float(treated.at[seed, metric] - base.at[seed, metric])
                               for seed in seeds]
                rows.append(_delta_row(experiment, dataset, pair, method, variant, metric,
                                       seeds, differences, confidence))
    frame = pd.DataFrame.from_records(rows, columns=DELTA_COLUMNS)
    return frame.sort_values(["experiment", "dataset", "pair", "method", "comparison", "metric"],
                             kind="mergesort").reset_index(drop=True)


def deltas_csv_text(deltas: pd.DataFrame) -> str:
    return deltas[DELTA_COLUMNS].to_csv(index=False, lineterminator="\n")


def _delta_row(experiment, dataset, pair, method, variant, metric, seeds, differences,
               confidence) -> dict:
    n = len(differences)
    values = np.asarray(differences, dtype=float)
    std = float(values.std(ddof=1)) if n > 1 else math.nan
    low, high = t_interval(differences, confidence)
    if n == 1:
        note = NOTE_ONE_SEED
    elif std == 0.0:
        note = NOTE_ZERO_SPREAD
    else:
        note = ""
    return {
        "experiment": experiment, "dataset": dataset, "pair": pair, "method": method,
        "comparison": comparison_name(variant), "metric": metric,
        "seeds": json.dumps([int(seed) for seed in seeds]),
        # Rounded for the text only; mean/std/interval come from the unrounded values.
        "differences": json.dumps([round(value, 6) for value in differences]),
        "n": n, "mean": float(values.mean()), "std": std,
        "ci_low": low, "ci_high": high, "confidence": confidence, "note": note,
    }
