"""Aggregation of student runs into the paper's tables, paired statistics and plots.

Names are loaded on first use, so ``import sortkd.report`` does not pull in pandas, scipy or
matplotlib until one of them is needed.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "build_report": "build",
    "ReportInputError": "errors",
    "MissingRun": "missing_runs",
    "MissingRunsError": "missing_runs",
    "find_missing_runs": "missing_runs",
    "require_complete_grid": "missing_runs",
    "collect_runs": "runs_table",
    "read_run": "runs_table",
    "runs_csv_text": "runs_table",
    "collect_curves": "epoch_metrics",
    "read_epoch_metrics": "epoch_metrics",
    "paired_deltas": "paired_stats",
    "t_interval": "paired_stats",
    "deltas_csv_text": "paired_stats",
    "load_published": "published",
    "build_paper_table": "paper_table",
    "render_markdown": "table_format",
    "render_csv": "table_format",
    "render_latex": "table_format",
    "plot_forest": "plots",
    "plot_curves": "plots",
    "plot_wrong_share_vs_delta": "plots",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
