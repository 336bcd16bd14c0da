"""The experiment grid: the settled config + the tables -> every run's complete, validated spec.

workflow/rules/common.smk builds `Grid` (CIFAR) and `ImageNetGrid` once, at DAG construction;
they hold no Snakemake code, so the tests check them directly. Every spec is built (and so
validated) when the grid is built, with all hyper-parameters resolved: the job receives the
values it runs with, the Snakemake params show them, and Snakemake's params trigger reruns
exactly the runs whose values changed (a new default in code included).

Hyper-parameters of (pair, method), lowest precedence first:
  1. the method's defaults in the registry (sortkd.losses);
  2. the table: for ImageNet its `methods:` section, then the pair row's `hparams.<method>`;
  3. the config's `methods.<method>` (ImageNet: `imagenet.methods.<method>`);
  4. `--config` on the command line (Snakemake merges it into 3).
Recipe of (pair, method), lowest first: the config's `recipe:` (ImageNet: the table's
`recipe:`) < the pair row's `lr` < the pair row's `recipes.<method>` < (ImageNet only) the
config's `imagenet.overrides`.

A table may carry entries for methods that are not in the grid, or not registered in this
checkout (e.g. MLKD's recipes): they are checked only for the methods the registry knows.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sortkd.experiment.config import WORKFLOW_DIR, check
from sortkd.experiment.specs import VARIANTS, ImageNetRunSpec, RunSpec

TABLES_SCHEMA = WORKFLOW_DIR / "schemas" / "tables.schema.yaml"
DEFAULT_TABLE = WORKFLOW_DIR / "tables" / "imagenet.yaml"
EXPECTED_LAYOUT = "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (the standard ILSVRC-2012 folders)"


class GridError(ValueError):
    """The config or a table names something that does not exist."""


def _allowed(key: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise GridError(f"config: {key}: {value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")


def _read_table(path: str | Path, kind: str) -> dict:
    """A table file, validated against ``$defs/<kind>`` of workflow/schemas/tables.schema.yaml."""
    path = Path(path)
    if not path.exists():
        raise GridError(f"config: table {path} does not exist")
    table = yaml.safe_load(path.read_text()) or {}
    schema = yaml.safe_load(TABLES_SCHEMA.read_text())
    try:
        check(table, {**schema, "$ref": f"#/$defs/{kind}"}, str(path))
    except ValueError as exc:
        raise GridError(str(exc)) from None
    return table


def _check_pair_names(path, pairs: dict) -> None:
    for name, row in pairs.items():
        if name != f"{row['teacher']}-{row['student']}":
            raise GridError(f"{path}: pair {name!r} must be named '{row['teacher']}-{row['student']}' "
                            f"(teacher-student)")


def _check_known_hparams(path, where: str, per_method: dict) -> None:
    """The keys of every registered method's entry; unregistered methods are left alone."""
    from sortkd.losses import METHODS

    for method, values in per_method.items():
        if method in METHODS:
            unknown = sorted(set(values or {}) - set(METHODS[method].defaults))
            if unknown:
                raise GridError(f"{path}: {where}.{method}: method {method!r} has no hyper-parameter "
                                f"{', '.join(map(repr, unknown))}; allowed: "
                                f"{', '.join(sorted(METHODS[method].defaults))}")


def load_pairs_table(path: str | Path) -> dict[str, dict]:
    """A CIFAR pairs table, validated."""
    table = _read_table(path, "pairs_table")
    _check_pair_names(path, table)
    for name, row in table.items():
        _check_known_hparams(path, f"{name}.hparams", row.get("hparams") or {})
    return table


def load_table(path: str | Path = DEFAULT_TABLE) -> dict[str, Any]:
    """The ImageNet table, validated."""
    table = _read_table(path, "imagenet_table")
    _check_pair_names(path, table["pairs"])
    _check_known_hparams(path, "methods", table["methods"])
    for name, row in table["pairs"].items():
        _check_known_hparams(path, f"pairs.{name}.hparams", row.get("hparams") or {})
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


def pair_hparams(rows: dict, pair: str, method: str, table_methods: dict | None = None,
                 config_overrides: dict | None = None) -> dict[str, float]:
    """The complete hyper-parameters of ``method`` for ``pair``, in the module docstring's order:
    registry defaults < the table's methods section < the pair row < the config."""
    from sortkd.losses import resolve_hparams

    overrides = {**((table_methods or {}).get(method) or {}),
                 **((rows[pair].get("hparams") or {}).get(method) or {}),
                 **(config_overrides or {})}
    try:
        return resolve_hparams(method, overrides)
    except ValueError as exc:
        raise GridError(f"config: hyper-parameters of {method} for {pair}: {exc}") from None


def pair_recipe(row: dict, method: str) -> dict[str, Any]:
    """The recipe keys a pair row sets for ``method``: its `lr`, then its `recipes.<method>`."""
    recipe = {"lr": row["lr"]} if "lr" in row else {}
    return {**recipe, **((row.get("recipes") or {}).get(method) or {})}


class StudentGrid:
    """What both grids share: the selection of pairs, methods, variants and seeds (checked
    against the tables and the registry), the hyper-parameters of a (pair, method), the runs."""

    dataset_key = ""        # where the selection lives in the config ("" = top level)
    single_view_only = False  # True where the trainer renders the weak view only (ImageNet)
    out: str

    def _select(self, section: dict, rows: dict[str, dict], table_methods: dict | None) -> None:
        from sortkd.losses import METHODS

        prefix = f"{self.dataset_key}." if self.dataset_key else ""
        self.rows = rows
        self.table_methods = table_methods or {}
        self.pairs = list(section.get("pairs") or rows)
        for pair in self.pairs:
            _allowed(f"{prefix}pairs", pair, list(rows))
        self.method_settings: dict[str, dict] = section["methods"]
        allowed = sorted(m for m in METHODS if m != "vanilla")
        if table_methods is not None:  # ImageNet: the methods the table has values for
            allowed = [m for m in allowed if m in table_methods]
        self.methods = list(self.method_settings)
        for method in self.methods:
            _allowed(f"{prefix}methods", method, allowed)
            if self.single_view_only and len(METHODS[method].views) > 1:
                raise GridError(f"config: {prefix}methods: {method!r} needs the view(s) "
                                f"{', '.join(METHODS[method].views[1:])}, which the ImageNet trainer does not "
                                "render; it runs on CIFAR-100 only")
        # A restriction of a method outside the selection is kept and unused (as table entries
        # are), so `--config 'methods=[kd]'` works on a config that restricts mlkd.
        self.method_pairs: dict[str, list[str]] = dict(section.get("method_pairs") or {})
        for method, pairs in self.method_pairs.items():
            _allowed(f"{prefix}method_pairs", method, allowed)
            for pair in pairs:
                _allowed(f"{prefix}method_pairs.{method}", pair, list(rows))
        self.variants = list(section["variants"])
        for variant in self.variants:
            _allowed(f"{prefix}variants", variant, VARIANTS)
        self.seeds = [int(s) for s in section["seeds"]]

    def method_hparams(self, pair: str, method: str) -> dict[str, float]:
        return pair_hparams(self.rows, pair, method, self.table_methods, self.method_settings.get(method))

    def runs(self) -> list[StudentRun]:
        return [StudentRun(p, m, v, s) for p in self.pairs for m in self.methods
                if p in self.method_pairs.get(m, [p])
                for v in self.variants for s in self.seeds]

    @property
    def runs_by_path(self) -> dict[str, StudentRun]:
        return {r.path: r for r in self.runs()}

    def run_dir(self, run: StudentRun) -> str:
        return f"{self.out}/students/{run.path}"


class Grid(StudentGrid):
    """The CIFAR experiment: teachers, their logit caches and the student runs."""

    def __init__(self, config: dict, root: str | Path = "."):
        """``config`` is settled (sortkd.experiment.config.settle)."""
        from sortkd.models import ARCHS

        self.config = config
        self.root = Path(root)
        self.experiment = config["experiment"]
        self.out = f"results/{self.experiment}"
        self.table = load_pairs_table(self.root / config["pairs_table"])
        self._select(config, self.table, None)
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
        self.student_specs = {run.path: self._student_spec(run) for run in self.runs()}
        self.teacher_specs = {arch: self._teacher_spec(arch) for arch in self.teachers_by_source("train")}

    # --- what runs -------------------------------------------------------------------

    @property
    def used_teachers(self) -> list[str]:
        return sorted({self.table[p]["teacher"] for p in self.pairs})

    def teachers_by_source(self, source: str) -> list[str]:
        return [a for a in self.used_teachers if self.teachers[a]["source"] == source]

    def teacher_logits(self, pair: str) -> str:
        return self.table[pair].get("teacher_logits", self.config["teacher_logits"])

    def student_runs(self) -> list[StudentRun]:
        return self.runs()

    @property
    def student_runs_by_path(self) -> dict[str, StudentRun]:
        return self.runs_by_path

    # --- paths -------------------------------------------------------------------------

    @property
    def data_file(self) -> str:
        return f"{self.config['data']['root']}/arrays.npz"

    def teacher_dir(self, arch: str) -> str:
        return f"{self.out}/teachers/{arch}"

    def logits_dir(self, arch: str) -> str:
        return f"{self.out}/logits/{arch}"

    def student_dir(self, run: StudentRun) -> str:
        return self.run_dir(run)

    # --- settings ------------------------------------------------------------------------

    @property
    def cache_dtype(self) -> str:
        """The logit cache's storage: as configured, else float32 for precision exact (exact
        means exact) and float16 otherwise."""
        configured = self.config.get("cache_dtype")
        if configured:
            return configured
        return "float32" if self.config["compute"]["precision"] == "exact" else "float16"

    @property
    def teacher_archive_url(self) -> str:
        from sortkd.experiment.config import TEACHER_ARCHIVE_URL

        return self.config["teacher_archive"].get("url") or TEACHER_ARCHIVE_URL

    # --- run specs ---------------------------------------------------------------------

    def _common(self) -> dict:
        c = self.config["compute"]
        return {"experiment": self.experiment, "dataset": self.config["dataset"], "device": c["device"],
                "precision": c["precision"], "threads": c["threads"],
                "tensorboard": self.config["logging"]["tensorboard"]}

    def _recipe(self) -> dict:
        r = self.config["recipe"]
        return {"epochs": r["epochs"], "batch_size": r["batch_size"], "lr_milestones": r["lr_milestones"],
                "lr_gamma": r["lr_gamma"], "momentum": r["momentum"], "weight_decay": r["weight_decay"]}

    def _teacher_spec(self, arch: str) -> RunSpec:
        entry = self.teachers[arch]
        recipe = {**self._recipe(), **(self.config.get("teacher_recipe") or {})}
        low_lr = arch in self.config["recipe"]["low_lr_archs"]
        lr = entry.get("lr", self.config["recipe"]["low_lr" if low_lr else "lr"])
        return RunSpec(kind="teacher", name=f"{self.experiment}/teacher/{arch}", data=self.data_file,
                       arch=arch, seed=int(entry.get("seed", 0)), lr=lr, **recipe, **self._common())

    def _student_spec(self, run: StudentRun) -> RunSpec:
        row = self.table[run.pair]
        cached = self.teacher_logits(run.pair) == "cache"
        return RunSpec(
            kind="student", name=f"{self.experiment}/{run.path}", data=self.data_file, arch=row["student"],
            method=run.method, variant=run.variant, hparams=self.method_hparams(run.pair, run.method),
            seed=run.seed, pair=run.pair, teacher_arch=row["teacher"], teacher_dir=self.teacher_dir(row["teacher"]),
            teacher_logits=self.teacher_logits(run.pair),
            cache_dir=self.logits_dir(row["teacher"]) if cached else None,
            **{**self._recipe(), **pair_recipe(row, run.method)}, **self._common())

    def teacher_spec(self, arch: str) -> RunSpec:
        return self.teacher_specs[arch]

    def student_spec(self, run: StudentRun) -> RunSpec:
        return self.student_specs[run.path]

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


class ImageNetGrid(StudentGrid):
    """The ImageNet experiment (config `imagenet:`, off by default): multi-GPU student runs."""

    dataset_key = "imagenet"
    single_view_only = True

    def __init__(self, config: dict, out: str, root: str | Path = "."):
        """``config`` is settled (sortkd.experiment.config.settle)."""
        self.section = config["imagenet"]
        self.enabled = bool(self.section["enabled"])
        self.out = f"{out}/imagenet"
        self.compute = config["compute"]
        self.tensorboard = config["logging"]["tensorboard"]
        self.pairs, self.methods, self.seeds, self.specs = [], [], [], {}
        if not self.enabled:
            return
        self.table = load_table(Path(root) / self.section["table"])
        self.data = self.section["root"]
        if not (Path(root) / self.data / "train").is_dir() or not (Path(root) / self.data / "val").is_dir():
            raise GridError(f"config: imagenet.root: {self.data} does not hold ImageNet; expected "
                            f"{EXPECTED_LAYOUT}. Put the data there or set imagenet.enabled: false")
        self._select(self.section, self.table["pairs"], self.table["methods"])
        self.specs = {run.path: self._spec(run) for run in self.runs()}

    def runs(self) -> list[StudentRun]:
        return super().runs() if self.enabled else []

    @property
    def gpus_per_run(self) -> int:
        return int(self.section["gpus_per_run"])

    @property
    def gpu_resource(self) -> int:
        return self.gpus_per_run if self.compute["device"] == "cuda" else 0

    def _spec(self, run: StudentRun) -> ImageNetRunSpec:
        settings = {"experiment": "imagenet", "device": self.compute["device"],
                    "precision": self.compute["precision"], "threads": int(self.section["threads"]),
                    "tensorboard": self.tensorboard, **(self.section.get("overrides") or {})}
        spec = run_spec_dict(self.table, run.pair, run.method, run.variant, run.seed, self.data,
                             method_overrides=self.method_settings.get(run.method), **settings)
        try:
            return ImageNetRunSpec.from_dict(spec)
        except ValueError as exc:
            raise GridError(f"config: imagenet: {exc}") from None

    def spec(self, run: StudentRun) -> ImageNetRunSpec:
        return self.specs[run.path]

    def spec_dict(self, run: StudentRun) -> dict:
        return self.spec(run).to_dict()


# --- one ImageNet run from the table (the grid above, tests, hand-made specs) --------------------

def method_hparams(table: dict, pair: str, method: str, method_overrides: dict | None = None) -> dict[str, float]:
    """The complete hyper-parameters of ``method`` for ``pair`` from the ImageNet table
    (then ``method_overrides``, the config's layer)."""
    if pair not in table["pairs"]:
        raise GridError(f"unknown ImageNet pair {pair!r}; allowed: {', '.join(table['pairs'])}")
    if method not in table["methods"]:
        raise GridError(f"unknown ImageNet method {method!r}; allowed: {', '.join(table['methods'])}")
    return pair_hparams(table["pairs"], pair, method, table["methods"], method_overrides)


def run_spec_dict(table: dict, pair: str, method: str, variant: str, seed: int, data: str,
                  method_overrides: dict | None = None, **settings) -> dict[str, Any]:
    """The spec of one ImageNet run; ``settings`` (device, threads, any spec key) override the table."""
    hparams = method_hparams(table, pair, method, method_overrides)
    row = table["pairs"][pair]
    return {"name": f"imagenet/{pair}/{method}/{variant}/seed{seed}", "data": str(data),
            "teacher_arch": row["teacher"], "teacher_weights": row["teacher_weights"], "arch": row["student"],
            "pair": pair, "method": method, "variant": variant, "seed": seed, "hparams": hparams,
            **table["recipe"], **pair_recipe(row, method), **settings}
