"""Read a scenario file, validate it, and resolve its variants.

Every problem becomes one line of a :class:`~harness.errors.UserError` naming the file, the dotted
field (``variant[2].n_kv_heads``; list indices count from 0) and the reason. A file is checked
whole: all its format problems at once, or, when the format holds, all its variants' problems.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.errors import Problem, UserError, UserErrors, validation_problems
from harness.inputs import MIB, read_input
from harness.scenario.schema import ModelSpec, Scenario, VariantSpec
from harness.variants import PAPER_NAME_SPELLING, Variant, kv_map_problem, parse_paper_name, sharing_map

# A scenario of a hundred variants is a few kilobytes; a larger file is no scenario.
MAX_SCENARIO_BYTES = 16 * MIB


@dataclass(frozen=True)
class LoadedScenario:
    """A validated scenario with its resolved variants and where it came from."""

    scenario: Scenario
    variants: tuple[Variant, ...]
    source: str  # the path as given
    content_sha256: str  # hash of the file's bytes, recorded in results


def resolve_variant(spec: VariantSpec, model: ModelSpec) -> Variant:
    """Turn a variant as written into a :class:`Variant`; ValueError(field, reason) on a bad one."""
    implied = parse_paper_name(spec.name) if spec.attention is None else None
    if spec.attention is None and implied is None:
        raise _FieldError(
            "name",
            f"{spec.name!r} is not a CLA-paper name ({PAPER_NAME_SPELLING}) and no 'attention' field backs it",
        )
    attention = spec.attention or (implied.attention if implied else "mha")

    head_dim = spec.head_dim or (implied.head_dim if implied else None)
    if head_dim is None:
        if spec.n_heads is None:
            raise _FieldError("head_dim", "give head_dim or n_heads")
        if model.d_model % spec.n_heads:
            raise _FieldError(
                "n_heads", f"d_model ({model.d_model}) is not divisible by n_heads ({spec.n_heads}); give head_dim"
            )
        head_dim = model.d_model // spec.n_heads
    n_heads = spec.n_heads or model.d_model // head_dim
    if n_heads < 1:
        raise _FieldError("head_dim", f"head_dim ({head_dim}) is larger than d_model ({model.d_model})")

    if spec.n_kv_heads is not None:
        n_kv_heads = spec.n_kv_heads
    elif attention == "mha":
        n_kv_heads = n_heads
    elif attention == "mqa":
        n_kv_heads = 1
    elif implied is not None and implied.n_kv_heads is not None:
        n_kv_heads = implied.n_kv_heads
    else:
        raise _FieldError("n_kv_heads", "attention 'gqa' needs n_kv_heads")
    if spec.attention == "mha" and n_kv_heads != n_heads:
        raise _FieldError("n_kv_heads", f"attention 'mha' needs n_kv_heads == n_heads ({n_heads}), got {n_kv_heads}")
    if spec.attention == "mqa" and n_kv_heads != 1:
        raise _FieldError("n_kv_heads", f"attention 'mqa' needs n_kv_heads == 1, got {n_kv_heads}")
    if n_kv_heads > n_heads:
        raise _FieldError("n_kv_heads", f"more KV heads ({n_kv_heads}) than query heads ({n_heads})")
    if n_heads % n_kv_heads:
        raise _FieldError("n_kv_heads", f"n_heads ({n_heads}) is not divisible by n_kv_heads ({n_kv_heads})")

    if spec.kv_layers is not None and spec.kv_sharing is not None:
        raise _FieldError("kv_layers", "give kv_sharing or kv_layers, not both")
    if spec.kv_layers is not None:
        kv_layers = tuple(spec.kv_layers)
        if len(kv_layers) != model.n_layers:
            raise _FieldError("kv_layers", f"has {len(kv_layers)} entries; model.n_layers is {model.n_layers}")
        problem = kv_map_problem(kv_layers)
        if problem is not None:
            raise _FieldError(f"kv_layers[{problem[0]}]", problem[1])
    else:
        sharing = spec.kv_sharing or (implied.kv_sharing if implied else 1)
        if sharing > model.n_layers:
            field = "kv_sharing" if spec.kv_sharing else "name"
            raise _FieldError(field, f"sharing factor {sharing} is larger than model.n_layers ({model.n_layers})")
        kv_layers = sharing_map(model.n_layers, sharing)

    return Variant(name=spec.name, head_dim=head_dim, n_heads=n_heads, n_kv_heads=n_kv_heads, kv_layers=kv_layers)


class _FieldError(ValueError):
    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field = field
        self.reason = reason


def parse_scenario(data: dict[str, Any], source: str) -> tuple[Scenario, tuple[Variant, ...]]:
    """Validate parsed TOML and resolve its variants; UserError listing every problem found."""
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise UserErrors(validation_problems(exc, source)) from None
    variants = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for index, spec in enumerate(scenario.variant):
        if spec.name in seen:
            problems.append(
                Problem(
                    f"duplicate variant name {spec.name!r} (also variant[{seen[spec.name]}])",
                    source,
                    f"variant[{index}].name",
                )
            )
            continue
        seen[spec.name] = index
        try:
            variants.append(resolve_variant(spec, scenario.model))
        except _FieldError as exc:
            problems.append(Problem(exc.reason, source, f"variant[{index}].{exc.field}"))
    if problems:
        raise UserErrors(problems)
    return scenario, tuple(variants)


def load_scenario(path: str | Path) -> LoadedScenario:
    """Load and validate one scenario file."""
    source = str(path)
    raw = read_input(path, MAX_SCENARIO_BYTES, "scenario file")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError("not UTF-8 text", source=source) from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"TOML syntax error: {exc}", source=source) from None
    except RecursionError:
        raise UserError("arrays or tables nested too deeply to read", source=source) from None
    except ValueError as exc:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise UserError(f"cannot read: {exc}", source=source) from None
    scenario, variants = parse_scenario(data, source)
    return LoadedScenario(scenario, variants, source, hashlib.sha256(raw).hexdigest())
