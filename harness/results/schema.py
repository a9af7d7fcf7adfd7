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

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.cellkey import CellKey

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
# A UTC time to the microsecond, e.g. 2026-11-24T06:15:00.123456Z (placements, which overlap tests compare).
UtcTime = Annotated[str, Field(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")]


class _Model(BaseModel):
    # allow_inf_nan: NaN and infinities are never measurements (Python's json reads "NaN", "1e999")
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Summary(_Model):
    """Raw samples (seconds) and their order statistics; see harness/stats/order.py."""

    samples: list[Seconds] = Field(min_length=1)
    median: Seconds
    p10: Seconds
    p90: Seconds
    ci_low: Seconds  # 95% confidence interval of the median (distribution-free, order statistics)
    ci_high: Seconds
    # Median of each worker process's samples, one per measurement round: their spread is the
    # run-to-run noise that compare requires a change to exceed (one entry: no such estimate).
    process_medians: list[Seconds] = []
    # Samples each process contributed, in order (samples[:n0] came from the first): each round's own
    # spread is then known. Empty in files written before they were recorded.
    process_sizes: list[Size] = []
    # Per process too, in the same order (empty in files written before they were recorded): how long
    # its warm-up ran, whether the step time had stopped moving by then (null: a fixed warm-up, not
    # assessed), and how wide its median's 95% interval came out, as the larger side over the median
    # (harness/measure/window.py); null where a sample set records none (cold and CUDA samples).
    process_warmup_s: list[NonNegative] = []
    process_warmup_steady: list[bool | None] = []
    process_ci_half_widths: list[NonNegative | None] = []
    # How the samples were taken (None in files written before these were recorded):
    timer: str | None = None  # "perf_counter", "cuda-graph+events" or "cuda-events" (eager, graph not used)
    graph_used: bool | None = None  # CUDA: the samples are CUDA-graph replays; None on CPU
    graph_error: str | None = None  # CUDA: why the graph was not used, when it was asked for
    inner_reps: Size | None = None  # calls per sample: a sample is their mean (1: single calls, e.g. cold)
    flush: str | None = None  # cold samples: how caches were emptied before each one


class MaxBatch(_Model):
    """Largest batch under the memory budget, for this cell's variant, dtype and context length."""

    budget_bytes: Size
    predicted: Count  # harness.accounting.predicted_max_batch
    measured: Count | None  # largest batch whose build plus one decode step fit; None if not searched
    error_fraction: float | None  # (predicted - measured) / measured
    probes: list[dict[str, Any]] = []  # each probe: batch_size, fits, peak_bytes, status
    # ± sequences the measured value moves between identical probes: on CPU from probing the boundary
    # (measured and measured + 1) a second time; 0 on CUDA, whose allocator is deterministic
    uncertainty: Count | None = None


class Telemetry(_Model):
    """NVML readings (NVIDIA only; null elsewhere): means over the timed windows, energy over replays."""

    sm_clock_mhz: float | None = None
    memory_clock_mhz: float | None = None
    power_w: float | None = None
    temperature_c: float | None = None
    throttle_reasons: list[str] = []  # clock-event reasons seen while timing, "gpu_idle" left out
    energy_per_token_j: float | None = None  # energy counter over the energy window / tokens decoded in it
    energy_window_s: Positive | None = None  # length of that window
    energy_timer: str | None = None  # what it ran: "cuda-graph" replays of the decode step, or "eager" steps


class Check(_Model):
    """One self-check of a cell's numbers, computed when it was measured (docs/results.md, "Checks")."""

    name: str  # e.g. "bandwidth_within_peak", "graph_output_matches_eager"
    passed: bool
    detail: str  # the numbers behind the verdict, in words


Outcome = Literal["ok", "oom", "error", "timeout", "unsupported", "killed"]


class TrainStep(_Model):
    """Metric ``train_step``: one forward and backward pass over the cell's batch (batch_size sequences of
    context_len tokens, next-token cross-entropy), measured in a worker of its own (docs/results.md)."""

    status: Outcome  # as a cell's: oom is an outcome; unsupported says why in error
    error: str | None = None
    tokens: int  # batch_size * context_len: positions the step trains on
    # CUDA: allocator peak allocated over build, forward and backward; CPU: the worker's peak RSS above baseline
    peak_memory_bytes: int | None = None
    peak_reserved_bytes: int | None = None  # CUDA only
    saved_activation_bytes: int | None = None  # what autograd saved for backward, parameters left out
    kv_activation_bytes: int | None = None  # of it, the producers' K/V (MLA: latent) slots, measured
    kv_activation_bytes_expected: int  # harness.accounting.train_kv_activation_bytes


class TPRank(_Model):
    """One rank of a tensor-parallel decode measurement."""

    rank: int
    kv_cache_bytes: int  # bytes this rank's cache tensors hold
    peak_memory_bytes: int | None = None  # CUDA: allocator peak; CPU: the rank process's peak RSS above baseline


class TPMeasurement(_Model):
    """The cell's decode step sharded over ``tp`` ranks, each a process of its own (docs/results.md)."""

    tp: int
    status: Outcome
    error: str | None = None
    comm_backend: str | None = None  # torch.distributed backend: gloo (CPU) or nccl (CUDA); null for tp 1
    threads_per_rank: int | None = None  # CPU: torch threads each rank ran with (the machine's cores shared out)
    kv_heads_per_rank: int  # ceil(n_kv_heads / tp): K/V heads each rank holds per producer (MLA: the latent)
    kv_replication: float  # K/V bytes over all ranks / the unsharded model's: 1.0 while heads split evenly
    kv_cache_bytes_per_rank_expected: int | None = None  # the accounting of one rank's cache; null if unsupported
    ranks: list[TPRank] = []
    decode_latency_s: Summary | None = None  # per step, the slowest rank's time (all ranks step in lockstep)


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
    timer: str | None = None  # how the warm decode latency was timed (each Summary says its own)
    threads: Size | None = None  # CPU: torch's intra-op threads in the worker that timed it (None: not recorded)
    auto_latencies_s: dict[str, Seconds] | None = None  # backend 'auto': core-attention median per candidate
    sdpa_kernel: str | None = None  # backend sdpa: the kernel that ran (flash, efficient, cudnn, math)
    sdpa_kv_copied: bool | None = None  # backend sdpa: K/V were repeated to every query head (a copy per step)
    train_step: TrainStep | None = None  # metric train_step (opt-in); null when not measured
    tp: list[TPMeasurement] = []  # one per sweep.tp degree (opt-in); empty when not measured


class HostLoad(_Model):
    """How busy the rest of the host was while one round of a cell was timed (harness/measure/hostload.py)."""

    wall_s: NonNegative  # length of the timed windows
    other_cpu_s: NonNegative  # CPU seconds other processes used meanwhile (all CPUs)
    steal_s: NonNegative  # CPU seconds the hypervisor gave this machine's CPUs to other guests meanwhile
    cores: Positive  # CPUs of the machine
    # The bare reference loop timed in the same worker just before the cell (harness/measure/reference.py;
    # CPU only, None elsewhere and in files written before it was recorded): its median seconds per
    # call, and its p10-p90 width relative to that median.
    reference_s: Seconds | None = None
    reference_spread: NonNegative | None = None

    @property
    def other_cores(self) -> float:
        """Average number of cores other work took: other processes plus steal, over wall time."""
        return (self.other_cpu_s + self.steal_s) / self.wall_s if self.wall_s > 0 else 0.0


class Stability(_Model):
    """Whether a cell's numbers held still enough to be trusted (harness/results/stability.py)."""

    unstable: bool
    reasons: list[str] = []  # one sentence per rule that fired, with its numbers


class Placement(_Model):
    """Where one measurement round of a cell ran: which executor, node, device and process, and when."""

    executor: Literal["local", "ray"]
    node_id: str = Field(min_length=1, max_length=200)  # Ray's node id; the host name for a local run
    host: str = Field(max_length=200)  # the host name of that node
    device: str = Field(min_length=1, max_length=50)  # what the workers measured on: cpu, cuda or cuda:N
    # CUDA_VISIBLE_DEVICES as the cell's workers saw it (on Ray: the GPU Ray assigned); None where unset
    device_id: str | None = Field(default=None, max_length=200)
    device_uuid: str | None = Field(default=None, max_length=200)  # the GPU's UUID; None on a CPU
    pid: Size  # the process that ran the round's workers (each worker is a child of it)
    started_utc: UtcTime
    finished_utc: UtcTime
    attempt: Size = 1  # 2: an earlier attempt was lost with its Ray worker or node, and this one ran it again
    retried_after: str | None = None  # how that earlier attempt ended
    peak_bandwidth_gbps: Positive | None = None  # the node's measured peak this round's fractions divide by


class CellPrediction(_Model):
    """What the target's cost model predicted for this cell before it was measured, and how far off it was
    (harness/predict/): from its calibration (results/<target>/calibration.json) or, where it has none,
    from vendor figures. Error fractions are predicted / measured − 1."""

    source: Literal["calibration", "vendor"]
    fitted_utc: str | None = None  # when the calibration was fitted (None for vendor figures)
    decode_latency_s: Seconds | None = None  # warm decode step
    attention_latency_s: Seconds | None = None  # warm core attention
    peak_memory_bytes: Count | None = None
    max_batch: Count | None = None  # under the scenario's memory budget
    decode_error_fraction: float | None = None
    attention_error_fraction: float | None = None
    max_batch_error_fraction: float | None = None


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
    # What a producer caches, beside the heads above (absent in results written before these kinds).
    attention: str | None = None  # mha | gqa | mqa | mla
    spelling: str | None = None  # the variant's name-grammar spelling (harness/variants.py)
    layer_windows: list[Size | None] | None = None  # per layer; null: every layer global
    kv_dtype: str | None = None  # 8-bit cache dtype; null: the cell's dtype
    kv_scale: str | None = None  # scale granularity of an 8-bit cache: tensor | head
    # kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim, v_head_dim, q_lora_rank
    mla: dict[str, Size | None] | None = None
    kv_bytes_per_sequence: Size | None = None  # cache bytes one sequence holds at this context (windows counted)
    page_size: Size | None = None  # positions per page of a paged cache (sweep.page_size); null: contiguous
    length_mix: str | None = None  # how a ragged batch's contexts are spread (sweep.lengths); null: all context_len
    context_lens: list[Size] | None = None  # a ragged batch's context per sequence, context_len the longest
    q_len: Size | None = None  # new tokens per sequence per step (sweep.q_len) when more than 1; null: one
    prefill: bool | None = None  # true: the step is the whole context_len prompt over an empty cache (sweep.prefill)
    chunk: Size | None = None  # a chunked-prefill step's chunk (sweep.prefill_chunk): sequence 0's prompt tokens
    # timeout: no answer within measure.cell_timeout_s; unsupported: the backend cannot run this variant on this
    # device (the error says why), not measured; killed: the worker was ended by SIGKILL without a word (the
    # error names the likely cause: the out-of-memory killer, or another process)
    status: Outcome
    error: str | None = None
    elapsed_s: NonNegative
    rounds_done: Size = 1  # measurement rounds finished for this cell (see measure.rounds)
    metrics: CellMetrics | None = None
    checks: list[Check] = []  # self-checks of the numbers (docs/results.md, "Checks")
    # Names of the checks that failed: the cell's numbers are suspect (its status stays "ok"), and
    # the claims check and compare treat it as inconclusive.
    checks_failed: list[str] = []
    host_load: list[HostLoad] = []  # one per measurement round (CPU hosts; empty where unknown)
    stability: Stability | None = None  # assessed at the end of the run, against the run's other cells
    placement: list[Placement] = []  # one per measurement round, in order (empty in files written before)
    prediction: CellPrediction | None = None  # the cost model's, with its error (absent in files written before)

    @property
    def unstable(self) -> bool:
        return self.stability is not None and self.stability.unstable

    @model_validator(mode="after")
    def _failed_checks_listed(self) -> CellResult:
        failed = [check.name for check in self.checks if not check.passed]
        if self.checks_failed != failed:
            raise ValueError(f"checks_failed {self.checks_failed} does not list the failed checks {failed}")
        return self

    @property
    def key(self) -> CellKey:
        return CellKey(self.variant, self.batch_size, self.context_len, self.dtype, self.backend)


class ScenarioRef(_Model):
    name: str
    source: str
    sha256: str
    description: str = ""
    model: dict[str, Any]  # the scenario's [model] table, resolved with defaults
    measure: dict[str, Any]
    baseline: str | None = None  # [report] baseline: the variant the report's verdict compares with; None: the first


class GitInfo(_Model):
    commit: str | None
    short: str | None
    dirty: bool | None
    branch: str | None = None


class Pairing(_Model):
    """One side of an interleaved comparison (``attnbench ab``): two revisions measured round by round."""

    session: str  # shared by the two files of one comparison
    role: Literal["base", "head"]
    revision: str  # as given on the command line ("." for the working tree)
    commit: str | None
    dirty: bool  # the working tree with uncommitted changes
    partner_revision: str
    partner_commit: str | None
    rounds: Size  # the most rounds a cell gets (a cell stops early once no latency of it can change)
    # the confidence of each latency's median-ratio interval (family-wise over the comparison's latencies:
    # harness/stats/paired.py); None in files written before it was recorded, which were read at 95%
    confidence: float | None = Field(None, gt=0, lt=1)
    # per cell label ("H64-MHA b1 ctx512 float32 sdpa"): which side went first in each round, e.g. "BA AB AB BA"
    orders: dict[str, str] = {}


class Shard(_Model):
    """The part of a scenario's cells one run measured (``attnbench run --shard K/N``)."""

    index: Size  # K, from 1
    count: Size  # N

    @model_validator(mode="after")
    def _index_within_count(self) -> Shard:
        if self.index > self.count:
            raise ValueError(f"shard {self.index} of {self.count}: the index exceeds the count")
        return self

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"


class MergedPart(_Model):
    """One result file that ``attnbench merge`` took cells from."""

    file: str  # its name
    shard: Shard | None = None
    commit: str | None
    started_utc: str
    finished_utc: str | None
    cells: Count  # cells taken from it


class Interruption(_Model):
    """A stop signal that ended a run before it finished; ``run --resume`` continues it."""

    utc: str  # when it arrived, e.g. 2026-11-30T01:23:45Z
    signal: str = Field(pattern=r"^SIG[A-Z0-9]+$")  # SIGINT, SIGTERM or SIGHUP
    cells_done: Count  # cells in the file then (each with at least one finished round)


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
    pairing: Pairing | None = None  # set when this run is one side of an interleaved comparison
    interruptions: list[Interruption] = []  # every stop signal that ended this run, oldest first
    shard: Shard | None = None  # set when this run measured one shard of the scenario's cells
    merged_from: list[MergedPart] = []  # set by attnbench merge: the files whose cells this one holds
    # the earlier result (a file name in this file's folder) whose calls per warm sample this run's cells
    # timed with, instead of calibrating their own: runs that share it time each cell alike
    inner_reps_from: str | None = None
    cells: list[CellResult] = []
