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
from sortkd.experiment.specs import RunSpec
from sortkd.losses import resolve_hparams


# --- grid ---------------------------------------------------------------------

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
        from sortkd.losses import METHODS
        from sortkd.models import ARCHS

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
        from sortkd.losses import resolve_hparams

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


# --- table --------------------------------------------------------------------

DEFAULT_TABLE = Path(__file__).resolve().parents[2] / "workflow" / "tables" / "imagenet.yaml"
_SECTIONS = ("recipe", "pairs", "methods")


def load_table(path: str | Path = DEFAULT_TABLE) -> dict[str, Any]:
    with open(path) as handle:
        table = yaml.safe_load(handle)
    missing = [s for s in _SECTIONS if not isinstance((table or {}).get(s), dict)]
    if missing:
        raise ValueError(f"{path}: missing section(s) {', '.join(missing)}; expected {', '.join(_SECTIONS)}")
    return table


def _entry(table: dict, section: str, key: str) -> Any:
    try:
        return table[section][key]
    except KeyError:
        raise ValueError(f"unknown ImageNet {section[:-1]} {key!r}; allowed: "
                         f"{', '.join(table[section])}") from None


def method_hparams(table: dict, pair: str, method: str) -> dict[str, float]:
    """The table's hyper-parameters of ``method`` for ``pair`` (checked against the registry)."""
    values = {**(_entry(table, "methods", method) or {}),
              **((_entry(table, "pairs", pair).get("hparams") or {}).get(method) or {})}
    resolve_hparams(method, values)
    return values


def run_spec_dict(table: dict, pair: str, method: str, variant: str, seed: int, data: str,
                  **settings) -> dict[str, Any]:
    """The spec of one run (see sortkd.experiment.specs); ``settings`` (device, threads, ...) override."""
    entry = _entry(table, "pairs", pair)
    spec = {
        "name": f"imagenet/{pair}/{method}/{variant}/seed{seed}", "data": str(data),
        "teacher_arch": entry["teacher"], "teacher_weights": entry["teacher_weights"],
        "arch": entry["student"], "pair": pair, "method": method, "variant": variant, "seed": seed,
        "hparams": method_hparams(table, pair, method), **table["recipe"],
    }
    spec.update(settings)
    return spec


# --- grid ---------------------------------------------------------------------

EXPECTED_LAYOUT = "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (the standard ILSVRC-2012 folders)"


class ImageNetGrid:
    def __init__(self, config: dict, out: str, root: str | Path = "."):
        self.section = config.get("imagenet") or {}
        self.enabled = bool(self.section.get("enabled"))
        self.out = f"{out}/imagenet"
        self.compute = config["compute"]
        if not self.enabled:
            return
        self.table = load_table(Path(root) / self.section["table"])
        self.data = self.section["root"]
        if not (Path(root) / self.data / "train").is_dir() or not (Path(root) / self.data / "val").is_dir():
            raise GridError(f"config: imagenet.root: {self.data} does not hold ImageNet; expected "
                            f"{EXPECTED_LAYOUT}. Put the data there or set imagenet.enabled: false")
        self.pairs = list(self.section.get("pairs") or self.table["pairs"])
        for pair in self.pairs:
            if pair not in self.table["pairs"]:
                raise GridError(f"config: imagenet.pairs: {pair!r} is not allowed; allowed: "
                                f"{', '.join(self.table['pairs'])}")
        for method in self.section["methods"]:
            if method not in self.table["methods"]:
                raise GridError(f"config: imagenet.methods: {method!r} is not allowed; allowed: "
                                f"{', '.join(self.table['methods'])}")

    def runs(self) -> list[StudentRun]:
        if not self.enabled:
            return []
        s = self.section
        return [StudentRun(p, m, v, int(seed)) for p in self.pairs for m in s["methods"]
                for v in s["variants"] for seed in s["seeds"]]

    @property
    def runs_by_path(self) -> dict[str, StudentRun]:
        return {r.path: r for r in self.runs()}

    @property
    def seeds(self) -> list[int]:
        return [int(s) for s in self.section.get("seeds", [])]

    def run_dir(self, run: StudentRun) -> str:
        return f"{self.out}/students/{run.path}"

    @property
    def gpus_per_run(self) -> int:
        return int(self.section.get("gpus_per_run", 1))

    @property
    def gpu_resource(self) -> int:
        return self.gpus_per_run if self.compute["device"] == "cuda" else 0

    def spec_dict(self, run: StudentRun) -> dict:
        settings = {"experiment": "imagenet", "device": self.compute["device"],
                    "precision": self.compute["precision"], "threads": int(self.section.get("threads", 1)),
                    **(self.section.get("overrides") or {})}
        return run_spec_dict(self.table, run.pair, run.method, run.variant, run.seed, self.data, **settings)
