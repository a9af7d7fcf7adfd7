"""The result file format (``results/<target>/<UTC timestamp>_<short commit>.json``).

One file holds one run of one scenario on one hardware target. ``docs/results.md`` documents
every field; bump ``SCHEMA_VERSION`` on any incompatible change. Raw timing samples are kept so
that a later comparison can test significance on them.

Result files come from other machines and other people, so every field says what values make
sense, and a file is read in pydantic's strict mode (no ``"8"`` for 8, no ``true`` for 1): counts
are integers in range, latencies positive, every float finite. Checks that relate several fields
(a summary against its samples, cells unique) are in :mod:`harness.results.checks`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

# Every count this harness records (bytes, FLOPs, parameters) is what torch or the OS reports as a
# signed 64-bit integer; anything larger is not a measurement, and would overflow as a float.
INT64_MAX = 2**63 - 1
Count = Annotated[int, Field(ge=0, le=INT64_MAX)]  # what may be 0: peak memory above a baseline, a max batch
# What a decode step cannot do without (bytes moved, FLOPs, parameters, a KV cache), and batch
# sizes, lengths and heads: 1 or more, so that readers may divide by them.
Size = Annotated[int, Field(ge=1, le=INT64_MAX)]
Positive = Annotated[float, Field(gt=0)]  # floats are finite too (see _Model)
Seconds = Positive  # a latency
NonNegative = Annotated[float, Field(ge=0)]
# A folder name under results/ (and under a report's output folder): no separators, no leading dot.
TARGET_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"


class _Model(BaseModel):
    # allow_inf_nan: NaN and infinities are never measurements (Python's json reads "NaN", "1e999")
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Summary(_Model):
    """Raw samples (seconds) and their order statistics; see harness/measure/stats.py."""

    samples: list[Seconds] = Field(min_length=1)
    median: Seconds
    p10: Seconds
    p90: Seconds
    ci_low: Seconds  # 95% confidence interval of the median (distribution-free, order statistics)
    ci_high: Seconds
    # Median of each worker process's samples, one per measurement round: their spread is the
    # run-to-run noise that compare requires a change to exceed (one entry: no such estimate).
    process_medians: list[Seconds] = []


class MaxBatch(_Model):
    """Largest batch under the memory budget, for this cell's variant, dtype and context length."""

    budget_bytes: Size
    predicted: Count  # harness.accounting.predicted_max_batch
    measured: Count | None  # largest batch whose build plus one decode step fit; None if not searched
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
    bytes_per_step: Size  # harness.accounting.bytes_per_step
    attention_bytes_per_step: Size  # harness.accounting.attention_bytes_per_step
    flops_per_step: Size
    bandwidth_basis: Literal["cold", "warm"] | None = None  # which latency the bandwidths divide by
    bandwidth_gbps: NonNegative | None = None  # bytes_per_step / decode latency median, 1e9 bytes/s
    bandwidth_fraction: NonNegative | None = None  # of the target's measured peak
    attention_bandwidth_gbps: NonNegative | None = None  # attention_bytes_per_step / attention latency median
    attention_bandwidth_fraction: NonNegative | None = None
    tokens_per_s: NonNegative | None = None  # batch_size / decode latency median
    peak_memory_bytes: Count | None = None  # CUDA: allocator peak allocated; CPU: worker peak RSS above baseline
    peak_reserved_bytes: Count | None = None  # CUDA allocator peak reserved
    nvml_process_bytes: Count | None = None  # device memory NVML attributes to this process
    kv_cache_bytes: Size | None = None  # bytes the built model's cache tensors hold
    kv_cache_bytes_expected: Size  # harness.accounting.kv_cache_bytes
    max_batch: MaxBatch | None = None
    telemetry: Telemetry | None = None
    timer: str | None = None  # how latencies were timed: "perf_counter", "cuda-graph+events" or "cuda-events"
    auto_latencies_s: dict[str, Seconds] | None = None  # backend 'auto': core-attention median per candidate


class CellResult(_Model):
    """One cell: its coordinates, whether it ran, and what it measured."""

    variant: str = Field(min_length=1)
    batch_size: Size
    context_len: Size
    dtype: str = Field(min_length=1)
    backend: str = Field(min_length=1)  # as asked for in the scenario
    backend_used: str | None = None  # what 'auto' resolved to
    head_dim: Size
    n_heads: Size
    n_kv_heads: Size
    n_kv_layers: Size
    kv_layers: list[Count]
    params_total: Size
    kv_bytes_per_token: Size
    status: Literal["ok", "oom", "error"]
    error: str | None = None
    elapsed_s: NonNegative
    rounds_done: Size = 1  # measurement rounds finished for this cell (see measure.rounds)
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
    target: str = Field(pattern=TARGET_PATTERN)  # stable hardware id, e.g. nvidia-h100-80gb-hbm3, cpu-amd-epyc-2c
    environment: dict[str, Any]  # fingerprint: harness/hardware.py
    git: GitInfo
    scenario: ScenarioRef
    device: Literal["cpu", "cuda"]
    quick: bool
    started_utc: str
    finished_utc: str | None = None  # None while the run is still going (or was interrupted)
    peak_bandwidth_gbps: Positive | None = None  # the target's measured copy/read peak used for fractions
    cells: list[CellResult] = []
