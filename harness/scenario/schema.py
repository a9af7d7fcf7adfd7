"""The scenario file format as typed models (pydantic v2).

These models are the single definition of the format: ``attnbench schema`` prints their JSON
Schema and ``docs/scenarios.md`` documents the same fields. Unknown keys are rejected everywhere.
Checks that need more than one field (a variant's heads against ``d_model``, a sharing factor
against ``n_layers``) live in :mod:`harness.scenario.load`, which resolves variants.

Every number has an upper bound as well as a lower one, and floats must be finite: a scenario is
untrusted input, and ``n_layers = 1e18`` would otherwise have validation build a per-layer map
until memory runs out, and ``warmup_s = inf`` would have a run warm up forever.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from harness import backends
from harness.lengths import MAX_RAGGED_BATCH
from harness.scenario.quality import QualitySpec
from harness.units import parse_bytes

DType = Literal["float32", "bfloat16", "float16"]


def _registered_backend(name: str) -> str:
    """A backend the registry knows (harness/backends/), ``auto``, or a ``"module:function"`` kernel on the path."""
    problem = backends.name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


# Attention implementations a cell can be timed with: a name in the registry (`attnbench backends`).
Backend = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_registered_backend)]
Metric = Literal["decode", "attention", "memory", "max_batch", "train_step"]
ALL_METRICS: tuple[Metric, ...] = ("decode", "attention", "memory", "max_batch", "train_step")
# What a scenario without measure.metrics measures: train_step is opt-in, as max_batch is without a budget.
DEFAULT_METRICS: tuple[Metric, ...] = ("decode", "attention", "memory", "max_batch")

# Widths, heads, batch sizes and lengths: at most a signed 64-bit count, what torch can index (far
# beyond what fits in memory; an absurd batch is a cell that runs out of memory, not a bad file).
MAX_SIZE = 2**63 - 1
# Layers: a per-layer KV map is built while validating, so this also bounds validation's memory;
# the deepest published stacks have a few hundred.
MAX_LAYERS = 65_536
# Sample counts and rounds: far beyond any run that finishes.
MAX_COUNT = 10**9
Size = Annotated[int, Field(gt=0, le=MAX_SIZE)]
LayerIndex = Annotated[int, Field(ge=0, le=MAX_LAYERS - 1)]
# one process per rank: no engine shards a decoder over more ranks than it has query heads to give each
TPDegree = Annotated[int, Field(gt=0, le=1024)]
# Positions per page of a paged KV cache (harness/model/paged.py), or the static contiguous cache. Engines
# use 1 to a few hundred; a page larger than any context is a contiguous cache with extra steps.
PageSize = Annotated[int, Field(gt=0, le=2**20)] | Literal["contiguous"]
# How a batch's context lengths are spread (harness/lengths.py): a kind, or fractions of context_len.
LengthMixSpec = (
    Literal["same", "uniform", "long-tail"]
    | Annotated[list[Annotated[float, Field(gt=0, le=1)]], Field(min_length=1, max_length=4096)]
)

ByteSize = Annotated[
    int,
    BeforeValidator(parse_bytes),
    WithJsonSchema({"anyOf": [{"type": "string", "examples": ["40GiB", "512MB"]}, {"type": "integer", "minimum": 1}]}),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelSpec(_Strict):
    """Shape of the Llama-style decoder stack every variant of the scenario shares."""

    d_model: Size = Field(description="residual stream width")
    n_layers: int = Field(gt=0, le=MAX_LAYERS, description="decoder layers")
    d_ff: Size = Field(description="SwiGLU hidden width")
    vocab_size: Size = Field(description="embedding and LM-head rows")
    dtype: DType = Field("bfloat16", description="parameter and KV-cache dtype, unless the sweep sets dtype")
    norm_eps: float = Field(1e-5, gt=0, description="RMSNorm epsilon")
    rope_theta: float = Field(10000.0, gt=0, description="rotary embedding base")


KVDType = Literal["float8_e4m3fn", "float8_e5m2"]
# A layer_windows entry: a window in positions, or "global" (TOML has no null; JSON may give null).
# Windows are range-checked when the variant is resolved, for one clear message per bad entry.
LayerWindow = int | Literal["global"] | None


class VariantSpec(_Strict):
    """One attention configuration, by name (see harness/variants.py) or by explicit fields."""

    name: str = Field(
        min_length=1,
        description="H<head_dim>-{MHA|MQA|GQA<g>}[-CLA<s>][-SWA<w>[-<l>:<g>]][-KV8|-KV8E5], "
        "MLA<kv_lora_rank>-R<qk_rope_head_dim>[-Q<q_lora_rank>][...], or a label if 'attention' is set",
    )
    attention: Literal["mha", "gqa", "mqa", "mla"] | None = Field(
        None, description="set to specify the variant by fields"
    )
    from_model: bool = Field(False, description="start from the attention of [model] from's config.json")
    head_dim: Size | None = Field(None, description="width of one head (not for mla)")
    n_heads: Size | None = Field(None, description="query heads; default d_model // head_dim")
    n_kv_heads: Size | None = Field(None, description="key/value heads per producer layer (not for mla)")
    kv_sharing: Size | None = Field(None, description="CLA sharing factor: adjacent layers per K/V projection")
    kv_layers: list[LayerIndex] | None = Field(
        None, description="explicit map: entry i is the layer whose KV layer i reads"
    )
    window: int | None = Field(
        None, description="sliding window in positions (each windowed layer attends to its last window positions)"
    )
    window_pattern: str | None = Field(
        None,
        pattern=r"^(all|\d+:\d+)$",
        description="which layers the window applies to: 'all' (default), or '<local>:<global>' such as '1:1' or '5:1'",
    )
    layer_windows: list[LayerWindow] | None = Field(
        None, description="per-layer windows, n_layers entries: a window in positions or 'global'"
    )
    kv_dtype: KVDType | None = Field(None, description="KV-cache dtype when it differs from the weights': 8-bit float")
    kv_scale: Literal["tensor", "head"] | None = Field(
        None, description="scale granularity of an 8-bit cache: one per cache tensor (default) or one per KV head"
    )
    kv_lora_rank: Size | None = Field(None, description="mla: cached latent width d_c (required)")
    q_lora_rank: Size | None = Field(None, description="mla: compressed query width d_c'; default none")
    qk_rope_head_dim: Size | None = Field(
        None, description="mla: rotary width d_h^R of query and shared key; default 64"
    )
    qk_nope_head_dim: Size | None = Field(None, description="mla: non-rotary query/key width per head; default 128")
    v_head_dim: Size | None = Field(None, description="mla: value width per head; default qk_nope_head_dim")


class SweepSpec(_Strict):
    """Axes crossed with every variant: one cell per combination."""

    batch_size: list[Size] = Field(min_length=1, description="sequences decoded together")
    context_len: list[Size] = Field(min_length=1, description="tokens already in the cache")
    backend: list[Backend] = Field(["sdpa"], min_length=1, description="attention implementations")
    dtype: list[DType] | None = Field(None, min_length=1, description="default: [model.dtype]")
    tp: list[TPDegree] = Field(
        [1],
        min_length=1,
        max_length=64,
        description="tensor-parallel degrees; unless [1] (the default), each cell's decode step is also measured "
        "sharded over each degree, one process per rank (1: the same harness, unsharded)",
    )
    page_size: list[PageSize] | None = Field(
        None,
        min_length=1,
        description="KV-cache layouts: positions per page of a paged cache, or 'contiguous'; each variant is "
        "measured in each layout, a paged one named <variant>-P<page_size>; default: contiguous only",
    )

    lengths: list[LengthMixSpec] | None = Field(
        None,
        min_length=1,
        description="context lengths within a batch: 'same', 'uniform', 'long-tail' or a list of fractions of "
        "context_len (one of them 1); context_len is the longest sequence's; default: same",
    )

    q_len: list[Annotated[int, Field(gt=0, le=4096)]] = Field(
        [1],
        min_length=1,
        description="new tokens per sequence per step, causal within them (1: a decode step; more: speculative "
        "verification); a form with more is named <variant>-T<q_len>",
    )

    prefill: bool = Field(
        False,
        description="also measure, per cache layout, each variant's prefill: the whole prompt of context_len "
        "tokens per sequence through the stack over an empty cache (the time to first token), named "
        "<variant>-prefill",
    )
    prefill_chunk: list[Annotated[int, Field(gt=0, le=65536)]] = Field(
        [],
        description="chunk sizes of chunked-prefill steps also measured per cache layout: sequence 0 of each batch "
        "adds a chunk of this many prompt tokens beside one decode token of each other sequence, all at "
        "context_len, in one packed step; named <variant>-chunk<size>",
    )

    @model_validator(mode="after")
    def _no_repeats(self) -> SweepSpec:
        for mix in self.lengths or []:
            if isinstance(mix, list) and max(mix) != 1:
                raise ValueError(
                    f"sweep.lengths: a list of fractions must include 1 (context_len is the longest): {mix}"
                )
        if self.lengths is not None and len({str(mix) for mix in self.lengths}) != len(self.lengths):
            raise ValueError(f"sweep.lengths repeats a value: {self.lengths}")
        if any(mix != "same" for mix in self.lengths or []) and max(self.batch_size) > MAX_RAGGED_BATCH:
            raise ValueError(
                f"a ragged batch (sweep.lengths) draws one length per sequence: batch_size at most "
                f"{MAX_RAGGED_BATCH}, got {max(self.batch_size)}"
            )
        for axis in ("batch_size", "context_len", "backend", "dtype", "tp", "page_size", "q_len", "prefill_chunk"):
            values = getattr(self, axis)
            if values is not None and len(set(values)) != len(values):
                raise ValueError(f"sweep.{axis} repeats a value: {values}")
        return self


# Caps of a warm-up that waits for a steady step and of a window that waits for a narrow interval.
DEFAULT_WARMUP_MAX_S = 2.0
DEFAULT_MAX_TIME_S = 5.0


class MeasureSpec(_Strict):
    """How cells are measured."""

    memory_budget: ByteSize | None = Field(None, description="device memory the max-batch search may use, e.g. '40GiB'")
    metrics: list[Metric] | None = Field(
        None,
        description="default: decode, attention, memory (and max_batch with a memory_budget); train_step on request",
    )
    warmup_s: float = Field(0.5, gt=0, description="least warm-up before each timed window")
    warmup_max_s: float | None = Field(
        None,
        gt=0,
        description="longest warm-up: past warmup_s it goes on until the step time is steady "
        f"(default {DEFAULT_WARMUP_MAX_S:g} s, or warmup_s if longer)",
    )
    min_time_s: float = Field(1.0, gt=0, description="least timed window per metric and cell")
    target_ci: float | None = Field(
        0.02,
        gt=0,
        lt=1,
        description="sample until each round's median is known within this fraction (95% interval), "
        "within max_time_s; null: stop at min_time_s",
    )
    max_time_s: float | None = Field(
        None,
        gt=0,
        description="longest timed window while aiming for target_ci "
        f"(default {DEFAULT_MAX_TIME_S:g} s, or min_time_s if longer)",
    )
    min_samples: int = Field(15, ge=5, le=MAX_COUNT, description="fewest timed samples per metric")
    max_samples: int = Field(200, ge=5, le=MAX_COUNT, description="most timed samples per metric")
    threads: int | None = Field(
        None,
        ge=1,
        le=MAX_COUNT,
        description="CPU: torch's intra-op threads in each measuring worker (default: torch's own, one per core)",
    )
    cold: bool = Field(True, description="also time with caches flushed between samples")
    rounds: int = Field(
        1,
        ge=1,
        le=MAX_COUNT,
        description="passes over all cells, each timing every cell in a new process; their spread is the noise",
    )
    seed: int = Field(  # the range torch.manual_seed accepts
        0, ge=-(2**63), le=2**64 - 1, description="seed for weights and synthetic cache contents"
    )
    cell_timeout_s: float = Field(
        600.0, gt=0, description="longest a worker may take (a cell, a max-batch probe) before it is killed: 'timeout'"
    )
    energy_window_s: float = Field(
        2.0, ge=0, description="CUDA: seconds of decode-step graph replays over which energy is read (0: none)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> MeasureSpec:
        if self.max_samples < self.min_samples:
            raise ValueError(f"max_samples ({self.max_samples}) is below min_samples ({self.min_samples})")
        if self.warmup_max_s is not None and self.warmup_max_s < self.warmup_s:
            raise ValueError(f"warmup_max_s ({self.warmup_max_s}) is below warmup_s ({self.warmup_s})")
        if self.max_time_s is not None and self.max_time_s < self.min_time_s:
            raise ValueError(f"max_time_s ({self.max_time_s}) is below min_time_s ({self.min_time_s})")
        if self.metrics is not None and "max_batch" in self.metrics and self.memory_budget is None:
            raise ValueError("metric 'max_batch' needs measure.memory_budget")
        return self

    @property
    def warmup_cap_s(self) -> float:
        """The longest warm-up: ``warmup_max_s``, by default the larger of DEFAULT_WARMUP_MAX_S and ``warmup_s``."""
        return self.warmup_max_s if self.warmup_max_s is not None else max(DEFAULT_WARMUP_MAX_S, self.warmup_s)

    @property
    def time_cap_s(self) -> float:
        """The longest timed window: ``max_time_s``, by default the larger of DEFAULT_MAX_TIME_S and ``min_time_s``."""
        return self.max_time_s if self.max_time_s is not None else max(DEFAULT_MAX_TIME_S, self.min_time_s)

    @property
    def selected_metrics(self) -> tuple[Metric, ...]:
        if self.metrics is not None:
            return tuple(self.metrics)
        return tuple(m for m in DEFAULT_METRICS if m != "max_batch" or self.memory_budget is not None)


class ReportSpec(_Strict):
    """How ``attnbench report`` reads a run of this scenario."""

    baseline: str | None = Field(
        None,
        min_length=1,
        description="the variant the report's verdict compares every other with; default the first variant",
    )


class Scenario(_Strict):
    """A whole scenario file."""

    name: str = Field(min_length=1, description="short identifier, used in result files")
    description: str = Field("", description="what the scenario is for")
    model: ModelSpec
    variant: list[VariantSpec] = Field(min_length=1, description="attention configurations to compare")
    sweep: SweepSpec
    measure: MeasureSpec = MeasureSpec()
    quality: QualitySpec | None = Field(
        None, description="training every variant at toy scale for its validation loss (attnbench train)"
    )
    report: ReportSpec = ReportSpec()


def scenario_json_schema() -> dict[str, Any]:
    """The JSON Schema of a scenario file, as an editor checks it.

    [model] may take its shape from a config.json (``from``), read before validation
    (harness/scenario/load.py): with ``from`` the other [model] keys are optional overrides.
    """
    schema = Scenario.model_json_schema()
    model = schema["$defs"]["ModelSpec"]
    model["properties"]["from"] = {
        "type": "string",
        "description": "path of a Hugging Face config.json (relative to the scenario file); other keys override it",
    }
    required = model.pop("required")
    model["anyOf"] = [{"required": required}, {"required": ["from"]}]
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "attnbench scenario"
    return schema
