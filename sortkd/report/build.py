"""``python -m sortkd report``: build an experiment's report (runs.csv, tables, deltas.csv, plots).

``add_arguments`` and ``run`` are the command; ``build_report`` does the work. Only the standard
library is imported at module level, so building the CLI parser stays cheap: pandas, scipy,
matplotlib and the method registry are loaded when the report is built.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

TABLE_METRICS = ("best_top1", "final_top1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--summaries", nargs="+", required=True, metavar="PATH",
                        help="summary.json of every student run (provenance.json and "
                             "metrics.jsonl must sit beside each)")
    parser.add_argument("--out-dir", required=True, metavar="DIR",
                        help="where runs.csv, table.*, deltas.csv and plots/ are written "
                             "(results/<experiment>)")
    parser.add_argument("--experiment", metavar="NAME",
                        help="report only this experiment's runs (required when the "
                             "summaries span several)")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="INT",
                        help="the seeds the grid was meant to have; a missing one is an "
                             "error (default: every seed seen in the runs)")
    parser.add_argument("--published", metavar="YAML",
                        help="published accuracies and their sources, printed beside ours "
                             "(workflow/tables/published_cifar100.yaml)")


def run(args: argparse.Namespace) -> int:
    from sortkd.report.runs import ReportInputError

    try:
        build_report(args.summaries, args.out_dir, experiment=args.experiment, seeds=args.seeds,
                     published=args.published)
    except ReportInputError as error:
        print(f"sortkd report: error: {error}", file=sys.stderr)
        return 2
    return 0


def build_report(summaries: Sequence[str | Path], out_dir: str | Path,
                 experiment: str | None = None, seeds: Sequence[int] | None = None,
                 published: str | Path | None = None,
                 log: Callable[[str], None] = print) -> list[Path]:
    """Write every report file into ``out_dir`` and return their paths.

    Raises ``ReportInputError`` (``MissingRunsError`` for an incomplete grid) on bad input.
    """
    from sortkd.files import atomic_write_text
    from sortkd.report import plots
    from sortkd.report.runs import (appearance_order, collect_curves, collect_runs,
                                    require_complete_grid, runs_csv_text, select_experiment,
                                    select_seeds)
    from sortkd.report.stats import deltas_csv_text, paired_deltas
    from sortkd.report.tables import (build_paper_table, load_published, pair_labels, render_csv,
                                      render_latex, render_markdown)

    out_dir = Path(out_dir)
    runs = collect_runs(summaries)
    log(f"read {len(runs)} run summaries (summary.json + provenance.json)")
    runs = select_experiment(runs, experiment, log)
    runs = select_seeds(runs, seeds, log)
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
        "table.md": render_markdown(tables, experiment, _overview(runs, pairs, methods),
                                    deltas, pairs, methods, labels),
        "table.csv": render_csv(tables),
        "table.tex": render_latex(tables, experiment),
        "deltas.csv": deltas_csv_text(deltas),
    }
    written = []
    for name, text in texts.items():
        atomic_write_text(out_dir / name, text)
        written.append(out_dir / name)
        log(f"wrote {written[-1]}")
    written.append(plots.plot_forest(deltas, plots.forest_path(out_dir), pairs, methods, labels))
    log(f"wrote {written[-1]}")
    for pair in pairs:
        written.append(plots.plot_curves(curves, pair, plots.curves_path(out_dir, pair), methods,
                                         labels[pair]))
        log(f"wrote {written[-1]}")
    written.append(plots.plot_wrong_share_vs_delta(runs, deltas, plots.wrong_share_path(out_dir),
                                                   pairs, methods, labels))
    log(f"wrote {written[-1]}")
    return written


def _overview(runs, pairs: Sequence[str], methods: Sequence[str]) -> str:
    datasets = ", ".join(sorted(runs["dataset"].unique()))
    variants = ", ".join(v for v in ("base", "sort", "swap") if (runs["variant"] == v).any())
    seeds = ", ".join(str(s) for s in sorted(runs["seed"].unique()))
    return (f"{len(runs)} runs on {datasets}: {len(pairs)} teacher → student pair(s) × "
            f"{len(methods)} method(s); variants {variants}; seeds {seeds}.")
