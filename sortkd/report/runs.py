"""Read an experiment's run folders: the runs table, the epoch curves, the missing runs.

- ``collect_runs``: every run's ``summary.json`` + ``provenance.json`` as one tidy table, one row
  per student run. The row order of ``runs.csv`` is a sort on the run key, so the file does not
  depend on the order the summaries were listed in; the listing order is kept in the
  ``input_index`` column (not written) because the tables show pairs and methods in the order
  the config listed them.
- ``collect_curves``: the per-epoch learning curves of each run's ``metrics.jsonl``.
- ``find_missing_runs``: the runs a grid should have but does not, so that no mean is taken
  over fewer seeds. Expected runs, per (experiment, dataset, pair, method): every variant seen
  there, for every expected seed (``seeds``, or every seed seen in the experiment when no list
  is given); and ``base`` for every seed that has a ``sort`` or ``swap`` run, since a paired
  delta needs its partner.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

import pandas as pd

from sortkd.experiment.specs import VARIANTS


class ReportInputError(ValueError):
    """The run folders, the published table or the arguments cannot be reported as given."""


# ---- runs table ---------------------------------------------------------------------------------

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


def select_experiment(runs: pd.DataFrame, experiment: str | None,
                      log: Callable[[str], None]) -> pd.DataFrame:
    """The runs of ``experiment``; None is allowed only when the runs hold a single one."""
    present = sorted(runs["experiment"].unique())
    if experiment is None:
        if len(present) > 1:
            raise ReportInputError(f"the summaries span several experiments ({', '.join(present)});"
                                   " pass --experiment to choose one")
        return runs
    selected = runs[runs["experiment"] == experiment]
    if selected.empty:
        raise ReportInputError(f"no summary belongs to experiment {experiment!r}; "
                               f"found: {', '.join(present)}")
    if len(selected) < len(runs):
        log(f"skipped {len(runs) - len(selected)} runs of other experiments")
    return selected.reset_index(drop=True)


def select_seeds(runs: pd.DataFrame, seeds: Sequence[int] | None,
                 log: Callable[[str], None]) -> pd.DataFrame:
    """The runs whose seed is listed in ``seeds`` (all runs for None)."""
    if seeds is None:
        return runs
    if len(set(seeds)) != len(seeds):
        raise ReportInputError(f"--seeds lists a seed twice: {list(seeds)}")
    selected = runs[runs["seed"].isin(seeds)]
    if selected.empty:
        raise ReportInputError(f"no run has one of the seeds {list(seeds)}")
    extra = sorted(set(runs["seed"]) - set(seeds))
    if extra:
        log(f"skipped {len(runs) - len(selected)} runs with seeds outside --seeds: "
            f"{', '.join(str(s) for s in extra)}")
    return selected.reset_index(drop=True)


def runs_csv_text(runs: pd.DataFrame) -> str:
    """The tidy ``runs.csv`` content: the documented columns, one row per run."""
    return runs[RUN_COLUMNS].to_csv(index=False, lineterminator="\n")


def appearance_order(runs: pd.DataFrame, column: str) -> list[str]:
    """Distinct values of ``column`` in the order the summaries listed them."""
    ordered = runs.sort_values("input_index", kind="mergesort")[column]
    return list(dict.fromkeys(ordered))


# ---- epoch curves -------------------------------------------------------------------------------

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


# ---- missing runs -------------------------------------------------------------------------------

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


# ---- validation of the JSON fields --------------------------------------------------------------

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
