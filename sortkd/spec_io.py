"""JSON in and out for the frozen dataclasses that describe one run (CIFAR and ImageNet)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from .io_json import config_hash


class SpecIO:
    """Mixin: ``from_dict`` rejects unknown keys, ``from_json`` takes JSON or ``@file``."""

    _kind = "run"

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"unknown {cls._kind} setting(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join(sorted(allowed))}")
        return cls(**data)

    @classmethod
    def from_json(cls, text_or_path: str):
        """Accepts a JSON string, or ``@path`` to a JSON file."""
        if text_or_path.startswith("@"):
            text_or_path = Path(text_or_path[1:]).read_text()
        return cls.from_dict(json.loads(text_or_path))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d

    @property
    def hash(self) -> str:
        """Keys the checkpoint: every setting, the thread count included (it can change float sums)."""
        return config_hash(self.to_dict())
