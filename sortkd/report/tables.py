"""The paper's tables: data (pairs as columns, methods and variants as rows) and their rendering.

- Labels: a method's display name comes from the method registry (``Method.label``), so a new
  method needs no edit here; pairs read "teacher → student".
- Published numbers (``load_published``): top-1 accuracies from the papers, each with the
  source it was taken from, printed beside ours and footnoted with that source.
- ``build_paper_table``: per method the rows are the published number (best-epoch table only),
  the baseline, ``+ sort`` (and ``+ swap`` when it ran), and one Δ row per comparison (mean
  paired difference with its interval).
- ``render_markdown`` / ``render_csv`` / ``render_latex``: the same tables for people,
  spreadsheets and papers. The Markdown adds the paired-delta table that says, per delta,
  whether it is resolved and what effect the design could have detected.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

import pandas as pd
import yaml

from sortkd.losses import get_method
from sortkd.report.runs import ReportInputError
from sortkd.report.stats import comparison_name

# ---- labels ---------------------------------------------------------------------------------

COMPARISON_LABELS = {"sort-base": "sort − base", "swap-base": "swap − base"}


def method_label(method: str) -> str:
    """The registry's display label ("KD+LS"); a method the registry does not hold (a run folder
    of a method since removed) or one without a label shows its registry name."""
    try:
        entry = get_method(method)
    except ValueError:
        return method
    return getattr(entry, "label", method)


def variant_label(method: str, variant: str) -> str:
    """'KD' for the baseline, 'KD + sort' / 'KD + swap' for the transformed runs."""
    name = method_label(method)
    return name if variant == "base" else f"{name} + {variant}"


def pair_labels(runs: pd.DataFrame) -> dict[str, str]:
    """pair key -> 'teacher → student', from the teacher/student columns (names may hold '-')."""
    first = runs.drop_duplicates("pair")
    return {row.pair: f"{row.teacher} → {row.student}" for row in first.itertuples()}


# ---- published numbers ----------------------------------------------------------------------

@dataclass(frozen=True)
class PublishedNumber:
    top1: float
    source: str  # a key of Published.sources


@dataclass(frozen=True)
class Published:
    """``numbers``: dataset -> pair -> method -> PublishedNumber; ``sources``: key -> text."""
    numbers: dict[str, dict[str, dict[str, PublishedNumber]]]
    sources: dict[str, str]

    def get(self, dataset: str, pair: str, method: str) -> PublishedNumber | None:
        """The published number of one cell, or None when the papers have none ("–")."""
        return self.numbers.get(dataset, {}).get(pair, {}).get(method)


_PUBLISHED_KEYS = ("sources", "datasets")
_NUMBER_KEYS = ("top1", "source")


def load_published(path: str | Path) -> Published:
    """Read and check the published-numbers file (workflow/tables/published_cifar100.yaml).

    Layout: ``sources: {key: text}`` and ``datasets: {dataset: {pair: {method: {top1: %,
    source: key}}}}``; every number needs a source that ``sources`` defines.
    """
    path = Path(path)
    if not path.is_file():
        raise ReportInputError(f"published table {path} does not exist")
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    if not isinstance(data, dict) or sorted(data) != sorted(_PUBLISHED_KEYS):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ReportInputError(f"{path}: expected exactly the keys {', '.join(_PUBLISHED_KEYS)}; "
                               f"found {found}")
    sources = data["sources"]
    if not isinstance(sources, dict) or not sources:
        raise ReportInputError(f"{path}: sources must map a key to the text of its source")
    for key, text in sources.items():
        if not isinstance(text, str) or not text.strip():
            raise ReportInputError(f"{path}: sources/{key} must be a non-empty text")
    numbers: dict[str, dict[str, dict[str, PublishedNumber]]] = {}
    datasets = data["datasets"]
    if not isinstance(datasets, dict):
        raise ReportInputError(f"{path}: datasets must map a dataset to its pairs")
    for dataset, pairs in datasets.items():
        if not isinstance(pairs, dict):
            raise ReportInputError(f"{path}: datasets/{dataset} must map pairs to methods")
        numbers[str(dataset)] = {}
        for pair, methods in pairs.items():
            if not isinstance(methods, dict):
                raise ReportInputError(f"{path}: {dataset}/{pair} must map methods to numbers")
            numbers[str(dataset)][str(pair)] = {
                str(method): _published_number(entry, sources, f"{path}: {dataset}/{pair}/{method}")
                for method, entry in methods.items()
            }
    return Published(numbers, {str(key): text.strip() for key, text in sources.items()})


def _published_number(entry, sources: dict, where: str) -> PublishedNumber:
    if not isinstance(entry, dict) or sorted(entry) != sorted(_NUMBER_KEYS):
        raise ReportInputError(f"{where} must be {{top1: <percent>, source: <key>}}, got {entry!r}")
    value = entry["top1"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ReportInputError(f"{where}: top1 must be a finite number, got {value!r}")
    if not 0.0 <= value <= 100.0:
        raise ReportInputError(f"{where}: top1 = {value} is not a percentage")
    if entry["source"] not in sources:
        raise ReportInputError(f"{where}: source {entry['source']!r} is not defined; "
                               f"allowed: {', '.join(map(str, sources))}")
    return PublishedNumber(float(value), str(entry["source"]))


# ---- the table as data ----------------------------------------------------------------------

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
    """A single number: the measured teacher accuracy, or a published accuracy with the number
    of the footnote that names its source."""
    value: float
    footnote: int | None = None


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
    footnotes: list[str] = field(default_factory=list)  # footnote k is footnotes[k - 1]


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
    footnote_of: dict[str, int] = {}  # source key -> footnote number, in order of appearance
    for method in methods:
        if metric == "best_top1" and published is not None:
            cells: dict[str, Cell] = {}
            for pair in pairs:
                number = published.get(datasets[pair], pair, method)
                if number is None:
                    cells[pair] = None
                    continue
                footnote = footnote_of.setdefault(number.source, len(footnote_of) + 1)
                cells[pair] = ValueCell(number.top1, footnote)
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
    labels = pair_labels(runs)
    footnotes = [published.sources[source] for source in footnote_of] if published else []
    return PaperTable(metric, TABLE_TITLES[metric], pairs, {pair: labels[pair] for pair in pairs},
                      rows, _notes(runs, metric, published, datasets, pairs), footnotes)


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
    if published is not None:
        without = sorted({datasets[pair] for pair in pairs
                          if datasets[pair] not in published.numbers})
        if metric == "best_top1":
            notes.append("Rows marked (published) are the papers' own numbers, not runs of this "
                         "pipeline; [k] names the source (below); – means the paper has none.")
        else:
            notes.append("Published numbers appear in the best-epoch table only.")
        if without:
            notes.append(f"No published numbers for dataset(s): {', '.join(without)}.")
    return notes


# ---- rendering ------------------------------------------------------------------------------

LEGEND = [
    "**best**: test top-1 at the best epoch, the maximum over epochs. mdistiller-based code "
    "reports this; it selects the epoch on the test set, so it is optimistic.",
    "**final**: test top-1 after the last epoch. No selection on the test set: the honest "
    "number.",
    "**a ± b**: mean ± sample standard deviation (ddof = 1) over seeds, in %. A cell without ± "
    "comes from one seed.",
    "**Δ sort − base** (and **Δ swap − base**): for each seed, the run with the transform minus "
    "the baseline run with the same seed (same initial weights, data order and augmentations); "
    "the cell is the mean of these paired differences, in percentage points (pp).",
    "**[lo, hi]**: 95 % Student-t confidence interval of that mean difference (n − 1 degrees of "
    "freedom). An interval that excludes 0 is an effect larger than the seed-to-seed noise; "
    "with n = 1 there is no interval.",
    "**resolved**: yes when the 95 % interval excludes 0; no otherwise, and always no with "
    "n = 1.",
    "**MDE**: minimum detectable effect, the smallest true mean difference that a two-sided "
    "paired t-test at α = 0.05 detects with 80 % power, given n and the observed sd of the "
    "paired differences (noncentral t, exact). An unresolved Δ whose MDE is larger than the "
    "effect of interest says nothing either way: more seeds are needed.",
    "**(published)**: the number printed in a paper or README (see its source [k] under the "
    "table), not a run of this pipeline; – means the paper has none.",
]


@dataclass(frozen=True)
class _Style:
    minus: str
    plus_minus: str
    empty: str
    n1_interval: str
    footnote: str  # format of a footnote mark with {k}; "" leaves the number bare


_MARKDOWN = _Style(minus="−", plus_minus=" ± ", empty="–", n1_interval=" (n=1, no interval)",
                   footnote=" [{k}]")
_CSV = _Style(minus="-", plus_minus=" ± ", empty="", n1_interval=" (n=1, no interval)",
              footnote="")
_LATEX = _Style(minus="$-$", plus_minus="$\\pm$", empty="--", n1_interval=" (n=1)",
                footnote="$^{{{k}}}$")


def format_cell(cell: Cell, style: _Style = _MARKDOWN) -> str:
    """Text of one cell: '70.12 ± 0.21', '+0.42 [−0.10, +0.94]', '72.34 [1]', or the empty mark."""
    if cell is None:
        return style.empty
    if isinstance(cell, ValueCell):
        mark = style.footnote.format(k=cell.footnote) if cell.footnote and style.footnote else ""
        return _number(cell.value, style) + mark
    if isinstance(cell, StatCell):
        if cell.n < 2 or math.isnan(cell.std):
            return _number(cell.mean, style)
        return f"{_number(cell.mean, style)}{style.plus_minus}{_number(cell.std, style)}"
    if isinstance(cell, DeltaCell):
        mean = _number(cell.mean, style, signed=True)
        if cell.n < 2 or math.isnan(cell.low):
            return f"{mean}{style.n1_interval}"
        low = _number(cell.low, style, signed=True)
        high = _number(cell.high, style, signed=True)
        return f"{mean} [{low}, {high}]"
    raise TypeError(f"unknown cell type {type(cell).__name__}")


def render_markdown(tables: Sequence[PaperTable], experiment: str, overview: str,
                    deltas: pd.DataFrame, pairs: Sequence[str], methods: Sequence[str],
                    labels: dict[str, str]) -> str:
    lines = [f"# SortKD results: {experiment}", "", overview, ""]
    for table in tables:
        lines += [f"## {table.title}", ""]
        lines.append("| | " + " | ".join(table.pair_labels[p] for p in table.pairs) + " |")
        lines.append("|:--|" + "--:|" * len(table.pairs))
        for row in table.rows:
            label = f"**{row.label}**" if row.kind.startswith("delta") else row.label
            cells = [format_cell(row.cells[p], _MARKDOWN) for p in table.pairs]
            if row.kind.startswith("delta"):
                cells = [f"**{c}**" if c != _MARKDOWN.empty else c for c in cells]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
        lines += [f"- {note}" for note in table.notes]
        lines += [f"- [{k}] {text}" for k, text in enumerate(table.footnotes, start=1)]
        lines.append("")
    lines += _deltas_markdown(deltas, pairs, methods, labels)
    lines += ["## Legend", ""] + [f"- {item}" for item in LEGEND] + [""]
    return "\n".join(lines)


def _deltas_markdown(deltas: pd.DataFrame, pairs: Sequence[str], methods: Sequence[str],
                     labels: dict[str, str]) -> list[str]:
    """One line per pair × method × comparison × metric: n, Δ, interval, resolved, MDE."""
    lines = ["## Paired deltas: resolved or not", ""]
    if deltas.empty:
        return lines + ["No sort or swap run has a base partner: there is no paired delta.", ""]
    resolved = int((deltas["resolved"] == "yes").sum())
    lines += [f"{resolved} of {len(deltas)} paired deltas are resolved (their 95 % interval "
              "excludes 0). MDE is the effect this design detects with 80 % power.", "",
              "| pair | method | Δ | metric | n | mean Δ (pp) | 95 % interval (pp) | resolved "
              "| MDE (pp) |",
              "|:--|:--|:--|:--|--:|--:|--:|:--|--:|"]
    order = {"pair": {p: i for i, p in enumerate(pairs)},
             "method": {m: i for i, m in enumerate(methods)},
             "metric": {m: i for i, m in enumerate(TABLE_TITLES)}}
    ranked = deltas.assign(**{f"_{column}": deltas[column].map(ranks)
                              for column, ranks in order.items()})
    ranked = ranked.sort_values(["_metric", "_pair", "_method", "comparison"], kind="mergesort")
    for row in ranked.itertuples(index=False):
        interval = ("n=1, no interval" if row.n < 2 else
                    f"[{_number(row.ci_low, _MARKDOWN, True)}, "
                    f"{_number(row.ci_high, _MARKDOWN, True)}]")
        mde = _MARKDOWN.empty if math.isnan(row.mde) else _number(row.mde, _MARKDOWN)
        metric = "best" if row.metric == "best_top1" else "final"
        lines.append(f"| {labels[row.pair]} | {method_label(row.method)} | "
                     f"{COMPARISON_LABELS[row.comparison]} | {metric} | {row.n} | "
                     f"{_number(row.mean, _MARKDOWN, True)} | {interval} | {row.resolved} | "
                     f"{mde} |")
    return lines + [""]


def render_csv(tables: Sequence[PaperTable]) -> str:
    """The same grid as the Markdown, one block per table, labelled in the first column."""
    records = []
    for table in tables:
        for row in table.rows:
            record = {"table": table.metric, "row": row.label, "method": row.method,
                      "kind": row.kind}
            record.update({p: format_cell(row.cells[p], _CSV) for p in table.pairs})
            records.append(record)
    pairs = list(dict.fromkeys(p for table in tables for p in table.pairs))
    frame = pd.DataFrame.from_records(records, columns=["table", "row", "method", "kind"] + pairs)
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()


def render_latex(tables: Sequence[PaperTable], experiment: str) -> str:
    """One booktabs ``table`` per PaperTable (needs \\usepackage{booktabs})."""
    parts = [f"% SortKD results: {_tex(experiment)}. Requires \\usepackage{{booktabs}}.", ""]
    for table in tables:
        teachers, students = zip(*(table.pair_labels[p].split(" → ", 1) for p in table.pairs))
        parts += [
            "\\begin{table}[t]", "\\centering", "\\small",
            f"\\caption{{{_tex(table.title)}. {_tex(' '.join(table.notes))}}}",
            "\\begin{tabular}{l" + "c" * len(table.pairs) + "}", "\\toprule",
            "Teacher & " + " & ".join(_tex(t) for t in teachers) + " \\\\",
            "Student & " + " & ".join(_tex(s) for s in students) + " \\\\",
        ]
        for row in table.rows:
            if row.kind in ("published", "base") and _first_row_of_method(table, row):
                parts.append("\\midrule")
            parts.append(f"{_tex(row.label)} & "
                         + " & ".join(format_cell(row.cells[p], _LATEX) for p in table.pairs)
                         + " \\\\")
        parts += ["\\bottomrule", "\\end{tabular}"]
        if table.footnotes:
            parts.append("\\par\\footnotesize")
            parts += [f"$^{{{k}}}$ {_tex(text)}\\\\"
                      for k, text in enumerate(table.footnotes, start=1)]
        parts += ["\\end{table}", ""]
    return "\n".join(parts)


def _first_row_of_method(table: PaperTable, row: TableRow) -> bool:
    return next(r for r in table.rows if r.method == row.method) is row


def _number(value: float, style: _Style, signed: bool = False) -> str:
    text = f"{value:+.2f}" if signed else f"{value:.2f}"
    return text.replace("-", style.minus)


_TEX_ESCAPES = {
    "\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#",
    "_": "\\_", "{": "\\{", "}": "\\}", "—": "---", "Δ": "$\\Delta$", "−": "$-$",
    "±": "$\\pm$", "→": "$\\to$", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}",
}


def _tex(text: str) -> str:
    """Escape LaTeX specials one character at a time (so no escape is escaped twice)."""
    return "".join(_TEX_ESCAPES.get(char, char) for char in text)
