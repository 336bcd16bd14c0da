"""The report's PNG figures: forest plot of paired deltas, learning curves, teacher errors vs Δ.

Figures are built on ``matplotlib.figure.Figure`` directly (Agg canvas, no pyplot state), so
they work headless and in threads, and each is saved atomically.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from sortkd.files import atomic_path  # noqa: E402
from sortkd.report.tables import COMPARISON_LABELS, method_label  # noqa: E402

VARIANT_COLORS = {"base": "#4c72b0", "sort": "#dd8452", "swap": "#55a868"}
COMPARISON_STYLE = {"sort-base": ("o", VARIANT_COLORS["sort"]),
                    "swap-base": ("s", VARIANT_COLORS["swap"])}
METRIC_TITLES = {"best_top1": "best-epoch top-1", "final_top1": "final-epoch top-1"}
METHOD_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def forest_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / "plots" / "forest.png"


def curves_path(out_dir: str | Path, pair: str) -> Path:
    return Path(out_dir) / "plots" / f"curves_{pair}.png"


def wrong_share_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / "plots" / "wrong_share_vs_delta.png"


def plot_forest(deltas: pd.DataFrame, path: str | Path, pairs: Sequence[str],
                methods: Sequence[str], pair_labels: dict[str, str]) -> Path:
    """Mean paired Δ per (pair, method) with its 95 % interval; one panel per metric."""
    lines = [(pair, method) for pair in pairs for method in methods
             if ((deltas["pair"] == pair) & (deltas["method"] == method)).any()]
    metrics = [m for m in METRIC_TITLES if (deltas["metric"] == m).any()]
    comparisons = [c for c in COMPARISON_STYLE if (deltas["comparison"] == c).any()]
    if not lines:
        return _save(_message_figure("Paired effect of the transform",
                                     "no sort or swap run with a base partner"), path)
    figure = Figure(figsize=(5.0 * len(metrics), max(3.0, 1.8 + 0.42 * len(lines))))
    axes = figure.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    offsets = _offsets(len(comparisons))
    for axis, metric in zip(axes, metrics):
        axis.axvline(0.0, color="black", linewidth=1.0, linestyle="--", zorder=1)
        for comparison, offset in zip(comparisons, offsets):
            marker, color = COMPARISON_STYLE[comparison]
            labelled = False
            for position, (pair, method) in enumerate(lines):
                row = _delta_row(deltas, pair, method, comparison, metric)
                if row is None:
                    continue
                y = position + offset
                has_interval = row["n"] > 1 and not math.isnan(row["ci_low"])
                xerr = ([[row["mean"] - row["ci_low"]], [row["ci_high"] - row["mean"]]]
                        if has_interval else None)
                axis.errorbar(row["mean"], y, xerr=xerr, fmt=marker, color=color, capsize=3,
                              markersize=6, zorder=3,
                              label=None if labelled else f"{COMPARISON_LABELS[comparison]}")
                labelled = True
                if not has_interval:
                    axis.annotate("n=1", (row["mean"], y), xytext=(6, 0),
                                  textcoords="offset points", va="center", fontsize=7)
        axis.set_title(METRIC_TITLES[metric])
        axis.set_xlabel("Δ test top-1, variant − base (pp)")
        axis.xaxis.set_major_locator(MaxNLocator(nbins=6))
        axis.margins(x=0.12)
        axis.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(lines)))
    axes[0].set_yticklabels([f"{pair_labels[pair]} · {method_label(method)}"
                             for pair, method in lines], fontsize=8)
    axes[0].set_ylim(len(lines) - 0.5, -0.5)  # first line on top, half a line of padding
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    figure.suptitle("Paired effect of the transform: mean over seeds with 95 % t-interval "
                    "(n=1: point only)")
    figure.tight_layout(rect=(0.0, 0.3 / figure.get_figheight(), 1.0, 1.0))
    return _save(figure, path)


def plot_curves(curves: pd.DataFrame, pair: str, path: str | Path, methods: Sequence[str],
                pair_label: str) -> Path:
    """Test top-1 per epoch for one pair: one subplot per method, one line per variant."""
    pair_curves = curves[curves["pair"] == pair]
    methods = [m for m in methods if (pair_curves["method"] == m).any()]
    columns = min(len(methods), 3)
    rows = math.ceil(len(methods) / columns)
    figure = Figure(figsize=(4.6 * columns, 3.4 * rows + 0.6))
    axes = figure.subplots(rows, columns, squeeze=False, sharey=True).ravel()
    seed_counts = set()
    for axis, method in zip(axes, methods):
        method_curves = pair_curves[pair_curves["method"] == method]
        for variant in ("base", "sort", "swap"):
            variant_curves = method_curves[method_curves["variant"] == variant]
            if variant_curves.empty:
                continue
            seed_counts.add(variant_curves["seed"].nunique())
            by_epoch = variant_curves.groupby("epoch")["test_top1"]
            mean, low, high = by_epoch.mean(), by_epoch.min(), by_epoch.max()
            color = VARIANT_COLORS[variant]
            axis.plot(mean.index, mean.values, color=color, linewidth=1.5, label=variant)
            axis.fill_between(mean.index, low.values, high.values, color=color, alpha=0.2,
                              linewidth=0)
        axis.set_title(method_label(method))
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel("test top-1 (%)")
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right", fontsize=8)
    for axis in axes[len(methods):]:
        axis.set_visible(False)
    seeds = "/".join(str(n) for n in sorted(seed_counts))
    figure.suptitle(f"{pair_label}: test top-1 per epoch "
                    f"(line = mean over {seeds} seed(s), band = min–max)")
    figure.tight_layout()
    return _save(figure, path)


def plot_wrong_share_vs_delta(runs: pd.DataFrame, deltas: pd.DataFrame, path: str | Path,
                              pairs: Sequence[str], methods: Sequence[str],
                              pair_labels: dict[str, str]) -> Path:
    """Share of training views the teacher gets wrong vs the best-epoch sort − base Δ."""
    if not (deltas["comparison"] == "sort-base").any():
        return _save(_message_figure("Where sort acts vs what it gains",
                                     "no sort run with a base partner"), path)
    figure = Figure(figsize=(7.5, 5.0))
    axis = figure.subplots()
    axis.axhline(0.0, color="black", linewidth=1.0, linestyle="--", zorder=1)
    points = []  # (pair, method index, share %, delta row)
    for index, method in enumerate(methods):
        for pair in pairs:
            row = _delta_row(deltas, pair, method, "sort-base", "best_top1")
            if row is None:
                continue
            cell = runs[(runs["pair"] == pair) & (runs["method"] == method)
                        & runs["variant"].isin(["base", "sort"])]
            points.append((pair, index, 100.0 * float(cell["teacher_wrong_frac"].mean()), row))
    shares = [share for _, _, share, _ in points]
    # Methods of one pair share the teacher (same x); nudge them apart so the bars stay legible.
    nudge = 0.01 * max(max(shares) - min(shares), 5.0)
    labelled_methods, labelled_pairs = set(), set()
    for pair, index, share, row in points:
        x = share + (index - (len(methods) - 1) / 2) * nudge
        has_interval = row["n"] > 1 and not math.isnan(row["ci_low"])
        yerr = ([[row["mean"] - row["ci_low"]], [row["ci_high"] - row["mean"]]]
                if has_interval else None)
        method = methods[index]
        axis.errorbar(x, row["mean"], yerr=yerr, fmt=METHOD_MARKERS[index % len(METHOD_MARKERS)],
                      color=f"C{index}", capsize=3, markersize=7, zorder=3,
                      label=None if method in labelled_methods else method_label(method))
        labelled_methods.add(method)
        if not has_interval:
            axis.annotate("n=1", (x, row["mean"]), xytext=(5, -10), textcoords="offset points",
                          fontsize=7)
        if pair not in labelled_pairs:
            labelled_pairs.add(pair)
            axis.annotate(pair_labels[pair], (share, row["mean"]), xytext=(0, 12),
                          textcoords="offset points", fontsize=7, ha="center")
    axis.set_xlabel("training views the teacher gets wrong (%)")
    axis.set_ylabel("Δ best-epoch top-1, sort − base (pp)")
    axis.set_title("Where sort acts vs what it gains\n"
                   "(one point per pair and method, nudged apart; bars = 95 % t-interval)")
    axis.grid(alpha=0.3)
    axis.legend(loc="best", fontsize=8, title="method")
    figure.tight_layout()
    return _save(figure, path)


def _delta_row(deltas: pd.DataFrame, pair: str, method: str, comparison: str, metric: str):
    match = deltas[(deltas["pair"] == pair) & (deltas["method"] == method)
                   & (deltas["comparison"] == comparison) & (deltas["metric"] == metric)]
    return None if match.empty else match.iloc[0]


def _message_figure(title: str, message: str) -> Figure:
    """A titled placeholder, so that every predicted plot file exists even with nothing to plot."""
    figure = Figure(figsize=(6.0, 2.5))
    axis = figure.subplots()
    axis.set_axis_off()
    axis.set_title(title)
    axis.text(0.5, 0.5, message, ha="center", va="center", transform=axis.transAxes)
    return figure


def _offsets(count: int) -> list[float]:
    """Vertical offsets that keep several comparisons on one forest line apart."""
    if count <= 1:
        return [0.0]
    return list(np.linspace(-0.15, 0.15, count))


def _save(figure: Figure, path: str | Path) -> Path:
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=120)
    return Path(path)
