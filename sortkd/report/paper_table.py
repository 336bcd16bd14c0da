"""The paper's table as data: teacher → student pairs as columns, methods and variants as rows.

Per method the rows are: the published number (best-epoch table only), the baseline,
``+ sort`` (and ``+ swap`` when it ran), and one Δ row per comparison (mean paired difference
with its interval). Rendering to Markdown, CSV and LaTeX lives in ``table_format``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence, Union

import pandas as pd

from sortkd.report.labels import COMPARISON_LABELS, method_label, pair_labels, variant_label
from sortkd.report.paired_stats import comparison_name
from sortkd.report.published import Published, published_value

TABLE_TITLES = {
    "best_top1": "Best-epoch test top-1 (%) — the number papers report",
    "final_top1": "Final-epoch test top-1 (%) — the honest number (no selection on the test set)",
}


@dataclass(frozen=True)
class StatCell:
    """Mean ± sample std (ddof=1) over ``n`` seeds; std is nan when n = 1."""
    mean: float
    std: float
    n: int


@dataclass(frozen=True)
class DeltaCell:
    """Mean paired difference over ``n`` seeds and its interval (nan bounds when n = 1)."""
    mean: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class ValueCell:
    """A single number: the measured teacher accuracy or a published accuracy."""
    value: float


Cell = Union[StatCell, DeltaCell, ValueCell, None]


@dataclass(frozen=True)
class TableRow:
    kind: str  # teacher | base | sort | swap | delta_sort | delta_swap | published
    method: str
    label: str
    cells: dict[str, Cell]


@dataclass(frozen=True)
class PaperTable:
    metric: str
    title: str
    pairs: list[str]
    pair_labels: dict[str, str]
    rows: list[TableRow]
    notes: list[str] = field(default_factory=list)


def build_paper_table(runs: pd.DataFrame, deltas: pd.DataFrame, metric: str,
                      pairs: Sequence[str], methods: Sequence[str],
                      published: Published | None = None) -> PaperTable:
    """Assemble one table (``metric`` is ``best_top1`` or ``final_top1``)."""
    if metric not in TABLE_TITLES:
        raise ValueError(f"metric must be one of {sorted(TABLE_TITLES)}, got {metric!r}")
    pairs = list(pairs)
    datasets = runs.drop_duplicates("pair").set_index("pair")["dataset"].to_dict()
    rows = [TableRow("teacher", "", "Teacher top-1 (measured)", {
        pair: ValueCell(float(runs.loc[runs["pair"] == pair, "teacher_top1"].mean()))
        for pair in pairs})]
    for method in methods:
        if metric == "best_top1" and published:
            cells = {pair: _published_cell(published, datasets[pair], pair, method)
                     for pair in pairs}
            if any(cell is not None for cell in cells.values()):
                rows.append(TableRow("published", method, f"{method_label(method)} (published)",
                                     cells))
        method_runs = runs[runs["method"] == method]
        variants = [v for v in ("base", "sort", "swap") if (method_runs["variant"] == v).any()]
        for variant in variants:
            rows.append(TableRow(variant, method, variant_label(method, variant),
                                 _stat_cells(method_runs, variant, metric, pairs)))
        for variant in variants:
            if variant == "base":
                continue
            comparison = comparison_name(variant)
            rows.append(TableRow(f"delta_{variant}", method,
                                 f"Δ {COMPARISON_LABELS[comparison]} ({method_label(method)})",
                                 _delta_cells(deltas, method, comparison, metric, pairs)))
    return PaperTable(metric, TABLE_TITLES[metric], pairs, _labels_for(runs, pairs), rows,
                      _notes(runs, metric, published, datasets, pairs))


def _stat_cells(method_runs: pd.DataFrame, variant: str, metric: str,
                pairs: Sequence[str]) -> dict[str, Cell]:
    cells: dict[str, Cell] = {}
    for pair in pairs:
        values = method_runs.loc[(method_runs["pair"] == pair)
                                 & (method_runs["variant"] == variant), metric]
        if values.empty:
            cells[pair] = None
            continue
        std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        cells[pair] = StatCell(float(values.mean()), std, int(len(values)))
    return cells


def _delta_cells(deltas: pd.DataFrame, method: str, comparison: str, metric: str,
                 pairs: Sequence[str]) -> dict[str, Cell]:
    cells: dict[str, Cell] = {}
    for pair in pairs:
        match = deltas[(deltas["pair"] == pair) & (deltas["method"] == method)
                       & (deltas["comparison"] == comparison) & (deltas["metric"] == metric)]
        if match.empty:
            cells[pair] = None
            continue
        row = match.iloc[0]
        cells[pair] = DeltaCell(float(row["mean"]), float(row["ci_low"]), float(row["ci_high"]),
                                int(row["n"]))
    return cells


def _published_cell(published: Published, dataset: str, pair: str, method: str) -> Cell:
    value = published_value(published, dataset, pair, method)
    return None if value is None else ValueCell(value)


def _labels_for(runs: pd.DataFrame, pairs: Sequence[str]) -> dict[str, str]:
    labels = pair_labels(runs)
    return {pair: labels[pair] for pair in pairs}


def _notes(runs: pd.DataFrame, metric: str, published: Published | None,
           datasets: dict[str, str], pairs: Sequence[str]) -> list[str]:
    notes = []
    seeds_per_cell = runs.groupby(["pair", "method", "variant"])["seed"].nunique()
    if set(seeds_per_cell) == {1}:
        notes.append("One seed per cell: cells show the mean alone (no ±), "
                     "and Δ has no interval.")
    elif (seeds_per_cell == 1).any():
        notes.append("Cells without ± come from a single seed; their Δ has no interval.")
    else:
        seeds = sorted(runs["seed"].unique())
        notes.append(f"Seeds per cell: {', '.join(str(s) for s in seeds)} "
                     f"(n = {len(seeds)}).")
    varying = [pair for pair in pairs
               if runs.loc[runs["pair"] == pair, "teacher_top1"].nunique() > 1]
    if varying:
        notes.append("The measured teacher top-1 differs between runs of "
                     f"{', '.join(varying)}; the mean is shown.")
    if published:
        without = sorted({datasets[pair] for pair in pairs if datasets[pair] not in published})
        if metric == "best_top1":
            notes.append("Rows marked (published) are the papers' own best-epoch numbers, "
                         "not runs of this pipeline; – means the paper has none.")
        else:
            notes.append("Published numbers are best-epoch; they appear in the best-epoch "
                         "table only.")
        if without:
            notes.append(f"No published numbers for dataset(s): {', '.join(without)}.")
    return notes
