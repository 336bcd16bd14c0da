"""``python -m sortkd report``: aggregate an experiment's runs into tables, statistics and plots.

Only argparse is imported at module level, so building the CLI stays cheap and does not need
pandas, scipy or matplotlib; those are loaded when the command runs.
"""
from __future__ import annotations

import argparse
import sys


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
                        help="published accuracies to print beside ours "
                             "(workflow/tables/published_cifar100.yaml)")


def run(args: argparse.Namespace) -> int:
    from sortkd.report.build import build_report
    from sortkd.report.errors import ReportInputError

    try:
        build_report(args.summaries, args.out_dir, experiment=args.experiment, seeds=args.seeds,
                     published=args.published)
    except ReportInputError as error:
        print(f"sortkd report: error: {error}", file=sys.stderr)
        return 2
    return 0
