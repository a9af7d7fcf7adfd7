"""A scenario file (TOML text) for a model imported from a config.json: what ``attnbench import-config`` prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.scenario.hf_config import PARAMETERS_COVER, ImportedModel

# A sweep that validates and runs anywhere; the user edits it to taste.
DEFAULT_SWEEP: dict[str, Any] = {"batch_size": [1], "context_len": [4096], "backend": ["sdpa"]}


def toml_value(value: Any) -> str:
    """A TOML literal for a string, boolean, number or list of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: the same escapes as JSON
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML spelling for {value!r}")


def _table(header: str, fields: dict[str, Any]) -> list[str]:
    return [header, *(f"{key} = {toml_value(value)}" for key, value in fields.items()), ""]


def default_name(path: str | Path) -> str:
    """A scenario name for a config file: its folder's name for a file called config.json, else its stem."""
    path = Path(path)
    return path.parent.name or "model" if path.name == "config.json" else path.stem


def scenario_toml(imported: ImportedModel, source: str, name: str) -> str:
    """The scenario that ``[model] from = source`` would give, spelled out, with the import's warnings as comments."""
    lines = [f"# Imported from {source} (model_type {imported.architecture}) by attnbench import-config."]
    if imported.warnings:
        lines.append("# Left out or defaulted, one line per config field:")
        lines += [f"#   {warning}" for warning in imported.warnings]
    lines += [f"# Note: {PARAMETERS_COVER}.", ""]
    lines += [
        f"name = {toml_value(name)}",
        f"description = {toml_value(f'{imported.architecture} shape from {source}')}",
        "",
    ]
    lines += _table("[model]", imported.model)
    lines += _table("[[variant]]", imported.variant)
    lines += _table("[sweep]", DEFAULT_SWEEP)
    return "\n".join(lines).rstrip() + "\n"
