"""Turn the strings of `snakemake --config key=value` back into numbers where the schema wants them.

Snakemake parses nested --config values with YAML's BaseLoader, which keeps every scalar a
string (`--config seeds=[0,1]` gives ['0', '1']); without this the schema would reject them.
"""
from __future__ import annotations

from typing import Any

import yaml

_SCALARS = {"integer": int, "number": float, "boolean": None, "null": None}


def _types(schema: dict) -> set[str]:
    found = set()
    t = schema.get("type")
    if isinstance(t, str):
        found.add(t)
    elif isinstance(t, list):
        found.update(t)
    for option in schema.get("oneOf", []) + schema.get("anyOf", []):
        found |= _types(option)
    if "enum" in schema:
        found |= {type_name(v) for v in schema["enum"]}
    return found


def type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", type(None): "null"}.get(type(value), "string")


def _coerce_scalar(value: str, types: set[str]) -> Any:
    if not types:
        # A free-form value (no schema): read it as YAML would, keeping only scalars.
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        return parsed if isinstance(parsed, (int, float, bool, type(None))) else value
    if "string" in types and not types & {"integer", "number", "boolean", "null"}:
        return value
    lowered = value.strip().lower()
    if "null" in types and lowered in ("null", "none", "~"):
        return None
    if "boolean" in types and lowered in ("true", "false"):
        return lowered == "true"
    # "3" stays an int even where any number is allowed, as YAML would read it.
    if types & {"integer", "number"}:
        try:
            return int(value)
        except ValueError:
            pass
    if "number" in types:
        try:
            return float(value)
        except ValueError:
            pass
    return value


def coerce(value: Any, schema: dict) -> Any:
    """A copy of ``value`` with numeric/boolean strings converted as ``schema`` asks."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {k: coerce(v, props.get(k, extra if isinstance(extra, dict) else {})) for k, v in value.items()}
    if isinstance(value, list):
        items = schema.get("items", {})
        return [coerce(v, items if isinstance(items, dict) else {}) for v in value]
    if isinstance(value, str):
        return _coerce_scalar(value, _types(schema))
    return value
