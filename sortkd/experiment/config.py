"""The pipeline config, settled once: coerced, completed with the schema's defaults, validated.

`settle(config)` is what workflow/rules/common.smk runs on Snakemake's config (config.yaml or
--configfile, with --config merged in) before the grid is built; `load_config(path)` does the
same for a tool that reads a config outside Snakemake. Torch-free: the CLI imports it.

Snakemake parses nested --config values with YAML's BaseLoader, which keeps every scalar a
string (`--config seeds=[0,1]` gives ['0', '1']); `coerce` turns them back into the numbers
and booleans the schema asks for.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

WORKFLOW_DIR = Path(__file__).resolve().parents[2] / "workflow"
CONFIG_SCHEMA = WORKFLOW_DIR / "schemas" / "config.schema.yaml"

# The public mdistiller/RepDistiller CIFAR-100 teachers (<arch>_vanilla/ckpt_epoch_240.pth).
# The one place the address is written: the config's teacher_archive.url overrides it.
TEACHER_ARCHIVE_URL = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"


class ConfigError(ValueError):
    """The config breaks its schema; the message is one line naming the key."""


# --- coercion of --config strings ---------------------------------------------------------

_SCALARS = ("integer", "number", "boolean", "null")


def inline_refs(schema: Any, root: dict | None = None) -> Any:
    """``schema`` with every local ``$ref`` ("#/$defs/...") replaced by what it names, so that the
    walks below see one tree (the schemas here have no recursive references)."""
    root = schema if root is None else root
    if isinstance(schema, list):
        return [inline_refs(s, root) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return inline_refs({**target, **rest}, root)
    return {k: inline_refs(v, root) for k, v in schema.items()}


def _options(schema: dict) -> list[dict]:
    return schema.get("oneOf", []) + schema.get("anyOf", [])


def _types(schema: dict) -> set[str]:
    found = set()
    t = schema.get("type")
    if isinstance(t, str):
        found.add(t)
    elif isinstance(t, list):
        found.update(t)
    for option in _options(schema):
        found |= _types(option)
    if "enum" in schema:
        found |= {type_name(v) for v in schema["enum"]}
    if "const" in schema:
        found.add(type_name(schema["const"]))
    return found


def type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", type(None): "null"}.get(type(value), "string")


def _branch(schema: dict, kind: str) -> dict:
    """The part of ``schema`` that describes an ``kind`` ("object" or "array") value."""
    for option in _options(schema):
        if kind in _types(option):
            return option
    return schema


def _coerce_scalar(value: str, types: set[str]) -> Any:
    if not types:
        # A free-form value (no schema): read it as YAML would, keeping only scalars.
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        return parsed if isinstance(parsed, (int, float, bool, type(None))) else value
    if "string" in types and not types & set(_SCALARS):
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
        schema = _branch(schema, "object")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {k: coerce(v, props.get(k, extra if isinstance(extra, dict) else {})) for k, v in value.items()}
    if isinstance(value, list):
        items = _branch(schema, "array").get("items", {})
        return [coerce(v, items if isinstance(items, dict) else {}) for v in value]
    if isinstance(value, str):
        return _coerce_scalar(value, _types(schema))
    return value


# --- defaults and validation ----------------------------------------------------------------

def fill_defaults(value: Any, schema: dict) -> None:
    """Add, in place, every absent property that the schema gives a default (nested too)."""
    if not isinstance(value, dict):
        return
    schema = _branch(schema, "object")
    props = schema.get("properties", {})
    for key, sub in props.items():
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        if key in value:
            fill_defaults(value[key], sub)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key in value.keys() - props.keys():
            fill_defaults(value[key], extra)


def check(value: Any, schema: dict, where: str) -> None:
    """Validate against a JSON schema; the first (most relevant) error as one line."""
    import jsonschema

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(value))
    if error is not None:
        key = ".".join(map(str, error.absolute_path)) or "(top level)"
        raise ConfigError(f"{where}: {key}: {error.message}")


def method_selection(value: list | dict | None) -> dict[str, dict]:
    """`methods:` as {name: overrides}. A list names methods that take no overrides; it also
    replaces the config file's methods under --config (a mapping is merged into them)."""
    if isinstance(value, list):
        return {name: {} for name in value}
    return {name: dict(overrides or {}) for name, overrides in (value or {}).items()}


def settle(config: dict, schema_path: str | Path = CONFIG_SCHEMA) -> dict:
    """The config as the grid reads it: coerced, with defaults, validated, methods as mappings."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    tree = inline_refs(schema)
    settled = coerce(config, tree)
    fill_defaults(settled, tree)
    check(settled, schema, "config")
    settled["methods"] = method_selection(settled["methods"])
    settled["imagenet"]["methods"] = method_selection(settled["imagenet"]["methods"])
    return settled


def load_config(path: str | Path, schema_path: str | Path = CONFIG_SCHEMA) -> dict:
    """A config file, settled as in the workflow (for tools that run outside Snakemake)."""
    return settle(yaml.safe_load(Path(path).read_text()) or {}, schema_path)
