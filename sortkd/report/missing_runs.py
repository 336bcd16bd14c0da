"""Find the runs a grid should have but does not, so that no mean is taken over fewer seeds.

Expected runs, per (experiment, dataset, pair, method):
- every variant seen there, for every expected seed (``seeds``, or every seed seen in the
  experiment when no list is given);
- ``base`` for every seed that has a ``sort`` or ``swap`` run: a paired delta needs its partner.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import pandas as pd

from sortkd.report.errors import ReportInputError


class MissingRun(NamedTuple):
    pair: str
    method: str
    variant: str
    seed: int
    reason: str

    def describe(self) -> str:
        return (f"pair={self.pair} method={self.method} variant={self.variant} "
                f"seed={self.seed} ({self.reason})")


class MissingRunsError(ReportInputError):
    """Raised when the grid is incomplete; ``missing`` lists every absent run."""

    def __init__(self, missing: Sequence[MissingRun]):
        self.missing = list(missing)
        lines = "\n".join(f"  missing run: {run.describe()}" for run in self.missing)
        super().__init__(f"{len(self.missing)} run(s) missing from the grid; "
                         f"refusing to average fewer seeds:\n{lines}")


def find_missing_runs(runs: pd.DataFrame, seeds: Sequence[int] | None = None) -> list[MissingRun]:
    """Every expected run absent from ``runs``, sorted by pair, method, variant, seed."""
    missing: set[MissingRun] = set()
    for _, experiment_runs in runs.groupby("experiment", sort=True):
        expected_seeds = sorted(set(seeds) if seeds is not None else set(experiment_runs["seed"]))
        for (pair, method), cell in experiment_runs.groupby(["pair", "method"], sort=True):
            present = set(zip(cell["variant"], cell["seed"]))
            for variant in sorted(set(cell["variant"])):
                for seed in expected_seeds:
                    if (variant, seed) not in present:
                        missing.add(MissingRun(pair, method, variant, int(seed), "seed not run"))
            for variant, seed in sorted(present):
                if variant != "base" and ("base", seed) not in present:
                    missing.add(MissingRun(pair, method, "base", int(seed),
                                           f"base partner of the {variant} run"))
    # One absent base run may be both "not run" and "a partner": name it once.
    unique: dict[tuple, MissingRun] = {}
    for run in sorted(missing):
        unique.setdefault(run[:4], run)
    return list(unique.values())


def require_complete_grid(runs: pd.DataFrame, seeds: Sequence[int] | None = None) -> None:
    """Raise ``MissingRunsError`` naming each absent run, if any."""
    missing = find_missing_runs(runs, seeds)
    if missing:
        raise MissingRunsError(missing)
