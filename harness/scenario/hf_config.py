"""A model from a Hugging Face ``config.json``: the [model] shape and the attention variant it describes.

Reads the fields of Llama, Mistral, Mixtral, Qwen2/Qwen3, Gemma 1/2/3 and DeepSeek-V2/V3 configs from a
local file (nothing is downloaded): the stack's shape (``hidden_size``, ``num_hidden_layers``,
``intermediate_size``, ``vocab_size``), its attention (``num_attention_heads``, ``num_key_value_heads``,
``head_dim``; ``kv_lora_rank``, ``q_lora_rank``, ``qk_rope_head_dim``, ``qk_nope_head_dim``,
``v_head_dim`` for MLA), its windows (``sliding_window`` with ``layer_types``,
``sliding_window_pattern``, ``use_sliding_window``/``max_window_layers`` or the architecture's fixed
pattern), ``rope_theta``, ``rms_norm_eps`` and ``torch_dtype``.

What the decoder does not model (MoE experts, biases, soft-capping, a tied LM head, rotary scaling,
...) is left out and named in one warning line per field, so that the KV accounting stays exact and
the parameter count says what it covers (:data:`PARAMETERS_COVER`). A field the file leaves out is
taken from the architecture's documented default, and that is said in a warning line too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import inputs
from harness.errors import UserError
from harness.inputs import MIB
from harness.variants import MLAShape, Variant

PARAMETERS_COVER = (
    "the parameter count covers the token embedding, attention, a dense SwiGLU MLP of d_ff in every layer, "
    "the RMSNorms and an untied LM head"
)

# model_type -> the family whose reading rules apply.
ARCHITECTURES: dict[str, str] = {
    "llama": "llama",
    "mistral": "llama",
    "mixtral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3_text": "gemma",
    "deepseek_v2": "deepseek",
    "deepseek_v3": "deepseek",
}

# Values the transformers config classes use when a field is absent from the file, per model_type:
# Gemma 3's multimodal configs leave most of their text_config to these.
DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma": {"head_dim": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0},
    "gemma2": {"head_dim": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "sliding_window": 4096},
    "gemma3_text": {
        "vocab_size": 262208,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "sliding_window": 4096,
        "sliding_window_pattern": 6,
    },
    "deepseek_v2": {"qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128},
    "deepseek_v3": {"qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128},
}
# Defaults of fields the decoder does not model, where the architecture has them on: Gemma ties its
# LM head to the embedding unless the file says otherwise.
UNMODELLED_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma": {"tie_word_embeddings": True},
    "gemma2": {"tie_word_embeddings": True},
    "gemma3_text": {"tie_word_embeddings": True},
}
# Used for every architecture when the file and DEFAULTS say nothing.
COMMON_DEFAULTS: dict[str, Any] = {"rope_theta": 10000.0, "rms_norm_eps": 1e-6}

DTYPES = ("float32", "bfloat16", "float16")
SWIGLU_ACTIVATIONS = ("silu", "swish")
# Architecture parts no config field names, per model_type.
STRUCTURAL_NOTES: dict[str, str] = {
    "qwen2": "the q, k and v projection biases of Qwen2 are not modelled",
    "qwen3": "Qwen3's RMSNorm on each query and key head is not modelled",
    "gemma2": "Gemma 2's post-attention and post-feedforward RMSNorms are not modelled",
    "gemma3_text": "Gemma 3's post-attention and post-feedforward RMSNorms and query/key RMSNorms are not modelled",
}


class ConfigError(ValueError):
    """A field of config.json that cannot be read: its dotted name and why."""

    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class ImportedModel:
    """What a config.json says, in scenario terms."""

    architecture: str  # model_type of the config that was read
    model: dict[str, Any]  # [model] keys
    variant: dict[str, Any]  # [[variant]] keys, by fields ("attention" set), named by its spelling
    warnings: tuple[str, ...]  # one per field left out or defaulted: "field: what"


# A model's config.json is a few kilobytes; a file far larger is no config.
MAX_CONFIG_BYTES = 4 * MIB


def read_json(path: str | Path) -> dict[str, Any]:
    """The JSON object in a local file; UserError naming the file when it is missing or not a JSON object."""
    data = inputs.read_json(path, MAX_CONFIG_BYTES, "config.json")
    if not isinstance(data, dict):
        raise UserError(f"not a JSON object but a JSON {type(data).__name__}", source=str(path))
    return data


def load_config(path: str | Path) -> ImportedModel:
    """Read and import a config.json; UserError naming the file and the field on a problem."""
    data = read_json(path)
    try:
        return import_config(data)
    except ConfigError as exc:
        raise UserError(exc.reason, source=str(path), field=exc.field) from None


class _Reader:
    """Typed access to one config object, recording the defaults it falls back on."""

    def __init__(self, data: dict[str, Any], architecture: str, prefix: str) -> None:
        self.data = data
        self.architecture = architecture
        self.prefix = prefix
        self.warnings: list[str] = []

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def present(self, key: str) -> bool:
        return self.data.get(key) is not None

    def raw(self, key: str, required: bool = True) -> Any:
        if self.present(key):
            return self.data[key]
        defaults = DEFAULTS.get(self.architecture, {})
        if key in defaults or key in COMMON_DEFAULTS:
            value = defaults.get(key, COMMON_DEFAULTS.get(key))
            self.warnings.append(f"{self.name(key)}: absent; using {self.architecture}'s default {value}")
            return value
        if required:
            raise ConfigError(self.name(key), f"required for {self.architecture} but absent")
        return None

    def positive_int(self, key: str, required: bool = True) -> int | None:
        value = self.raw(key, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(self.name(key), f"expected a positive integer, got {value!r}")
        return value

    def positive_float(self, key: str) -> float:
        value = self.raw(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(self.name(key), f"expected a positive number, got {value!r}")
        return float(value)


def _architecture(data: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
    """The config object that describes the decoder (a multimodal file's text_config), its model_type
    and the prefix of its field names."""
    model_type = data.get("model_type")
    if model_type is None:
        raise ConfigError("model_type", "absent: cannot tell the architecture")
    if not isinstance(model_type, str):
        raise ConfigError("model_type", f"expected a string, got {model_type!r}")
    text = data.get("text_config")
    if model_type not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ConfigError("model_type", f"unknown architecture {model_type!r}; attnbench reads {known}")
    if isinstance(text, dict) and not data.get("hidden_size"):
        inner = text.get("model_type", f"{model_type}_text")
        if inner not in ARCHITECTURES:
            raise ConfigError("text_config.model_type", f"unknown architecture {inner!r}")
        return text, inner, "text_config."
    if model_type == "gemma3":  # a gemma3 file without a text_config reads as its text model
        return data, "gemma3_text", ""
    return data, model_type, ""


def _windows(reader: _Reader, n_layers: int) -> tuple[int | None, ...]:
    """Each layer's window (None: global) from layer_types or the architecture's rules."""
    arch = reader.architecture
    layer_types = reader.data.get("layer_types")
    if layer_types is not None:
        if not isinstance(layer_types, list) or len(layer_types) != n_layers:
            raise ConfigError(reader.name("layer_types"), f"expected a list of {n_layers} layer types")
        windows: list[int | None] = []
        for index, kind in enumerate(layer_types):
            if kind == "full_attention":
                windows.append(None)
            elif kind == "sliding_attention":
                windows.append(reader.positive_int("sliding_window"))
            else:
                raise ConfigError(reader.name(f"layer_types[{index}]"), f"layer type {kind!r} is not modelled")
        return tuple(windows)
    if arch == "gemma2":  # every other layer local, starting with layer 0 (Gemma Team 2024, Gemma 2, §2)
        window = reader.positive_int("sliding_window")
        return tuple(window if layer % 2 == 0 else None for layer in range(n_layers))
    if arch == "gemma3_text":  # pattern - 1 local layers, then one global (Gemma Team 2025, Gemma 3, §2.2)
        window = reader.positive_int("sliding_window")
        pattern = reader.positive_int("sliding_window_pattern")
        assert window is not None and pattern is not None
        return tuple(None if (layer + 1) % pattern == 0 else window for layer in range(n_layers))
    if arch in ("qwen2", "qwen3"):  # windowed from layer max_window_layers on, only with use_sliding_window
        if not reader.data.get("use_sliding_window") or not reader.present("sliding_window"):
            return (None,) * n_layers
        window = reader.positive_int("sliding_window")
        first = reader.data.get("max_window_layers", 0)
        if not isinstance(first, int) or first < 0:
            raise ConfigError(reader.name("max_window_layers"), f"expected a non-negative integer, got {first!r}")
        return tuple(window if layer >= first else None for layer in range(n_layers))
    if arch in ("mistral", "mixtral") and reader.present("sliding_window"):
        window = reader.positive_int("sliding_window")
        return (window,) * n_layers
    return (None,) * n_layers


def _is_set(value: Any) -> bool:
    """Whether a config value switches a feature on (not null, false, 0, an empty list)."""
    return value is not None and value is not False and value != 0 and value != [] and value != {}


# (field, whether its value is a feature the decoder leaves out, what is said about it)
Rule = tuple[str, Callable[[Any, dict[str, Any]], bool], Callable[[Any, dict[str, Any]], str]]


def _ctx_d_ff(context: dict[str, Any]) -> str:
    return f"intermediate_size ({context['d_ff']})"


UNMODELLED: tuple[Rule, ...] = (
    (
        "tie_word_embeddings",
        lambda v, c: v is True,
        lambda v, c: (
            "the LM head is a separate matrix here, not tied to the embedding: the parameter count "
            f"includes vocab_size · hidden_size = {c['vocab_size'] * c['d_model']} more than the tied model"
        ),
    ),
    ("attention_bias", lambda v, c: v is True, lambda v, c: "attention projection biases are not modelled"),
    ("mlp_bias", lambda v, c: v is True, lambda v, c: "MLP biases are not modelled"),
    (
        "rope_scaling",
        lambda v, c: _is_set(v),
        lambda v, c: (
            f"rotary scaling ({v.get('rope_type', v.get('type', '?')) if isinstance(v, dict) else v}) "
            "is not modelled: plain rotary embedding with rope_theta (the same cost)"
        ),
    ),
    (
        "rope_local_base_freq",
        lambda v, c: v is not None and float(v) != c["rope_theta"],
        lambda v, c: f"local layers' rotary base {v} is not modelled: every layer uses rope_theta (the same cost)",
    ),
    (
        "partial_rotary_factor",
        lambda v, c: v is not None and float(v) != 1.0,
        lambda v, c: f"partial rotary ({v}) is not modelled: the whole head is rotated (the same cost)",
    ),
    (
        "attn_logit_softcapping",
        lambda v, c: _is_set(v),
        lambda v, c: f"attention-logit soft-capping ({v}) is not modelled",
    ),
    (
        "final_logit_softcapping",
        lambda v, c: _is_set(v),
        lambda v, c: f"final-logit soft-capping ({v}) is not modelled",
    ),
    (
        "query_pre_attn_scalar",
        lambda v, c: v is not None and c.get("head_dim") is not None and float(v) != c["head_dim"],
        lambda v, c: f"attention scale 1/sqrt({v}) is not modelled: scores scale by 1/sqrt(head_dim) (the same cost)",
    ),
    (
        "hidden_act",
        lambda v, c: isinstance(v, str) and v not in SWIGLU_ACTIVATIONS,
        lambda v, c: f"the {v} gated MLP is modelled as SwiGLU (the same shape and cost)",
    ),
    (
        "hidden_activation",
        lambda v, c: isinstance(v, str) and v not in SWIGLU_ACTIVATIONS,
        lambda v, c: f"the {v} gated MLP is modelled as SwiGLU (the same shape and cost)",
    ),
    (
        "n_routed_experts",
        lambda v, c: _is_set(v),
        lambda v, c: f"{v} routed MoE experts are not modelled: every layer has a dense SwiGLU MLP of {_ctx_d_ff(c)}",
    ),
    (
        "num_local_experts",
        lambda v, c: _is_set(v),
        lambda v, c: f"{v} MoE experts are not modelled: every layer has a dense SwiGLU MLP of {_ctx_d_ff(c)}",
    ),
    ("n_shared_experts", lambda v, c: _is_set(v), lambda v, c: f"{v} shared MoE experts are not modelled"),
    (
        "moe_intermediate_size",
        lambda v, c: _is_set(v) and _is_set(c.get("experts")),
        lambda v, c: f"the experts' width {v} is not modelled",
    ),
    (
        "num_experts_per_tok",
        lambda v, c: _is_set(v) and _is_set(c.get("experts")),
        lambda v, c: f"routing to {v} experts per token is not modelled",
    ),
    (
        "first_k_dense_replace",
        lambda v, c: _is_set(v) and _is_set(c.get("experts")),
        lambda v, c: f"the first {v} layer(s) are dense and the rest MoE in the model; here every layer is dense",
    ),
    (
        "moe_layer_freq",
        lambda v, c: v is not None and v != 1 and _is_set(c.get("experts")),
        lambda v, c: f"MoE layers every {v} layers are not modelled: every layer is dense",
    ),
    (
        "num_nextn_predict_layers",
        lambda v, c: _is_set(v),
        lambda v, c: f"{v} multi-token-prediction layer(s) are not modelled",
    ),
    (
        "quantization_config",
        lambda v, c: _is_set(v),
        lambda v, c: (
            f"weight quantization ({v.get('quant_method', '?') if isinstance(v, dict) else v}) is not "
            f"modelled: weights are {c['dtype']}"
        ),
    ),
)


def _unmodelled(reader: _Reader, context: dict[str, Any]) -> list[str]:
    warnings = []
    note = STRUCTURAL_NOTES.get(reader.architecture)
    if note is not None:
        warnings.append(f"{reader.name('model_type')}: {note}")
    for field, active, say in UNMODELLED:
        value = reader.data.get(field)
        defaulted = value is None and field in UNMODELLED_DEFAULTS.get(reader.architecture, {})
        if defaulted:
            value = UNMODELLED_DEFAULTS[reader.architecture][field]
        if active(value, context):
            suffix = f" (absent: {reader.architecture}'s default is {value})" if defaulted else ""
            warnings.append(f"{reader.name(field)}: {say(value, context)}{suffix}")
    return warnings


def _dtype(data: dict[str, Any], reader: _Reader) -> str:
    for key in ("torch_dtype", "dtype"):
        value = data.get(key) or reader.data.get(key)
        if value is None:
            continue
        if value in DTYPES:
            return str(value)
        reader.warnings.append(f"{reader.name(key)}: {value!r} is not a dtype attnbench builds; using bfloat16")
        return "bfloat16"
    return "bfloat16"


def import_config(data: dict[str, Any]) -> ImportedModel:
    """The scenario [model] table and [[variant]] fields a parsed config.json describes; ConfigError on a bad field."""
    config, architecture, prefix = _architecture(data)
    reader = _Reader(config, architecture, prefix)
    family = ARCHITECTURES[architecture]
    d_model = reader.positive_int("hidden_size")
    n_layers = reader.positive_int("num_hidden_layers")
    d_ff = reader.positive_int("intermediate_size")
    vocab_size = reader.positive_int("vocab_size")
    n_heads = reader.positive_int("num_attention_heads")
    assert d_model is not None and n_layers is not None and d_ff is not None and vocab_size is not None
    assert n_heads is not None
    model = {
        "d_model": d_model,
        "n_layers": n_layers,
        "d_ff": d_ff,
        "vocab_size": vocab_size,
        "dtype": _dtype(data, reader),
        "norm_eps": reader.positive_float("rms_norm_eps"),
        "rope_theta": reader.positive_float("rope_theta"),
    }
    windows = _windows(reader, n_layers)
    mla: MLAShape | None = None
    if family == "deepseek" and reader.present("kv_lora_rank"):
        mla = _mla(reader)
        head_dim, n_kv_heads = mla.qk_nope_head_dim + mla.qk_rope_head_dim, 1
    else:
        head_dim = _head_dim(reader, d_model, n_heads)
        n_kv_heads = reader.positive_int("num_key_value_heads", required=False) or n_heads
        if n_heads % n_kv_heads:
            raise ConfigError(
                reader.name("num_key_value_heads"),
                f"num_attention_heads ({n_heads}) is not a multiple of num_key_value_heads ({n_kv_heads})",
            )
    variant = Variant(
        name="",
        head_dim=head_dim,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        kv_layers=tuple(range(n_layers)),
        layer_windows=windows,
        mla=mla,
    )
    context = {**model, "head_dim": head_dim, "experts": _experts(config)}
    warnings = reader.warnings + _unmodelled(reader, context)
    return ImportedModel(architecture, model, _variant_fields(variant, d_model), tuple(warnings))


def _experts(config: dict[str, Any]) -> Any:
    return config.get("n_routed_experts") or config.get("num_local_experts")


def _head_dim(reader: _Reader, d_model: int, n_heads: int) -> int:
    if reader.present("head_dim") or "head_dim" in DEFAULTS.get(reader.architecture, {}):
        head_dim = reader.positive_int("head_dim")
        assert head_dim is not None
        return head_dim
    if d_model % n_heads:
        raise ConfigError(
            reader.name("head_dim"),
            f"absent, and hidden_size ({d_model}) is not a multiple of num_attention_heads ({n_heads})",
        )
    return d_model // n_heads


def _mla(reader: _Reader) -> MLAShape:
    fields = {key: reader.positive_int(key) for key in ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim")}
    v_head_dim = reader.positive_int("v_head_dim")
    q_lora_rank = reader.positive_int("q_lora_rank", required=False)
    try:
        return MLAShape(
            kv_lora_rank=int(fields["kv_lora_rank"] or 0),
            qk_rope_head_dim=int(fields["qk_rope_head_dim"] or 0),
            qk_nope_head_dim=int(fields["qk_nope_head_dim"] or 0),
            v_head_dim=int(v_head_dim or 0),
            q_lora_rank=q_lora_rank,
        )
    except ValueError as exc:
        raise ConfigError(reader.name("qk_rope_head_dim"), str(exc)) from None


def _variant_fields(variant: Variant, d_model: int) -> dict[str, Any]:
    """The [[variant]] keys that resolve to ``variant``: by fields, named by its spelling."""
    fields: dict[str, Any] = {"name": variant.describe(), "attention": variant.attention}
    if variant.mla is not None:
        mla = variant.mla
        fields |= {
            "n_heads": variant.n_heads,
            "kv_lora_rank": mla.kv_lora_rank,
            "qk_rope_head_dim": mla.qk_rope_head_dim,
            "qk_nope_head_dim": mla.qk_nope_head_dim,
            "v_head_dim": mla.v_head_dim,
        }
        if mla.q_lora_rank is not None:
            fields["q_lora_rank"] = mla.q_lora_rank
    else:
        fields |= {"head_dim": variant.head_dim, "n_heads": variant.n_heads, "n_kv_heads": variant.n_kv_heads}
    spelling = variant.window_spelling()
    if spelling:
        size, _, pattern = spelling.removeprefix("-SWA").partition("-")
        fields["window"] = int(size)
        if pattern:
            fields["window_pattern"] = pattern
    elif spelling is None:
        fields["layer_windows"] = ["global" if w is None else w for w in variant.windows]
    return fields
