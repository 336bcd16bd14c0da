"""Render ``PaperTable`` objects as Markdown (for people), CSV (for spreadsheets) and LaTeX."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Sequence

import pandas as pd

from sortkd.report.paper_table import Cell, DeltaCell, PaperTable, StatCell, ValueCell

LEGEND = [
    "**best**: test top-1 at the best epoch, the maximum over epochs. Papers report this; it "
    "selects the epoch on the test set, so it is optimistic.",
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
    "**(published)**: the number printed in the papers (best-epoch, averaged over their own "
    "runs), not a run of this pipeline; – means the paper has none.",
]


@dataclass(frozen=True)
class _Style:
    minus: str
    plus_minus: str
    empty: str
    n1_interval: str


_MARKDOWN = _Style(minus="−", plus_minus=" ± ", empty="–", n1_interval=" (n=1, no interval)")
_CSV = _Style(minus="-", plus_minus=" ± ", empty="", n1_interval=" (n=1, no interval)")
_LATEX = _Style(minus="$-$", plus_minus="$\\pm$", empty="--", n1_interval=" (n=1)")


def format_cell(cell: Cell, style: _Style = _MARKDOWN) -> str:
    """Text of one cell: '70.12 ± 0.21', '+0.42 [−0.10, +0.94]', '72.34', or the empty mark."""
    if cell is None:
        return style.empty
    if isinstance(cell, ValueCell):
        return _number(cell.value, style)
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


def render_markdown(tables: Sequence[PaperTable], experiment: str, overview: str) -> str:
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
        lines.append("")
    lines += ["## Legend", ""] + [f"- {item}" for item in LEGEND] + [""]
    return "\n".join(lines)


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
            if row.kind == "teacher":
                parts.append(f"{_tex(row.label)} & "
                             + " & ".join(format_cell(row.cells[p], _LATEX) for p in table.pairs)
                             + " \\\\")
                continue
            if row.kind in ("published", "base") and _first_row_of_method(table, row):
                parts.append("\\midrule")
            parts.append(f"{_tex(row.label)} & "
                         + " & ".join(format_cell(row.cells[p], _LATEX) for p in table.pairs)
                         + " \\\\")
        parts += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(parts)


def _first_row_of_method(table: PaperTable, row) -> bool:
    return next(r for r in table.rows if r.method == row.method) is row


def _number(value: float, style: _Style, signed: bool = False) -> str:
    text = f"{value:+.2f}" if signed else f"{value:.2f}"
    return text.replace("-", style.minus)


_TEX_ESCAPES = {
    "\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#",
    "_": "\\_", "{": "\\{", "}": "\\}", "—": "---", "Δ": "$\\Delta$", "−": "$-$",
    "±": "$\\pm$", "→": "$\\to$",
}


def _tex(text: str) -> str:
    """Escape LaTeX specials one character at a time (so no escape is escaped twice)."""
    return "".join(_TEX_ESCAPES.get(char, char) for char in text)
