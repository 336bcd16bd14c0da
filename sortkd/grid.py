"""The experiment grid: config.yaml + the per-pair table -> teacher and student runs.

The Snakefile calls these functions; they hold no Snakemake code so that the
tests can check the grid directly. Every value that affects a run ends up in
its RunSpec, which the rule passes as a param: Snakemake's params trigger then
reruns exactly the runs whose settings changed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .run_spec import RunSpec


class GridError(ValueError):
    """The config names something that does not exist."""


def _allowed(key: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise GridError(f"config: {key}: {value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")


def load_pairs_table(path: str | Path) -> dict[str, dict]:
    path = Path(path)
    if not path.exists():
        raise GridError(f"config: pairs_table: {path} does not exist")
    table = yaml.safe_load(path.read_text()) or {}
    for name, row in table.items():
        for key in ("teacher", "student", "lr"):
            if key not in row:
                raise GridError(f"pairs table {path}: pair {name!r} lacks {key!r}")
        if name != f"{row['teacher']}-{row['student']}":
            raise GridError(f"pairs table {path}: pair {name!r} must be named "
                            f"'{row['teacher']}-{row['student']}' (teacher-student)")
    return table


@dataclass(frozen=True)
class StudentRun:
    pair: str
    method: str
    variant: str
    seed: int

    @property
    def path(self) -> str:
        return f"{self.pair}/{self.method}/{self.variant}/seed{self.seed}"


class Grid:
    def __init__(self, config: dict, root: str | Path = "."):
        from .losses import METHODS
        from .models import ARCHS

        self.config = config
        self.root = Path(root)
        self.experiment = config["experiment"]
        self.out = f"results/{self.experiment}"
        self.table = load_pairs_table(self.root / config["pairs_table"])
        self.pairs = list(config.get("pairs") or self.table)
        for pair in self.pairs:
            _allowed("pairs", pair, list(self.table))
        self.methods = list(config["methods"])
        for method in self.methods:
            _allowed("methods", method, sorted(m for m in METHODS if m != "vanilla"))
        for variant in config["variants"]:
            _allowed("variants", variant, ["base", "sort", "swap"])
        self.seeds = [int(s) for s in config["seeds"]]
        self.teachers = config["teachers"]
        for pair in self.pairs:
            row = self.table[pair]
            _allowed(f"pairs table: {pair}: student", row["student"], ARCHS)
            _allowed(f"pairs table: {pair}: teacher", row["teacher"], ARCHS)
            if row["teacher"] not in self.teachers:
                raise GridError(f"config: teachers: pair {pair!r} needs teacher {row['teacher']!r}, "
                                f"which the teachers section does not define")
        for arch, entry in self.teachers.items():
            _allowed("teachers", arch, ARCHS)
            _allowed(f"teachers: {arch}: source", entry["source"], ["download", "train"])

    # --- what runs -------------------------------------------------------------------

    @property
    def used_teachers(self) -> list[str]:
        return sorted({self.table[p]["teacher"] for p in self.pairs})

    def teachers_by_source(self, source: str) -> list[str]:
        return [a for a in self.used_teachers if self.teachers[a]["source"] == source]

    def teacher_logits(self, pair: str) -> str:
        return self.table[pair].get("teacher_logits", self.config["teacher_logits"])

    def student_runs(self) -> list[StudentRun]:
        return [StudentRun(p, m, v, s) for p in self.pairs for m in self.methods
                for v in self.config["variants"] for s in self.seeds]

    @property
    def student_runs_by_path(self) -> dict[str, StudentRun]:
        return {r.path: r for r in self.student_runs()}

    # --- paths -------------------------------------------------------------------------

    @property
    def data_file(self) -> str:
        return f"{self.config['data']['root']}/arrays.npz"

    def teacher_dir(self, arch: str) -> str:
        return f"{self.out}/teachers/{arch}"

    def logits_dir(self, arch: str) -> str:
        return f"{self.out}/logits/{arch}"

    def student_dir(self, run: StudentRun) -> str:
        return f"{self.out}/students/{run.path}"

    # --- run specs ---------------------------------------------------------------------

    def _compute(self) -> dict:
        c = self.config["compute"]
        return {"device": c["device"], "precision": c["precision"], "threads": c["threads"]}

    def _recipe(self) -> dict:
        r = self.config["recipe"]
        return {"epochs": r["epochs"], "batch_size": r["batch_size"], "lr_milestones": r["lr_milestones"],
                "lr_gamma": r["lr_gamma"], "momentum": r["momentum"], "weight_decay": r["weight_decay"]}

    def method_hparams(self, pair: str, method: str) -> dict:
        """Registry defaults < config methods.<m> < the pair table's hparams.<m>."""
        from .losses import resolve_hparams

        overrides = {**(self.config["methods"].get(method) or {}),
                     **((self.table[pair].get("hparams") or {}).get(method) or {})}
        try:
            return resolve_hparams(method, overrides)
        except ValueError as exc:
            raise GridError(f"config: hyper-parameters of {method} for {pair}: {exc}") from None

    def teacher_spec(self, arch: str) -> RunSpec:
        entry = self.teachers[arch]
        recipe = {**self._recipe(), **(self.config.get("teacher_recipe") or {})}
        low_lr = arch in self.config["recipe"]["low_lr_archs"]
        lr = entry.get("lr", self.config["recipe"]["low_lr" if low_lr else "lr"])
        return RunSpec.from_dict({
            "kind": "teacher", "name": f"{self.experiment}/teacher/{arch}", "data": self.data_file,
            "arch": arch, "experiment": self.experiment, "dataset": self.config["dataset"],
            "seed": int(entry.get("seed", 0)), "lr": lr, **recipe, **self._compute()})

    def student_spec(self, run: StudentRun) -> RunSpec:
        row = self.table[run.pair]
        cached = self.teacher_logits(run.pair) == "cache"
        return RunSpec.from_dict({
            "kind": "student", "name": f"{self.experiment}/{run.path}", "data": self.data_file,
            "arch": row["student"], "experiment": self.experiment, "dataset": self.config["dataset"],
            "method": run.method, "variant": run.variant, "hparams": self.method_hparams(run.pair, run.method),
            "seed": run.seed, "lr": row["lr"], "pair": run.pair, "teacher_arch": row["teacher"],
            "teacher_dir": self.teacher_dir(row["teacher"]), "teacher_logits": self.teacher_logits(run.pair),
            "cache_dir": self.logits_dir(row["teacher"]) if cached else None,
            **self._recipe(), **self._compute()})

    # --- resources -----------------------------------------------------------------------

    @property
    def gpus_per_job(self) -> int:
        value = self.config["compute"]["gpus_per_job"]
        if value == "auto":
            return 1 if self.config["compute"]["device"] == "cuda" else 0
        return int(value)

    def gpu_slot_args(self) -> str:
        c = self.config["compute"]
        args = f"--gpu-devices {','.join(map(str, c['gpu_devices']))} --jobs-per-device {c['jobs_per_device']}"
        if c.get("gpu_lock_dir"):
            args += f" --gpu-lock-dir {c['gpu_lock_dir']}"
        return args
