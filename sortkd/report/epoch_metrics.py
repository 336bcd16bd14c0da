"""Per-epoch learning curves read from each run's ``metrics.jsonl`` (one JSON object per epoch)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from sortkd.report.errors import ReportInputError

CURVE_KEY = ["pair", "method", "variant", "seed"]


def read_epoch_metrics(run_dir: str | Path, columns=("test_top1",)) -> pd.DataFrame:
    """The ``epoch`` column plus ``columns`` from one run's metrics.jsonl, sorted by epoch."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ReportInputError(f"missing run file {path}")
    records = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as error:
                raise ReportInputError(f"{path}:{line_number} is not valid JSON: {error}") from error
            record = {"epoch": entry.get("epoch")}
            for column in columns:
                record[column] = entry.get(column)
            for column, value in record.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) \
                        or not math.isfinite(value):
                    raise ReportInputError(
                        f"{path}:{line_number}: {column} must be a finite number, got {value!r}")
            records.append(record)
    if not records:
        raise ReportInputError(f"{path} holds no epochs")
    frame = pd.DataFrame.from_records(records, columns=["epoch", *columns])
    if frame["epoch"].duplicated().any():
        raise ReportInputError(f"{path} lists an epoch twice (a resumed run appended again?)")
    return frame.sort_values("epoch").reset_index(drop=True)


def collect_curves(runs: pd.DataFrame, columns=("test_top1",)) -> pd.DataFrame:
    """Long table: one row per (pair, method, variant, seed, epoch) with the given metrics."""
    frames = []
    for run in runs.itertuples(index=False):
        curve = read_epoch_metrics(run.run_dir, columns)
        for key in CURVE_KEY:
            curve[key] = getattr(run, key)
        frames.append(curve)
    return pd.concat(frames, ignore_index=True)[[*CURVE_KEY, "epoch", *columns]]
