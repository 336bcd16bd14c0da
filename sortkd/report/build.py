"""Build the whole report of one experiment: runs.csv, tables, deltas.csv and plots."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from sortkd.files import atomic_write_text
from sortkd.report.epoch_metrics import collect_curves
from sortkd.report.errors import ReportInputError
from sortkd.report.labels import pair_labels
from sortkd.report.missing_runs import require_complete_grid
from sortkd.report.paired_stats import deltas_csv_text, paired_deltas
from sortkd.report.paper_table import build_paper_table
from sortkd.report.plots import (curves_path, forest_path, plot_curves, plot_forest,
                    plot_wrong_share_vs_delta, wrong_share_path)
from sortkd.report.published import load_published
from sortkd.report.runs_table import appearance_order, collect_runs, runs_csv_text
from sortkd.report.table_format import render_csv, render_latex, render_markdown

TABLE_METRICS = ("best_top1", "final_top1")


def build_report(summaries: Sequence[str | Path], out_dir: str | Path,
                 experiment: str | None = None, seeds: Sequence[int] | None = None,
                 published: str | Path | None = None,
                 log: Callable[[str], None] = print) -> list[Path]:
    """Write every report file into ``out_dir`` and return their paths.

    Raises ``ReportInputError`` (``MissingRunsError`` for an incomplete grid) on bad input.
    """
    out_dir = Path(out_dir)
    runs = collect_runs(summaries)
    log(f"read {len(runs)} run summaries (summary.json + provenance.json)")
    runs = _select_experiment(runs, experiment, log)
    runs = _select_seeds(runs, seeds, log)
    require_complete_grid(runs, seeds)
    experiment = str(runs["experiment"].iloc[0])

    pairs = appearance_order(runs, "pair")
    methods = appearance_order(runs, "method")
    labels = pair_labels(runs)
    published_numbers = None
    if published is not None:
        published_numbers = load_published(published)
        log(f"read published numbers from {published}")
    curves = collect_curves(runs)
    log(f"read {len(runs)} metrics.jsonl files ({len(curves)} epoch rows)")

    deltas = paired_deltas(runs)
    tables = [build_paper_table(runs, deltas, metric, pairs, methods, published_numbers)
              for metric in TABLE_METRICS]
    texts = {
        "runs.csv": runs_csv_text(runs),
        "table.md": render_markdown(tables, experiment, _overview(runs, pairs, methods)),
        "table.csv": render_csv(tables),
        "table.tex": render_latex(tables, experiment),
        "deltas.csv": deltas_csv_text(deltas),
    }
    written = []
    for name, text in texts.items():
        atomic_write_text(out_dir / name, text)
        written.append(out_dir / name)
        log(f"wrote {written[-1]}")
    written.append(plot_forest(deltas, forest_path(out_dir), pairs, methods, labels))
    log(f"wrote {written[-1]}")
    for pair in pairs:
        written.append(plot_curves(curves, pair, curves_path(out_dir, pair), methods, labels[pair]))
        log(f"wrote {written[-1]}")
    written.append(plot_wrong_share_vs_delta(runs, deltas, wrong_share_path(out_dir), pairs,
                                             methods, labels))
    log(f"wrote {written[-1]}")
    return written


def _select_experiment(runs: pd.DataFrame, experiment: str | None,
                       log: Callable[[str], None]) -> pd.DataFrame:
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


def _select_seeds(runs: pd.DataFrame, seeds: Sequence[int] | None,
                  log: Callable[[str], None]) -> pd.DataFrame:
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


def _overview(runs: pd.DataFrame, pairs: Sequence[str], methods: Sequence[str]) -> str:
    datasets = ", ".join(sorted(runs["dataset"].unique()))
    variants = ", ".join(v for v in ("base", "sort", "swap") if (runs["variant"] == v).any())
    seeds = ", ".join(str(s) for s in sorted(runs["seed"].unique()))
    return (f"{len(runs)} runs on {datasets}: {len(pairs)} teacher → student pair(s) × "
            f"{len(methods)} method(s); variants {variants}; seeds {seeds}.")
