"""Published accuracies (methods.md §6), read from a YAML file: dataset -> pair -> method -> %."""
from __future__ import annotations

import math
from pathlib import Path

import yaml

from sortkd.report.errors import ReportInputError

Published = dict[str, dict[str, dict[str, float]]]


def load_published(path: str | Path) -> Published:
    """Read and check the published-numbers file; every value must be a percentage."""
    path = Path(path)
    if not path.is_file():
        raise ReportInputError(f"published table {path} does not exist")
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    if not isinstance(data, dict):
        raise ReportInputError(f"{path}: expected a mapping dataset -> pair -> method -> top-1")
    published: Published = {}
    for dataset, pairs in data.items():
        if not isinstance(pairs, dict):
            raise ReportInputError(f"{path}: {dataset!r} must map pairs to methods")
        published[str(dataset)] = {}
        for pair, methods in pairs.items():
            if not isinstance(methods, dict):
                raise ReportInputError(f"{path}: {dataset}/{pair} must map methods to top-1")
            published[str(dataset)][str(pair)] = {
                str(method): _percent(value, f"{path}: {dataset}/{pair}/{method}")
                for method, value in methods.items()
            }
    return published


def published_value(published: Published | None, dataset: str, pair: str,
                    method: str) -> float | None:
    """The published top-1 for one cell, or None when the paper has none ("–")."""
    if not published:
        return None
    return published.get(dataset, {}).get(pair, {}).get(method)


def _percent(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ReportInputError(f"{what} must be a finite number, got {value!r}")
    if not 0.0 <= value <= 100.0:
        raise ReportInputError(f"{what} = {value} is not a percentage")
    return float(value)
