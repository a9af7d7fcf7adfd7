"""The result file format (``results/<target>/<UTC timestamp>_<short commit>.json``).

One file holds one run of one scenario on one hardware target. ``docs/results.md`` documents
every field; bump ``SCHEMA_VERSION`` on any incompatible change. Raw timing samples are kept so
that a later comparison can test significance on them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Summary(_Model):
    """Raw samples (seconds) and their order statistics; see harness/measure/stats.py."""

    samples: list[float] = Field(min_length=1)
    median: float
    p10: float
    p90: float
    ci_low: float  # 95% confidence interval of the median (distribution-free, order statistics)
    ci_high: float
    # Median of each worker process's samples, one per measurement round: their spread is the
    # run-to-run noise that compare requires a change to exceed (one entry: no such estimate).
    process_medians: list[float] = []


class MaxBatch(_Model):
    """Largest batch under the memory budget, for this cell's variant, dtype and context length."""

    budget_bytes: int
    predicted: int  # harness.accounting.predicted_max_batch
    measured: int | None  # largest batch whose build plus one decode step fit; None if not searched
    error_fraction: float | None  # (predicted - measured) / measured
    probes: list[dict[str, Any]] = []  # each probe: batch_size, fits, peak_bytes, status


class Telemetry(_Model):
    """NVML readings over the timed window (NVIDIA only; null elsewhere)."""

    sm_clock_mhz: float | None = None
    memory_clock_mhz: float | None = None
    power_w: float | None = None
    temperature_c: float | None = None
    throttle_reasons: list[str] = []
    energy_per_token_j: float | None = None


class CellMetrics(_Model):
    """Everything measured or derived for one cell. Latencies are per decode step."""

    decode_latency_s: Summary | None = None  # warm; on CUDA device time from CUDA-graph replay
    decode_latency_cold_s: Summary | None = None  # caches flushed between samples
    decode_latency_host_s: Summary | None = None  # CUDA: host-inclusive eager step
    attention_latency_s: Summary | None = None  # core attention over all L layers, warm
    attention_latency_cold_s: Summary | None = None
    bytes_per_step: int  # harness.accounting.bytes_per_step
    attention_bytes_per_step: int  # harness.accounting.attention_bytes_per_step
    flops_per_step: int
    bandwidth_basis: Literal["cold", "warm"] | None = None  # which latency the bandwidths divide by
    bandwidth_gbps: float | None = None  # bytes_per_step / decode latency median, 1e9 bytes/s
    bandwidth_fraction: float | None = None  # of the target's measured peak
    attention_bandwidth_gbps: float | None = None  # attention_bytes_per_step / attention latency median
    attention_bandwidth_fraction: float | None = None
    tokens_per_s: float | None = None  # batch_size / decode latency median
    peak_memory_bytes: int | None = None  # CUDA: allocator peak allocated; CPU: worker peak RSS above baseline
    peak_reserved_bytes: int | None = None  # CUDA allocator peak reserved
    nvml_process_bytes: int | None = None  # device memory NVML attributes to this process
    kv_cache_bytes: int | None = None  # bytes the built model's cache tensors hold
    kv_cache_bytes_expected: int  # harness.accounting.kv_cache_bytes
    max_batch: MaxBatch | None = None
    telemetry: Telemetry | None = None
    timer: str | None = None  # how latencies were timed: "perf_counter", "cuda-graph+events" or "cuda-events"
    auto_latencies_s: dict[str, float] | None = None  # backend 'auto': core-attention median per candidate


class CellResult(_Model):
    """One cell: its coordinates, whether it ran, and what it measured."""

    variant: str
    batch_size: int
    context_len: int
    dtype: str
    backend: str  # as asked for in the scenario
    backend_used: str | None = None  # what 'auto' resolved to
    head_dim: int
    n_heads: int
    n_kv_heads: int
    n_kv_layers: int
    kv_layers: list[int]
    params_total: int
    kv_bytes_per_token: int
    # What a producer caches, beside the heads above (absent in results written before these kinds).
    attention: str | None = None  # mha | gqa | mqa | mla
    spelling: str | None = None  # the variant's name-grammar spelling (harness/variants.py)
    layer_windows: list[int | None] | None = None  # per layer; null: every layer global
    kv_dtype: str | None = None  # 8-bit cache dtype; null: the cell's dtype
    kv_scale: str | None = None  # scale granularity of an 8-bit cache: tensor | head
    # kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim, v_head_dim, q_lora_rank
    mla: dict[str, int | None] | None = None
    kv_bytes_per_sequence: int | None = None  # cache bytes one sequence holds at this context (windows counted)
    # unsupported: the backend cannot run this variant on this device (the error says why); not measured
    status: Literal["ok", "oom", "error", "unsupported"]
    error: str | None = None
    elapsed_s: float
    rounds_done: int = 1  # measurement rounds finished for this cell (see measure.rounds)
    metrics: CellMetrics | None = None

    @property
    def key(self) -> tuple[str, int, int, str, str]:
        return (self.variant, self.batch_size, self.context_len, self.dtype, self.backend)


class ScenarioRef(_Model):
    name: str
    source: str
    sha256: str
    description: str = ""
    model: dict[str, Any]  # the scenario's [model] table, resolved with defaults
    measure: dict[str, Any]


class GitInfo(_Model):
    commit: str | None
    short: str | None
    dirty: bool | None
    branch: str | None = None


class RunResult(_Model):
    """A whole result file."""

    schema_version: int = SCHEMA_VERSION
    target: str  # stable hardware id, e.g. nvidia-h100-80gb-hbm3, cpu-amd-epyc-2c
    environment: dict[str, Any]  # fingerprint: harness/hardware.py
    git: GitInfo
    scenario: ScenarioRef
    device: Literal["cpu", "cuda"]
    quick: bool
    started_utc: str
    finished_utc: str | None = None  # None while the run is still going (or was interrupted)
    peak_bandwidth_gbps: float | None = None  # the target's measured copy/read peak used for fractions
    cells: list[CellResult] = []
