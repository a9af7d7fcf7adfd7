"""The scenario file that measures an explored frontier: its variants, and a sweep covering its cells."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harness.predict.explore import Candidate
from harness.scenario import LoadedScenario
from harness.scenario.scenario_toml import toml_value


def _table(header: str, fields: dict[str, Any]) -> list[str]:
    return [header, *(f"{key} = {toml_value(value)}" for key, value in fields.items() if value is not None), ""]


def frontier_scenario_toml(loaded: LoadedScenario, front: Sequence[Candidate], budget_bytes: int) -> str:
    """TOML of scenario ``<name>-frontier``: the model as resolved, the frontier's variants (the scenario's own
    as written, generated ones by their paper name), its batch sizes, contexts, dtypes and backends, and the
    scenario's measure table with ``memory_budget`` the explored budget."""
    scenario = loaded.scenario
    own = {v.name: spec for v, spec in zip(loaded.variants, scenario.variant, strict=True)}
    lines = [
        f"# The frontier of {scenario.name} as attnbench explore ranked it; only its cells are measured.",
        f"name = {toml_value(scenario.name + '-frontier')}",
        "",
        *_table("[model]", scenario.model.model_dump()),
    ]
    seen: list[str] = []
    for candidate in front:
        name = candidate.cell.variant.name
        if name in seen:
            continue
        seen.append(name)
        spec = own.get(name)
        fields = spec.model_dump(exclude_none=True, exclude_defaults=True) if spec is not None else {"name": name}
        lines += _table("[[variant]]", fields)

    def axis(values: Sequence[Any]) -> list[Any]:
        return sorted(set(values))

    lines += _table(
        "[sweep]",
        {
            "batch_size": axis([c.cell.batch_size for c in front]),
            "context_len": axis([c.cell.context_len for c in front]),
            "backend": axis([c.cell.backend for c in front]),
            "dtype": axis([c.cell.dtype for c in front]),
        },
    )
    measure = scenario.measure.model_dump(exclude_none=True, exclude_defaults=True) | {"memory_budget": budget_bytes}
    lines += _table("[measure]", measure)
    return "\n".join(lines)
