"""The ImageNet part of the experiment grid (config key ``imagenet``, off by default)."""
from __future__ import annotations

from pathlib import Path

from ..grid import GridError, StudentRun
from .table import load_table, run_spec_dict

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
