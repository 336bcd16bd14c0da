"""Collect the per-run ``summary.json`` + ``provenance.json`` files into one tidy table.

One row per student run. The row order of ``runs.csv`` is a sort on the run key, so the file
does not depend on the order the summaries were listed in; the listing order is kept in the
``input_index`` column (not written) because the tables show pairs and methods in the order the
config listed them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

import pandas as pd

from sortkd.experiment.specs import VARIANTS
from sortkd.report.errors import ReportInputError

RUN_KEY = ["experiment", "dataset", "pair", "method", "variant", "seed"]
RUN_COLUMNS = [
    "experiment", "dataset", "pair", "teacher", "student", "method", "variant", "seed",
    "best_top1", "best_top5", "best_epoch", "final_top1", "final_top5",
    "teacher_top1", "teacher_wrong_frac", "epochs", "wall_s",
    "git_revision", "config_hash", "device", "slurm_job_id", "run_dir",
]
_PERCENT_FIELDS = ("best_top1", "best_top5", "final_top1", "final_top5", "teacher_top1")
_TEXT_RUN_FIELDS = ("experiment", "dataset", "teacher", "student", "pair", "method", "variant")


def read_run(summary_path: str | Path) -> dict:
    """Read one run folder (summary.json and the provenance.json beside it) into a flat record."""
    summary_path = Path(summary_path)
    summary = _load_json(summary_path)
    provenance = _load_json(summary_path.with_name("provenance.json"))
    where = f"{summary_path}"

    run = summary.get("run")
    if not isinstance(run, dict):
        raise ReportInputError(f"{where}: missing the 'run' object")
    if run.get("kind", "student") != "student":
        raise ReportInputError(f"{where}: is a {run.get('kind')} run; the report takes student runs")
    record: dict = {}
    for field in _TEXT_RUN_FIELDS:
        value = run.get(field)
        if not isinstance(value, str) or not value:
            raise ReportInputError(f"{where}: run.{field} must be a non-empty string, got {value!r}")
        record[field] = value
    record["seed"] = _integer(run.get("seed"), f"{where}: run.seed")
    if record["variant"] not in VARIANTS:
        raise ReportInputError(
            f"{where}: run.variant is {record['variant']!r}; allowed: {', '.join(VARIANTS)}")
    expected_pair = f"{record['teacher']}-{record['student']}"
    if record["pair"] != expected_pair:
        raise ReportInputError(
            f"{where}: run.pair is {record['pair']!r} but teacher-student is {expected_pair!r}")

    for field in _PERCENT_FIELDS:
        record[field] = _number(summary.get(field), f"{where}: {field}", low=0.0, high=100.0)
    record["teacher_wrong_frac"] = _number(
        summary.get("teacher_wrong_frac"), f"{where}: teacher_wrong_frac", low=0.0, high=1.0)
    record["wall_s"] = _number(summary.get("wall_s"), f"{where}: wall_s", low=0.0)
    record["epochs"] = _integer(summary.get("epochs"), f"{where}: epochs", low=1)
    record["best_epoch"] = _integer(
        summary.get("best_epoch"), f"{where}: best_epoch", low=1, high=record["epochs"])

    record["git_revision"] = _optional_text(provenance.get("git_revision"))
    record["config_hash"] = _optional_text(provenance.get("config_hash"))
    record["device"] = _optional_text(provenance.get("device"))
    record["slurm_job_id"] = _optional_text(provenance.get("slurm_job_id"))
    record["run_dir"] = str(summary_path.parent)
    return record


def collect_runs(summary_paths: Iterable[str | Path]) -> pd.DataFrame:
    """Read every listed summary into a DataFrame sorted on the run key.

    Two summaries for the same (experiment, dataset, pair, method, variant, seed) are an error:
    averaging a run twice would bias the mean silently.
    """
    records = []
    seen: dict[tuple, str] = {}
    for index, path in enumerate(summary_paths):
        record = read_run(path)
        key = tuple(record[column] for column in RUN_KEY)
        if key in seen:
            raise ReportInputError(
                f"two summaries for the same run {dict(zip(RUN_KEY, key))}: {seen[key]} and {path}")
        seen[key] = str(path)
        record["input_index"] = index
        records.append(record)
    if not records:
        raise ReportInputError("no summaries given")
    frame = pd.DataFrame.from_records(records, columns=RUN_COLUMNS + ["input_index"])
    return frame.sort_values(RUN_KEY, kind="mergesort").reset_index(drop=True)


def runs_csv_text(runs: pd.DataFrame) -> str:
    """The tidy ``runs.csv`` content: the documented columns, one row per run."""
    return runs[RUN_COLUMNS].to_csv(index=False, lineterminator="\n")


def appearance_order(runs: pd.DataFrame, column: str) -> list[str]:
    """Distinct values of ``column`` in the order the summaries listed them."""
    ordered = runs.sort_values("input_index", kind="mergesort")[column]
    return list(dict.fromkeys(ordered))


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise ReportInputError(f"missing run file {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise ReportInputError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ReportInputError(f"{path} must hold a JSON object")
    return data


def _number(value, what: str, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReportInputError(f"{what} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ReportInputError(f"{what} is not finite ({value}); a non-finite result is never reported")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ReportInputError(f"{what} = {value} is outside [{low}, {high}]")
    return value


def _integer(value, what: str, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReportInputError(f"{what} must be an integer, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ReportInputError(f"{what} = {value} is outside [{low}, {high}]")
    return value


def _optional_text(value) -> str:
    return "" if value is None else str(value)
