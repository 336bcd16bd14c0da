"""Report: hand-made run folders with known numbers -> runs.csv, tables, deltas, plots."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import integrate, stats

from sortkd.losses import METHODS, get_method
from sortkd.report.build import add_arguments, run
from sortkd.report.runs import MissingRun, ReportInputError, collect_runs, find_missing_runs
from sortkd.report.stats import minimum_detectable_effect, t_interval
from sortkd.report.tables import load_published

REPO = Path(__file__).resolve().parents[1]
TABLES = REPO / "workflow" / "tables"
PUBLISHED_YAML = TABLES / "published_cifar100.yaml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Student t quantile t_{0.975, 2}; for 2 dof it has the closed form 0.95 * sqrt(2 / (1 - 0.95^2)).
T_975_DOF2 = 4.302652729749464

P1, P2 = "resnet56-resnet20", "resnet32x4-resnet8x4"
TEACHER_TOP1 = {P1: 72.34, P2: 79.42}
SEEDS = (0, 1, 2)
# Best-epoch top-1 per (pair, method, variant), one value per seed 0, 1, 2.
BEST = {
    (P1, "kd", "base"): [70.0, 71.0, 72.0],
    (P1, "kd", "sort"): [70.5, 71.2, 72.9],
    (P1, "kd", "swap"): [70.1, 70.9, 72.3],
    (P1, "dkd", "base"): [72.0, 72.4, 72.8],
    (P1, "dkd", "sort"): [72.3, 72.4, 73.4],
    (P2, "kd", "base"): [73.0, 73.0, 74.5],
    (P2, "kd", "sort"): [73.6, 73.2, 74.6],
    (P2, "kd", "swap"): [73.1, 73.1, 74.4],
    (P2, "dkd", "base"): [76.0, 76.5, 77.0],
    (P2, "dkd", "sort"): [76.2, 76.4, 77.6],
}
# final = best - drop[variant]: final-epoch deltas differ from best-epoch ones by a known shift.
FINAL_DROP = {"base": 0.3, "sort": 0.4, "swap": 0.2}
WRONG_FRAC = {P1: 0.31, P2: 0.22}
EPOCHS = 5


def write_run(root: Path, experiment: str, pair: str, method: str, variant: str, seed: int,
              best: float, final: float, dataset: str = "cifar100") -> Path:
    teacher, student = pair.split("-")
    folder = root / experiment / pair / method / variant / f"seed{seed}"
    folder.mkdir(parents=True)
    summary = {
        "run": {"experiment": experiment, "dataset": dataset, "teacher": teacher,
                "student": student, "pair": pair, "method": method, "variant": variant,
                "seed": seed},
        "epochs": EPOCHS, "final_top1": final, "final_top5": 90.0, "best_top1": best,
        "best_top5": 91.0, "best_epoch": EPOCHS - 1, "teacher_top1": TEACHER_TOP1[pair],
        "teacher_wrong_frac": WRONG_FRAC[pair], "wall_s": 12.5,
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    # A rising curve that peaks at `best` in epoch 4 and ends at `final`.
    tops = [best - 8.0, best - 4.0, best - 2.0, best, final]
    with open(folder / "metrics.jsonl", "w") as handle:
        for epoch, top1 in enumerate(tops, start=1):
            handle.write(json.dumps({
                "epoch": epoch, "lr": 0.05, "test_top1": top1, "test_top5": 90.0,
                "train_top1": 60.0, "teacher_wrong_frac": WRONG_FRAC[pair], "epoch_s": 2.5,
                "loss_total": 1.0, "loss_ce": 0.5, "loss_kd": 0.5}) + "\n")
    provenance = {"config": {}, "config_hash": "abc123", "git_revision": "deadbeef",
                  "seed": seed, "versions": {}, "device": "cpu",
                  "cuda_visible_devices": None, "slurm_job_id": None, "hostname": "test",
                  "start": "s", "end": "e", "wall_s": 12.5}
    (folder / "provenance.json").write_text(json.dumps(provenance))
    return folder / "summary.json"


def write_grid(root: Path, experiment: str = "grid", skip=()) -> list[Path]:
    paths = []
    for (pair, method, variant), values in BEST.items():
        for seed, best in zip(SEEDS, values):
            if (pair, method, variant, seed) in skip:
                continue
            paths.append(write_run(root, experiment, pair, method, variant, seed, best,
                                   round(best - FINAL_DROP[variant], 6)))
    return paths


def report_args(summaries, out_dir, *extra) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sortkd report")
    add_arguments(parser)
    return parser.parse_args(["--summaries", *map(str, summaries), "--out-dir", str(out_dir),
                              *extra])


def run_report(args) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = run(args)
    return code, stdout.getvalue(), stderr.getvalue()


def label(method):
    """The display label the registry gives a method (its name until the registry has labels)."""
    return getattr(get_method(method), "label", method)


KD, DKD = label("kd"), label("dkd")


def mean(values):
    return sum(values) / len(values)


def sample_std(values):
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def differences(pair, method, variant):
    return [t - b for t, b in zip(BEST[(pair, method, variant)], BEST[(pair, method, "base")])]


@pytest.fixture(scope="module")
def grid_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    summaries = write_grid(root)
    out_dir = root / "results" / "grid"
    args = report_args(summaries, out_dir, "--experiment", "grid", "--seeds", "0", "1", "2",
                       "--published", str(PUBLISHED_YAML))
    code, stdout, stderr = run_report(args)
    assert code == 0, stderr
    return out_dir, stdout


@pytest.fixture(scope="module")
def single_seed_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    summaries = [write_run(root, "single", P1, "kd", "base", 0, 70.0, 69.5),
                 write_run(root, "single", P1, "kd", "sort", 0, 70.8, 70.1)]
    out_dir = root / "results" / "single"
    code, _, stderr = run_report(report_args(summaries, out_dir))
    assert code == 0, stderr
    return out_dir


def test_runs_csv_is_tidy_and_sorted(grid_report):
    out_dir, _ = grid_report
    runs = pd.read_csv(out_dir / "runs.csv")
    assert len(runs) == sum(len(v) for v in BEST.values()) == 30
    for column in ("experiment", "dataset", "pair", "teacher", "student", "method", "variant",
                   "seed", "best_top1", "best_top5", "best_epoch", "final_top1", "final_top5",
                   "teacher_top1", "teacher_wrong_frac", "epochs", "wall_s", "git_revision",
                   "config_hash", "device", "slurm_job_id"):
        assert column in runs.columns
    key = ["pair", "method", "variant", "seed"]
    assert runs[key].values.tolist() == runs.sort_values(key)[key].values.tolist()
    row = runs[(runs.pair == P2) & (runs.method == "dkd") & (runs.variant == "sort")
               & (runs.seed == 1)].iloc[0]
    assert row.best_top1 == 76.4 and row.teacher == "resnet32x4" and row.student == "resnet8x4"
    assert row.git_revision == "deadbeef" and row.device == "cpu"


def test_deltas_match_hand_computed_statistics(grid_report):
    out_dir, _ = grid_report
    deltas = pd.read_csv(out_dir / "deltas.csv")
    # 2 pairs x (kd: sort, swap; dkd: sort) x 2 metrics
    assert len(deltas) == 2 * 3 * 2
    for (pair, method, variant) in [k for k in BEST if k[2] != "base"]:
        diffs = differences(pair, method, variant)
        best = deltas[(deltas.pair == pair) & (deltas.method == method)
                      & (deltas.comparison == f"{variant}-base") & (deltas.metric == "best_top1")]
        assert len(best) == 1
        best = best.iloc[0]
        assert best.n == 3
        assert best["mean"] == pytest.approx(mean(diffs), abs=1e-9)
        assert best["std"] == pytest.approx(sample_std(diffs), abs=1e-9)
        assert json.loads(best.differences) == pytest.approx(diffs, abs=1e-6)
        final = deltas[(deltas.pair == pair) & (deltas.method == method)
                       & (deltas.comparison == f"{variant}-base")
                       & (deltas.metric == "final_top1")].iloc[0]
        shift = FINAL_DROP["base"] - FINAL_DROP[variant]
        assert final["mean"] == pytest.approx(mean(diffs) + shift, abs=1e-6)


def test_interval_equals_independent_t_interval(grid_report):
    out_dir, _ = grid_report
    deltas = pd.read_csv(out_dir / "deltas.csv")
    row = deltas[(deltas.pair == P1) & (deltas.method == "kd") & (deltas.comparison == "sort-base")
                 & (deltas.metric == "best_top1")].iloc[0]
    diffs = [0.5, 0.2, 0.9]  # 70.5-70.0, 71.2-71.0, 72.9-72.0
    half_width = T_975_DOF2 * sample_std(diffs) / math.sqrt(3)
    assert row.ci_low == pytest.approx(mean(diffs) - half_width, abs=1e-9)
    assert row.ci_high == pytest.approx(mean(diffs) + half_width, abs=1e-9)
    assert (row.ci_low, row.ci_high) == pytest.approx((-0.339067, 1.405734), abs=1e-6)
    assert pd.isna(row.note)


def test_t_interval_edge_cases():
    assert all(math.isnan(x) for x in t_interval([0.4]))
    assert t_interval([0.25, 0.25, 0.25]) == (0.25, 0.25)


def test_table_markdown_has_expected_cells(grid_report):
    out_dir, _ = grid_report
    text = (out_dir / "table.md").read_text()
    best, rest = text.split("## Final-epoch")
    final, paired = rest.split("## Paired deltas")
    assert "## Best-epoch test top-1" in best
    assert "| resnet56 → resnet20 | resnet32x4 → resnet8x4 |" in best
    assert "| Teacher top-1 (measured) | 72.34 | 79.42 |" in best
    # KD baseline on P1: mean 71.00, std 1.00; on P2: mean 73.50, std sqrt(0.75).
    assert f"| {KD} | 71.00 ± 1.00 | 73.50 ± {math.sqrt(0.75):.2f} |" in best
    assert f"| {KD} | 71.00 ± 1.00 | 73.50 ± 0.87 |" in best
    kd_sort = BEST[(P1, "kd", "sort")]
    assert f"| {KD} + sort | {mean(kd_sort):.2f} ± {sample_std(kd_sort):.2f} |" in best
    assert f"| {KD} + sort | 71.53 ± 1.23 |" in best
    assert f"| **Δ sort − base ({KD})** | **+0.53 [−0.34, +1.41]** |" in best
    assert f"| {KD} + swap |" in best and f"| **Δ swap − base ({KD})** |" in best
    assert f"| **Δ sort − base ({DKD})** |" in best and f"Δ swap − base ({DKD})" not in best
    assert f"| {DKD} + sort |" in best and f"{DKD} + swap" not in best
    assert "(published) |" not in final
    # Final-epoch table: base is best - 0.3.
    assert f"| {KD} | 70.70 ± 1.00 |" in final
    assert "## Legend" in paired and "95 % Student-t" in paired


def test_published_numbers_carry_their_source_as_footnote(grid_report):
    out_dir, _ = grid_report
    published = load_published(PUBLISHED_YAML)
    best = (out_dir / "table.md").read_text().split("## Final-epoch")[0]
    # Footnotes are numbered in order of first use: the KD row comes first, then DKD.
    footnote = {}
    for method in ("kd", "dkd"):
        numbers = [published.get("cifar100", pair, method) for pair in (P1, P2)]
        sources = {number.source for number in numbers}
        assert len(sources) == 1, sources  # one source per row here, so one mark
        source = sources.pop()
        footnote.setdefault(source, len(footnote) + 1)
        k = footnote[source]
        cells = " | ".join(f"{number.top1:.2f} [{k}]" for number in numbers)
        assert f"| {label(method)} (published) | {cells} |" in best
        assert f"- [{k}] {published.sources[source]}" in best
    assert len(footnote) == 2
    tex = (out_dir / "table.tex").read_text()
    assert "70.66$^{1}$" in tex and "$^{2}$ DKD row" in tex


def test_table_csv_and_latex(grid_report):
    out_dir, _ = grid_report
    table = pd.read_csv(out_dir / "table.csv")
    cell = table[(table.table == "best_top1") & (table.row == f"{KD} + sort")][P1].iloc[0]
    assert cell == "71.53 ± 1.23"
    delta = table[(table.table == "best_top1") & (table.method == "kd")
                  & (table.kind == "delta_sort")][P1].iloc[0]
    assert delta == "+0.53 [-0.34, +1.41]"
    published = table[(table.table == "best_top1") & (table.method == "kd")
                      & (table.kind == "published")][P1].iloc[0]
    assert published == "70.66"  # the CSV keeps numbers bare, without footnote marks
    assert set(table.table) == {"best_top1", "final_top1"}
    tex = (out_dir / "table.tex").read_text()
    assert tex.count("\\begin{tabular}") == 2
    assert "71.00$\\pm$1.00" in tex and "$\\Delta$ sort $-$ base" in tex
    assert "resnet32x4" in tex and "(published)" in tex


def test_single_seed_has_no_interval(single_seed_report):
    out_dir = single_seed_report
    deltas = pd.read_csv(out_dir / "deltas.csv")
    row = deltas[deltas.metric == "best_top1"].iloc[0]
    assert row.n == 1 and row["mean"] == pytest.approx(0.8)
    assert pd.isna(row.ci_low) and pd.isna(row.ci_high) and pd.isna(row["std"])
    assert row.note == "one seed: no interval"
    assert row.resolved == "no" and pd.isna(row.mde)
    text = (out_dir / "table.md").read_text()
    assert f"| {KD} | 70.00 |" in text and f"| {KD} + sort | 70.80 |" in text
    assert "+0.80 (n=1, no interval)" in text
    assert (f"| resnet56 → resnet20 | {KD} | sort − base | best | 1 | +0.80 | n=1, no interval "
            "| no | – |") in text
    assert "One seed per cell" in text
    for plot in ("forest.png", "wrong_share_vs_delta.png", f"curves_{P1}.png"):
        assert (out_dir / "plots" / plot).read_bytes().startswith(PNG_SIGNATURE)


def test_plots_are_readable_pngs(grid_report):
    import matplotlib.image

    out_dir, _ = grid_report
    names = ["forest.png", "wrong_share_vs_delta.png", f"curves_{P1}.png", f"curves_{P2}.png"]
    assert sorted(p.name for p in (out_dir / "plots").iterdir()) == sorted(names)
    for name in names:
        path = out_dir / "plots" / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        image = matplotlib.image.imread(path)
        assert image.shape[0] >= 200 and image.shape[1] >= 300
        assert image.std() > 0.01  # not a blank canvas


def test_outputs_written_atomically_and_logged(grid_report):
    out_dir, stdout = grid_report
    leftovers = [p for p in out_dir.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    for name in ("runs.csv", "table.md", "table.csv", "table.tex", "deltas.csv",
                 "forest.png", f"curves_{P2}.png", "wrong_share_vs_delta.png"):
        assert any(line.startswith("wrote ") and line.endswith(name)
                   for line in stdout.splitlines()), name
    assert "read 30 run summaries" in stdout


def test_missing_run_fails_naming_it(tmp_path):
    summaries = write_grid(tmp_path, skip={(P2, "dkd", "base", 2)})
    code, _, stderr = run_report(report_args(summaries, tmp_path / "out"))
    assert code != 0
    assert "pair=resnet32x4-resnet8x4 method=dkd variant=base seed=2" in stderr
    assert not (tmp_path / "out" / "table.md").exists()


def test_find_missing_runs_lists_absent_seeds_and_partners(tmp_path):
    summaries = [write_run(tmp_path, "x", P1, "kd", "base", 0, 70.0, 69.0),
                 write_run(tmp_path, "x", P1, "kd", "sort", 0, 70.5, 69.5),
                 write_run(tmp_path, "x", P1, "kd", "sort", 1, 70.7, 69.7)]
    runs = collect_runs(summaries)
    assert [m[:4] for m in find_missing_runs(runs)] == [(P1, "kd", "base", 1)]
    missing = find_missing_runs(runs, seeds=[0, 1, 2])
    assert [m[:4] for m in missing] == [(P1, "kd", "base", 1), (P1, "kd", "base", 2),
                                        (P1, "kd", "sort", 2)]
    assert all(isinstance(m, MissingRun) for m in missing)
    complete = collect_runs(summaries[:2])
    assert find_missing_runs(complete) == []


def test_bad_input_is_rejected_with_clear_message(tmp_path):
    path = write_run(tmp_path, "x", P1, "kd", "base", 0, 70.0, 69.0)
    duplicate = write_run(tmp_path / "copy", "x", P1, "kd", "base", 0, 70.0, 69.0)
    with pytest.raises(ReportInputError, match="two summaries for the same run"):
        collect_runs([path, duplicate])
    summary = json.loads(path.read_text())
    summary["run"]["variant"] = "sorted"
    path.write_text(json.dumps(summary))
    with pytest.raises(ReportInputError, match="allowed: base, sort, swap"):
        collect_runs([path])
    summary["run"]["variant"] = "base"
    summary["run"]["kind"] = "teacher"
    path.write_text(json.dumps(summary))
    with pytest.raises(ReportInputError, match="is a teacher run"):
        collect_runs([path])
    summary["run"]["kind"] = "student"
    summary["best_top1"] = float("nan")
    path.write_text(json.dumps(summary))
    with pytest.raises(ReportInputError, match="best_top1 is not finite"):
        collect_runs([path])


def test_published_table_covers_the_pairs_with_registered_methods_and_sources():
    published = load_published(PUBLISHED_YAML)
    # Every pair the grids can run has a published row, and no row names a pair they cannot run.
    cifar_pairs = yaml.safe_load((TABLES / "pairs_cifar100.yaml").read_text())
    imagenet_pairs = yaml.safe_load((TABLES / "imagenet.yaml").read_text())["pairs"]
    assert set(published.numbers) == {"cifar100", "imagenet"}
    assert set(published.numbers["cifar100"]) == set(cifar_pairs)
    assert set(published.numbers["imagenet"]) == set(imagenet_pairs)
    used = set()
    for dataset, pairs in published.numbers.items():
        for pair, methods in pairs.items():
            assert {"kd", "dkd"} <= set(methods), (dataset, pair)  # the KD and DKD papers cover all
            for method, number in methods.items():
                get_method(method)  # a registered method (raises for an unknown name)
                assert 0.0 < number.top1 < 100.0
                used.add(number.source)
    # Every source is used, and says which teachers and which epoch its numbers come from.
    assert used == set(published.sources)
    for key, text in published.sources.items():
        assert "Teachers:" in text and "epoch" in text.lower(), key


@pytest.mark.parametrize("entry, message", [
    ({"top1": 70.0}, "must be {top1: <percent>, source: <key>}"),
    ({"top1": 100.5, "source": "paper"}, "top1 = 100.5 is not a percentage"),
    ({"top1": "70", "source": "paper"}, "top1 must be a finite number"),
    ({"top1": 70.0, "source": "blog"}, "source 'blog' is not defined; allowed: paper"),
])
def test_published_table_rejects_bad_entries(tmp_path, entry, message):
    path = tmp_path / "published.yaml"
    path.write_text(yaml.safe_dump({"sources": {"paper": "A paper. Teachers: theirs. Last epoch."},
                                    "datasets": {"cifar100": {P1: {"kd": entry}}}}))
    with pytest.raises(ReportInputError, match=f"cifar100/{P1}/kd.*{re.escape(message)}"):
        load_published(path)
    path.write_text(yaml.safe_dump({"cifar100": {P1: {"kd": 70.0}}}))  # the old layout
    with pytest.raises(ReportInputError, match="expected exactly the keys sources, datasets"):
        load_published(path)


# ---- resolved or not, and the minimum detectable effect ------------------------------------

# One pair, KD: sort − base differences that exclude 0 and swap − base ones that cover it.
RESOLVED_DIFFS = {"sort": [0.5, 0.6, 0.7], "swap": [-0.2, 0.1, 0.4]}


@pytest.fixture(scope="module")
def resolution_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("resolution")
    base = [70.0, 71.0, 72.0]
    summaries = []
    for seed, value in enumerate(base):
        summaries.append(write_run(root, "res", P1, "kd", "base", seed, value, value))
        for variant, diffs in RESOLVED_DIFFS.items():
            top1 = round(value + diffs[seed], 6)
            summaries.append(write_run(root, "res", P1, "kd", variant, seed, top1, top1))
    out_dir = root / "out"
    code, _, stderr = run_report(report_args(summaries, out_dir))
    assert code == 0, stderr
    return out_dir


def power_by_integration(effect, sd, n, alpha=0.05):
    """Power of the two-sided one-sample t-test, integrated over the sample variance.

    T = (Z + λ) / sqrt(V / df) with Z standard normal, V chi-square(df), λ = effect·√n/sd, so
    P(|T| > c) = E_V[Φ(λ − c·sqrt(V/df)) + Φ(−λ − c·sqrt(V/df))]; no noncentral t involved.
    """
    df = n - 1
    c = stats.t.ppf(1 - alpha / 2, df)
    lam = effect * math.sqrt(n) / sd
    log_norm = (df / 2) * math.log(2) + math.lgamma(df / 2)  # of the chi-square density

    def phi(x):
        return 0.5 * math.erfc(-x / math.sqrt(2))

    def integrand(v):
        if v == 0.0:
            return 0.0
        s = c * math.sqrt(v / df)
        density = math.exp((df / 2 - 1) * math.log(v) - v / 2 - log_norm)
        return (phi(lam - s) + phi(-lam - s)) * density

    value, _ = integrate.quad(integrand, 0, np.inf, limit=200, epsabs=1e-12)
    return value


def brute_force_mde(sd, n, power=0.8, step=1e-4):
    """The first effect on a grid of step·sd whose power reaches ``power``.

    The scan walks the grid in steps of sd, then 0.1·sd, ... from the last point below the
    target, so it visits each decade ten times at most (power rises with the effect).
    """
    effect, stride = 0.0, sd
    while True:
        while power_by_integration(effect + stride, sd, n) < power:
            effect += stride
        if stride <= step * sd * (1 + 1e-9):
            return effect + stride
        stride /= 10


@pytest.mark.parametrize("sd, n", [(0.5, 2), (0.35, 3), (0.7, 5), (1.0, 10)])
def test_mde_matches_a_brute_force_power_search(sd, n):
    mde = minimum_detectable_effect(sd, n)
    found = brute_force_mde(sd, n)
    assert found - 1e-4 * sd - 1e-9 <= mde <= found + 1e-9


def test_mde_has_80_percent_power_in_simulated_paired_tests():
    sd, n, trials = 0.4, 3, 200_000
    mde = minimum_detectable_effect(sd, n)
    rng = np.random.default_rng(0)
    diffs = rng.normal(mde, sd, size=(trials, n))
    t_stat = diffs.mean(1) / (diffs.std(1, ddof=1) / math.sqrt(n))
    rejected = np.abs(t_stat) > stats.t.ppf(0.975, n - 1)
    assert rejected.mean() == pytest.approx(0.8, abs=0.005)  # 5.6 standard errors


def test_mde_edge_cases_and_large_n_limit():
    assert math.isnan(minimum_detectable_effect(0.5, 1))
    assert math.isnan(minimum_detectable_effect(math.nan, 3))
    assert minimum_detectable_effect(0.0, 3) == 0.0
    # For large n the t-test is the z-test: (z_0.975 + z_0.8) · sd / √n.
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    assert minimum_detectable_effect(1.0, 2000) == pytest.approx(z / math.sqrt(2000), rel=2e-3)
    # Halving the sd halves the MDE; more seeds shrink it.
    assert minimum_detectable_effect(0.25, 4) == pytest.approx(minimum_detectable_effect(0.5, 4) / 2)
    assert minimum_detectable_effect(0.5, 6) < minimum_detectable_effect(0.5, 3)


def test_interval_excluding_zero_is_resolved_and_covering_zero_is_not(resolution_report):
    deltas = pd.read_csv(resolution_report / "deltas.csv")
    text = (resolution_report / "table.md").read_text()
    for variant, diffs in RESOLVED_DIFFS.items():
        row = deltas[(deltas.comparison == f"{variant}-base")
                     & (deltas.metric == "best_top1")].iloc[0]
        half = T_975_DOF2 * sample_std(diffs) / math.sqrt(3)
        low, high = mean(diffs) - half, mean(diffs) + half
        assert (row.ci_low, row.ci_high) == pytest.approx((low, high), abs=1e-6)
        expected = "yes" if low > 0 or high < 0 else "no"
        assert row.resolved == expected
        assert row.mde == pytest.approx(brute_force_mde(sample_std(diffs), 3), abs=1e-4)
        assert row.power == 0.8
        line = (f"| resnet56 → resnet20 | {KD} | {variant} − base | best | 3 | "
                f"{mean(diffs):+.2f} | [{low:+.2f}, {high:+.2f}] | {expected} | {row.mde:.2f} |")
        assert line.replace("-", "−") in text
    assert deltas.loc[deltas.comparison == "sort-base", "resolved"].tolist() == ["yes", "yes"]
    assert deltas.loc[deltas.comparison == "swap-base", "resolved"].tolist() == ["no", "no"]
    assert "2 of 4 paired deltas are resolved" in text


def test_grid_deltas_are_unresolved_with_their_mde(grid_report):
    out_dir, _ = grid_report
    deltas = pd.read_csv(out_dir / "deltas.csv")
    assert set(deltas.resolved) == {"no"}  # every interval of the grid covers 0
    row = deltas[(deltas.pair == P1) & (deltas.method == "kd") & (deltas.comparison == "sort-base")
                 & (deltas.metric == "best_top1")].iloc[0]
    assert row.mde == pytest.approx(brute_force_mde(sample_std([0.5, 0.2, 0.9]), 3), abs=1e-4)


# ---- labels from the method registry, and a cheap CLI ---------------------------------------

def test_method_labels_come_from_the_registry(tmp_path, monkeypatch):
    # A method registered with a label shows it; no report code names the method.
    monkeypatch.setitem(METHODS, "toy", SimpleNamespace(name="toy", label="Toy+LS"))
    summaries = [write_run(tmp_path, "lab", P1, "toy", "base", 0, 70.0, 69.0),
                 write_run(tmp_path, "lab", P1, "toy", "sort", 0, 70.5, 69.5),
                 write_run(tmp_path, "lab", P1, "gone", "base", 0, 71.0, 70.0)]
    code, _, stderr = run_report(report_args(summaries, tmp_path / "out"))
    assert code == 0, stderr
    text = (tmp_path / "out" / "table.md").read_text()
    assert "| Toy+LS | 70.00 |" in text and "| Toy+LS + sort | 70.50 |" in text
    assert "| **Δ sort − base (Toy+LS)** |" in text
    # A method the registry does not hold (a removed one) keeps its name.
    assert "| gone | 71.00 |" in text


def test_report_parser_imports_no_heavy_module():
    code = ("import argparse, sys\n"
            "from sortkd.report.build import add_arguments\n"
            "add_arguments(argparse.ArgumentParser())\n"
            "print(sorted(m for m in ('pandas', 'scipy', 'matplotlib', 'torch') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
