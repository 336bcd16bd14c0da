"""Paired per-seed differences (sort − base, swap − base): interval, resolution, detectable effect.

The design is paired: for one (pair, method, seed) every variant shares the initial weights,
the data order and the augmentation draws, so the seed-to-seed spread cancels in the
difference. Per (pair, method, comparison, metric) over the n seeds both variants share:

- the mean difference and its two-sided Student t interval (n − 1 degrees of freedom);
- ``resolved``: "yes" when that interval excludes 0, "no" otherwise (and always "no" for n = 1,
  which has no spread estimate and so no interval);
- ``mde``: the minimum detectable effect, the smallest true mean difference that a two-sided
  paired t-test at α = 1 − confidence rejects with probability ``POWER`` (80 %), given n and the
  observed sd of the differences (see ``minimum_detectable_effect``).
"""
from __future__ import annotations

import json
import math
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import optimize, stats

CONFIDENCE = 0.95
POWER = 0.8
DELTA_METRICS = ("best_top1", "final_top1")
COMPARED_VARIANTS = ("sort", "swap")
NOTE_ONE_SEED = "one seed: no interval"
NOTE_ZERO_SPREAD = "identical differences on every seed: zero-width interval"
DELTA_COLUMNS = [
    "experiment", "dataset", "pair", "method", "comparison", "metric", "seeds", "differences",
    "n", "mean", "std", "ci_low", "ci_high", "confidence", "resolved", "mde", "power", "note",
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


def is_resolved(low: float, high: float) -> bool:
    """True when the interval [low, high] excludes 0; a missing interval (nan) is not resolved."""
    if math.isnan(low) or math.isnan(high):
        return False
    return low > 0.0 or high < 0.0


def paired_t_power(effect: float, sd: float, n: int, confidence: float = CONFIDENCE) -> float:
    """Probability that a two-sided paired t-test at α = 1 − confidence rejects "mean = 0".

    For n differences with true mean ``effect`` and sd ``sd``, the t statistic follows the
    noncentral t distribution with n − 1 degrees of freedom and noncentrality
    effect·√n / sd; the test rejects when |t| exceeds the t quantile t(1 − α/2, n − 1).
    """
    if n < 2:
        raise ValueError(f"n must be at least 2 for a t-test, got {n}")
    if not sd > 0.0:
        raise ValueError(f"sd must be positive, got {sd}")
    df = n - 1
    critical = stats.t.ppf(1.0 - (1.0 - confidence) / 2.0, df)
    noncentrality = effect * math.sqrt(n) / sd
    # P(t > c) + P(t < -c). The lower tail is written as the upper tail of the mirrored
    # distribution: scipy's nct.cdf returns nan far out in the tail where nct.sf does not.
    power = stats.nct.sf(critical, df, noncentrality) + stats.nct.sf(critical, df, -noncentrality)
    if not math.isfinite(power):
        raise ArithmeticError(f"power of the t-test is not finite for effect={effect}, sd={sd}, "
                              f"n={n}")
    return float(power)


def minimum_detectable_effect(sd: float, n: int, power: float = POWER,
                              confidence: float = CONFIDENCE) -> float:
    """Smallest true mean difference detected with probability ``power``; in the unit of ``sd``.

    Exact, not the normal approximation: the effect δ ≥ 0 solves ``paired_t_power(δ, sd, n) =
    power`` (noncentral t, see there) by root finding. The power rises monotonically in δ from
    α at δ = 0, so the root is unique. nan for n < 2 or a nan sd (no spread estimate); 0 for a
    zero sd (every non-zero difference is then detected).
    """
    if not (1.0 - confidence) < power < 1.0:
        raise ValueError(f"power must lie in (α, 1) = ({1.0 - confidence:g}, 1), got {power}")
    if n < 2 or math.isnan(sd):
        return math.nan
    if sd == 0.0:
        return 0.0
    # Bracket the root in units of the standard error, doubling the upper end until it holds.
    standard_error = sd / math.sqrt(n)
    high = 4.0
    while paired_t_power(high * standard_error, sd, n, confidence) < power:
        high *= 2.0
    root = optimize.brentq(lambda k: paired_t_power(k * standard_error, sd, n, confidence) - power,
                           0.0, high, xtol=1e-12, rtol=1e-12)
    return float(root * standard_error)


def paired_deltas(runs: pd.DataFrame, confidence: float = CONFIDENCE,
                  power: float = POWER) -> pd.DataFrame:
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
                                       seeds, differences, confidence, power))
    frame = pd.DataFrame.from_records(rows, columns=DELTA_COLUMNS)
    return frame.sort_values(["experiment", "dataset", "pair", "method", "comparison", "metric"],
                             kind="mergesort").reset_index(drop=True)


def deltas_csv_text(deltas: pd.DataFrame) -> str:
    return deltas[DELTA_COLUMNS].to_csv(index=False, lineterminator="\n")


def _delta_row(experiment, dataset, pair, method, variant, metric, seeds, differences,
               confidence, power) -> dict:
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
        "ci_low": low, "ci_high": high, "confidence": confidence,
        "resolved": "yes" if is_resolved(low, high) else "no",
        "mde": minimum_detectable_effect(std, n, power, confidence), "power": power,
        "note": note,
    }
