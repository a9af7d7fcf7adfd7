"""Read a scenario file, validate it, and resolve its variants.

Every problem becomes one line of a :class:`~harness.errors.UserError` naming the file, the dotted
field (``variant[2].n_kv_heads``; list indices count from 0) and the reason. A file is checked
whole: all its format problems at once, or, when the format holds, all its variants' problems.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.errors import Problem, UserError, UserErrors, validation_problems
from harness.inputs import MIB, read_toml
from harness.scenario.hf_config import ConfigError, import_config, read_json
from harness.scenario.quality import BYTE_VOCAB, conversion_problem
from harness.scenario.schema import ModelSpec, Scenario, VariantSpec
from harness.variants import (
    MLA_DEFAULT_NOPE_DIM,
    MLA_DEFAULT_ROPE_DIM,
    PAPER_NAME_SPELLING,
    MLAShape,
    PaperName,
    Variant,
    kv_map_problem,
    parse_paper_name,
    sharing_map,
    window_layers,
    window_map_problem,
)

# A scenario of a hundred variants is a few kilobytes; a larger file is no scenario.
MAX_SCENARIO_BYTES = 16 * MIB


@dataclass(frozen=True)
class LoadedScenario:
    """A validated scenario with its resolved variants and where it came from."""

    scenario: Scenario
    variants: tuple[Variant, ...]
    source: str  # the path as given
    content_sha256: str  # hash of the file's bytes, recorded in results
    # One line per thing a [model] from config.json has that the decoder leaves out or defaults:
    # "<config path>: <field>: <what>". The command line prints them; loading does not.
    warnings: tuple[str, ...] = ()


def resolve_variant(spec: VariantSpec, model: ModelSpec) -> Variant:
    """Turn a variant as written into a :class:`Variant`; _FieldError(field, reason) on a bad one."""
    implied = parse_paper_name(spec.name) if spec.attention is None else None
    if spec.attention is None and implied is None:
        raise _FieldError(
            "name",
            f"{spec.name!r} is not a CLA-paper name or one of its extensions ({PAPER_NAME_SPELLING}) "
            "and no 'attention' field backs it",
        )
    attention = spec.attention or (implied.attention if implied else "mha")
    mla: MLAShape | None = None
    if attention == "mla":
        mla = _resolve_mla(spec, implied)
        head_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim
        n_heads = spec.n_heads or model.d_model // mla.qk_nope_head_dim
        if n_heads < 1:
            raise _FieldError("qk_nope_head_dim", f"{mla.qk_nope_head_dim} is larger than d_model ({model.d_model})")
        n_kv_heads = 1
    else:
        _reject_mla_fields(spec, attention)
        head_dim, n_heads, n_kv_heads = _resolve_heads(spec, model, attention, implied)
    kv_layers = _resolve_kv_layers(spec, model, implied)
    windows = _resolve_windows(spec, model, implied, kv_layers)
    kv_dtype, kv_scale = _resolve_kv_dtype(spec, implied)
    return Variant(
        name=spec.name,
        head_dim=head_dim,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        kv_layers=kv_layers,
        layer_windows=windows,
        kv_dtype=kv_dtype,
        kv_scale=kv_scale,
        mla=mla,
    )


def _resolve_heads(
    spec: VariantSpec, model: ModelSpec, attention: str, implied: PaperName | None
) -> tuple[int, int, int]:
    """head_dim, n_heads and n_kv_heads of an MHA, GQA or MQA variant."""
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
    return head_dim, n_heads, n_kv_heads


MLA_FIELDS = ("kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")


def _reject_mla_fields(spec: VariantSpec, attention: str) -> None:
    for field in MLA_FIELDS:
        if getattr(spec, field) is not None:
            raise _FieldError(field, f"only for attention 'mla'; this variant is {attention!r}")


def _resolve_mla(spec: VariantSpec, implied: PaperName | None) -> MLAShape:
    """The latent widths of an MLA variant (DeepSeek-V2, arXiv 2405.04434, §2.1)."""
    if spec.head_dim is not None:
        raise _FieldError(
            "head_dim", "attention 'mla' has no head_dim: its head widths are qk_nope_head_dim and qk_rope_head_dim"
        )
    if spec.n_kv_heads is not None:
        raise _FieldError("n_kv_heads", "attention 'mla' caches one latent that every head reads; no n_kv_heads")
    rank = spec.kv_lora_rank or (implied.kv_lora_rank if implied else None)
    if rank is None:
        raise _FieldError("kv_lora_rank", "attention 'mla' needs kv_lora_rank, the width of the cached latent")
    rope = spec.qk_rope_head_dim or (implied.qk_rope_head_dim if implied else None) or MLA_DEFAULT_ROPE_DIM
    from_name = implied is not None and spec.kv_lora_rank is None
    if rank < 1 or rope < 1:
        raise _FieldError("name", f"kv_lora_rank ({rank}) and qk_rope_head_dim ({rope}) must be positive")
    if rope % 2:
        field = "name" if from_name and spec.qk_rope_head_dim is None else "qk_rope_head_dim"
        raise _FieldError(field, f"qk_rope_head_dim ({rope}) must be even: rotary embeddings turn pairs")
    nope = spec.qk_nope_head_dim or MLA_DEFAULT_NOPE_DIM
    q_lora = spec.q_lora_rank or (implied.q_lora_rank if implied else None)
    if q_lora is not None and q_lora < 1:
        raise _FieldError("name", f"q_lora_rank ({q_lora}) must be positive")
    return MLAShape(
        kv_lora_rank=rank,
        qk_rope_head_dim=rope,
        qk_nope_head_dim=nope,
        v_head_dim=spec.v_head_dim or nope,
        q_lora_rank=q_lora,
    )


def _resolve_kv_layers(spec: VariantSpec, model: ModelSpec, implied: PaperName | None) -> tuple[int, ...]:
    if spec.kv_layers is not None and spec.kv_sharing is not None:
        raise _FieldError("kv_layers", "give kv_sharing or kv_layers, not both")
    if spec.kv_layers is not None:
        kv_layers = tuple(spec.kv_layers)
        if len(kv_layers) != model.n_layers:
            raise _FieldError("kv_layers", f"has {len(kv_layers)} entries; model.n_layers is {model.n_layers}")
        problem = kv_map_problem(kv_layers)
        if problem is not None:
            raise _FieldError(f"kv_layers[{problem[0]}]", problem[1])
        return kv_layers
    sharing = spec.kv_sharing or (implied.kv_sharing if implied else 1)
    if sharing < 1:
        raise _FieldError("name", "a CLA sharing factor is at least 1")
    if sharing > model.n_layers:
        field = "kv_sharing" if spec.kv_sharing else "name"
        raise _FieldError(field, f"sharing factor {sharing} is larger than model.n_layers ({model.n_layers})")
    return sharing_map(model.n_layers, sharing)


def _window_pattern(text: str | None, field: str) -> tuple[int, int] | None:
    """'5:1' -> (5, 1); 'all' or None -> None (every layer windowed)."""
    if text is None or text == "all":
        return None
    local, _, global_ = text.partition(":")
    if int(local) < 1 or int(global_) < 1:
        raise _FieldError(field, f"{text!r} needs at least one local and one global layer; 'all' windows every layer")
    return int(local), int(global_)


def _resolve_windows(
    spec: VariantSpec, model: ModelSpec, implied: PaperName | None, kv_layers: tuple[int, ...]
) -> tuple[int | None, ...]:
    """Each layer's window (None: global) from layer_windows, window and window_pattern, or the name."""
    if spec.layer_windows is not None:
        if spec.window is not None or spec.window_pattern is not None:
            raise _FieldError("layer_windows", "give window (with window_pattern) or layer_windows, not both")
        if len(spec.layer_windows) != model.n_layers:
            raise _FieldError(
                "layer_windows", f"has {len(spec.layer_windows)} entries; model.n_layers is {model.n_layers}"
            )
        windows = tuple(None if w in (None, "global") else int(w) for w in spec.layer_windows)
        for index, window in enumerate(windows):
            if window is not None and window < 1:
                raise _FieldError(
                    f"layer_windows[{index}]", f"window must be a positive number of positions, got {window}"
                )
        field = "layer_windows[{}]"
    else:
        window = spec.window if spec.window is not None else (implied.window if implied else None)
        if window is None:
            if spec.window_pattern is not None:
                raise _FieldError("window_pattern", "needs window, the number of positions a local layer attends to")
            return ()
        field_of_window = "window" if spec.window is not None else "name"
        if window < 1:
            raise _FieldError(field_of_window, f"window must be a positive number of positions, got {window}")
        if spec.window_pattern is not None:
            pattern = _window_pattern(spec.window_pattern, "window_pattern")
        else:
            pattern = implied.window_pattern if implied else None
            if pattern is not None and min(pattern) < 1:
                raise _FieldError("name", f"window pattern {pattern[0]}:{pattern[1]} needs at least one of each")
        windows = window_layers(model.n_layers, window, pattern)
        field = "window_pattern" if spec.window_pattern is not None else field_of_window
    problem = window_map_problem(kv_layers, windows)
    if problem is not None:
        raise _FieldError(field.format(problem[0]), problem[1])
    return windows


def _resolve_kv_dtype(spec: VariantSpec, implied: PaperName | None) -> tuple[str | None, str]:
    kv_dtype = spec.kv_dtype or (implied.kv_dtype if implied else None)
    if spec.kv_scale is not None and kv_dtype is None:
        raise _FieldError("kv_scale", "only for an 8-bit cache: set kv_dtype")
    return kv_dtype, spec.kv_scale or "tensor"


class _FieldError(ValueError):
    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field = field
        self.reason = reason


def apply_model_source(data: dict[str, Any], source: str, base_dir: Path) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Fill in a ``[model] from = "config.json"`` table and the variants that take ``from_model``.

    The config's shape comes first and the table's other keys override it. A variant with
    ``from_model = true`` starts from the config's attention (its own keys override; a window key
    replaces all of the config's window keys); a scenario without variants gets that one variant.
    Returns the data to validate and the import's warnings. The path is relative to ``base_dir``.
    """
    model = data.get("model")
    if not isinstance(model, dict) or "from" not in model:
        return data, ()
    given = model["from"]
    if not isinstance(given, str) or not given:
        raise UserError("expected the path of a config.json", source=source, field="model.from")
    path = Path(given) if Path(given).is_absolute() else base_dir / given
    try:
        imported = import_config(read_json(path))
    except UserError as exc:
        raise UserError(str(exc), source=source, field="model.from") from None
    except ConfigError as exc:
        where = f"{path}: {exc.field}" if exc.field else str(path)
        raise UserError(f"{where}: {exc.reason}", source=source, field="model.from") from None
    resolved_model = imported.model | {key: value for key, value in model.items() if key != "from"}
    warnings = tuple(f"{path}: {line}" for line in imported.warnings)
    declared = data.get("variant")
    if declared is not None and not isinstance(declared, list):  # validation says what is wrong with it
        return data | {"model": resolved_model}, warnings
    variants = declared or [{"name": imported.variant["name"], "from_model": True}]
    merged = []
    for variant in variants:
        if isinstance(variant, dict) and variant.get("from_model") is True:
            base = dict(imported.variant)
            if WINDOW_KEYS & variant.keys():
                base = {key: value for key, value in base.items() if key not in WINDOW_KEYS}
            merged.append(base | variant)
        else:
            merged.append(variant)
    return data | {"model": resolved_model, "variant": merged}, warnings


WINDOW_KEYS = frozenset({"window", "window_pattern", "layer_windows"})


def parse_scenario(data: dict[str, Any], source: str) -> tuple[Scenario, tuple[Variant, ...]]:
    """Validate parsed TOML (with any [model] from already applied) and resolve its variants;
    UserError listing every problem found."""
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
    baseline = scenario.report.baseline
    if baseline is not None and baseline not in seen:
        problems.append(
            Problem(f"{baseline!r} is not a variant of this scenario ({', '.join(seen)})", source, "report.baseline")
        )
    if problems:
        raise UserErrors(problems)
    if scenario.quality is not None:
        check_quality(scenario, tuple(variants), source)
    return scenario, tuple(variants)


def conversion_targets(scenario: Scenario, variants: tuple[Variant, ...], source: str) -> list[Variant]:
    """The variants ``quality.convert_to`` names: a variant of the scenario by name, else a spelling of the name
    grammar resolved on the scenario's model; UserError naming the entry when neither."""
    assert scenario.quality is not None
    by_name = {v.name: v for v in variants}
    targets = []
    for index, name in enumerate(scenario.quality.convert_to):
        if name in by_name:
            targets.append(by_name[name])
            continue
        targets.append(resolve_spelling(name, scenario.model, source, f"quality.convert_to[{index}]"))
    return targets


def resolve_spelling(name: str, model: ModelSpec, source: str, field: str) -> Variant:
    """A variant from its name-grammar spelling alone (``H16-GQA2-CLA2``) on ``model``; UserError naming ``field``."""
    try:
        return resolve_variant(VariantSpec(name=name), model)
    except _FieldError as exc:
        raise UserError(exc.reason, source=source, field=field) from None


def check_quality(scenario: Scenario, variants: tuple[Variant, ...], source: str) -> None:
    """What the [quality] table needs of the rest of the scenario: a byte vocabulary, and conversions from one
    of its variants into variants that one can become."""
    quality = scenario.quality
    assert quality is not None
    if scenario.model.vocab_size < BYTE_VOCAB:
        raise UserError(
            f"[quality] trains on bytes: needs at least {BYTE_VOCAB} tokens, got {scenario.model.vocab_size}",
            source=source,
            field="model.vocab_size",
        )
    if quality.convert_from is None:
        return
    convertible = {v.name: v for v in variants}
    if quality.convert_from not in convertible:
        raise UserError(
            f"{quality.convert_from!r} is not a variant of this scenario ({', '.join(convertible)})",
            source=source,
            field="quality.convert_from",
        )
    origin = convertible[quality.convert_from]
    for index, target in enumerate(conversion_targets(scenario, variants, source)):
        problem = conversion_problem(origin, target)
        if problem is not None:
            raise UserError(
                f"{origin.name} -> {target.name}: {problem}", source=source, field=f"quality.convert_to[{index}]"
            )


def load_scenario(path: str | Path) -> LoadedScenario:
    """Load and validate one scenario file."""
    source = str(path)
    data, raw = read_toml(path, MAX_SCENARIO_BYTES, "scenario file")
    uses_source = isinstance(data.get("model"), dict) and "from" in data["model"]
    declared = data.get("variant")
    for index, variant in enumerate(declared if isinstance(declared, list) else []):
        if isinstance(variant, dict) and variant.get("from_model") is True and not uses_source:
            raise UserError(
                'needs [model] from = "path/config.json"', source=source, field=f"variant[{index}].from_model"
            )
    data, warnings = apply_model_source(data, source, Path(path).parent)
    scenario, variants = parse_scenario(data, source)
    return LoadedScenario(scenario, variants, source, hashlib.sha256(raw).hexdigest(), warnings)
