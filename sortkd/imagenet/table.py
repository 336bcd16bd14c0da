"""The ImageNet recipe table (workflow/tables/imagenet.yaml) and the run specs built from it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..losses import resolve_hparams

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
    """The spec of one run (see sortkd.imagenet.spec); ``settings`` (device, threads, ...) override."""
    entry = _entry(table, "pairs", pair)
    spec = {
        "name": f"imagenet/{pair}/{method}/{variant}/seed{seed}", "data": str(data),
        "teacher_arch": entry["teacher"], "teacher_weights": entry["teacher_weights"],
        "arch": entry["student"], "pair": pair, "method": method, "variant": variant, "seed": seed,
        "hparams": method_hparams(table, pair, method), **table["recipe"],
    }
    spec.update(settings)
    return spec
