"""From a worker's raw measurements to a cell's metrics: summaries, bandwidths, throughput and checks.

Pure functions (no torch): the runner calls them after every worker returns, and again after each
later round pools more samples in. Definitions are in docs/design.md ("What is measured").
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from harness import accounting
from harness.measure import checks
from harness.results.schema import CellMetrics, Check, Summary
from harness.results.summary import summarize
from harness.scenario import Cell, LoadedScenario

# Checks the parent derives from the result (recomputed whenever a round pools more samples in).
DERIVED_CHECKS = frozenset(
    {
        checks.BANDWIDTH_WITHIN_PEAK,
        checks.PEAK_WITHIN_VENDOR,
        checks.COLD_NOT_FASTER,
        checks.KV_CACHE_AS_ACCOUNTED,
        checks.MEMORY_HOLDS_WEIGHTS_AND_KV,
        checks.TRAIN_KV_AS_ACCOUNTED,
        checks.TRAIN_PEAK_HOLDS_ACTIVATIONS,
        checks.TP_KV_AS_ACCOUNTED,
    }
)
ROUNDS_TIMED_ALIKE = "rounds_timed_alike"


def pooled_summary(previous: Summary | None, sample_set: dict[str, Any]) -> tuple[Summary, Check | None]:
    """``previous`` (earlier rounds) with one more process's sample set pooled in.

    The summary's statistics are over all samples; ``process_medians`` gains this process's median.
    How the samples were taken (timer, graph, calls per sample) comes from the first round; a later
    round taken differently is pooled all the same but fails the returned check, since its samples
    are not like the others.
    """
    seconds = [float(s) for s in sample_set["seconds"]]
    how = {key: sample_set.get(key) for key in ("timer", "graph_used", "graph_error", "inner_reps", "flush")}
    medians = [] if previous is None else previous.process_medians or [previous.median]
    sizes = [] if previous is None else previous.process_sizes or [len(previous.samples)]
    pooled = summarize(([] if previous is None else previous.samples) + seconds)
    check = None
    if previous is not None:
        before = {"timer": previous.timer, "graph_used": previous.graph_used, "inner_reps": previous.inner_reps}
        differs = {key: (value, how[key]) for key, value in before.items() if value != how[key]}
        if differs:
            text = ", ".join(f"{key} {old} then {new}" for key, (old, new) in differs.items())
            check = Check(name=ROUNDS_TIMED_ALIKE, passed=False, detail=f"round {len(medians) + 1}: {text}")
        how = {key: getattr(previous, key) for key in how}
    update = {
        "process_medians": [*medians, statistics.median(seconds)],
        "process_sizes": [*sizes, len(seconds)],
        **_round_record(previous, sample_set),
    }
    return pooled.model_copy(update=update | how), check


def _round_record(previous: Summary | None, sample_set: dict[str, Any]) -> dict[str, list[Any]]:
    """The per-process warm-up and interval lists with this round's entries appended: none when this round
    records no warm-up, or when an earlier round recorded none (the lists would no longer line up by round)."""
    warmup_s, width = sample_set.get("warmup_s"), sample_set.get("ci_half_width")
    rounds_before = 0 if previous is None else len(previous.process_medians or [previous.median])
    if warmup_s is None or (previous is not None and len(previous.process_warmup_s) != rounds_before):
        return {}
    this_round = {
        "process_warmup_s": float(warmup_s),
        "process_warmup_steady": sample_set.get("warmup_steady"),
        "process_ci_half_widths": float(width) if width is not None and math.isfinite(width) else None,
    }
    return {field: [*(getattr(previous, field) if previous else []), value] for field, value in this_round.items()}


def apply_bandwidths(metrics: CellMetrics, batch_size: int, peak_gbps: float | None) -> None:
    """Set the bandwidth and throughput fields from the latency medians, in place.

    Bandwidth divides by the cold latency where there is one: warm repeats can run partly from
    on-chip caches and report a bandwidth no DRAM gives (docs/design.md, "Timing"). Throughput is
    what a serving loop sees, back-to-back steps: the warm median.
    """
    decode = metrics.decode_latency_cold_s or metrics.decode_latency_s
    attention = metrics.attention_latency_cold_s or metrics.attention_latency_s
    if decode is not None or attention is not None:
        cold = metrics.decode_latency_cold_s or metrics.attention_latency_cold_s
        metrics.bandwidth_basis = "cold" if cold else "warm"
    if decode is not None:
        metrics.bandwidth_gbps = metrics.bytes_per_step / decode.median / 1e9
    if metrics.decode_latency_s is not None:
        metrics.tokens_per_s = batch_size / metrics.decode_latency_s.median
    if attention is not None:
        metrics.attention_bandwidth_gbps = metrics.attention_bytes_per_step / attention.median / 1e9
    if peak_gbps:
        if metrics.bandwidth_gbps is not None:
            metrics.bandwidth_fraction = metrics.bandwidth_gbps / peak_gbps
        if metrics.attention_bandwidth_gbps is not None:
            metrics.attention_bandwidth_fraction = metrics.attention_bandwidth_gbps / peak_gbps


def derive_metrics(
    loaded: LoadedScenario, cell: Cell, measured: dict[str, Any], peak_gbps: float | None
) -> CellMetrics:
    """Combine a worker's measurements with the accounting into the cell's metrics.

    ``measured`` holds CellMetrics fields and, under ``samples``, a sample set per latency field.
    """
    model = loaded.scenario.model
    v, dtype, batch, context = cell.variant, cell.dtype, cell.batch_size, cell.context_len
    fields = {k: measured.get(k) for k in CellMetrics.model_fields if k in measured}
    for metric, sample_set in measured.get("samples", {}).items():
        fields[metric], _ = pooled_summary(None, sample_set)
    metrics = CellMetrics(
        **fields,
        bytes_per_step=accounting.bytes_per_step(model, v, dtype, batch, context),
        attention_bytes_per_step=accounting.attention_bytes_per_step(v, dtype, batch, context),
        flops_per_step=accounting.flops_per_step(model, v, batch, context),
        kv_cache_bytes_expected=accounting.kv_cache_bytes(v, dtype, batch, context),
    )
    apply_bandwidths(metrics, batch, peak_gbps)
    return metrics


def pool_round(
    metrics: CellMetrics, samples: dict[str, dict[str, Any]], batch_size: int, peak_gbps: float | None
) -> tuple[CellMetrics, list[Check]]:
    """``metrics`` with a later round's sample sets pooled in and bandwidths recomputed."""
    pooled = metrics.model_copy()
    raised: list[Check] = []
    for metric, sample_set in samples.items():
        summary, check = pooled_summary(getattr(pooled, metric), sample_set)
        setattr(pooled, metric, summary)
        if check is not None:
            raised.append(check.model_copy(update={"detail": f"{metric}: {check.detail}"}))
    apply_bandwidths(pooled, batch_size, peak_gbps)
    return pooled, raised


def inner_reps(metrics: CellMetrics) -> dict[str, int]:
    """Calls per warm sample of each timed metric, for later rounds to repeat (pyperf keeps its loops
    calibrated once, likewise): their samples are then means over as many calls as the first round's."""
    out = {}
    for metric, field in (("decode", "decode_latency_s"), ("attention", "attention_latency_s")):
        summary = getattr(metrics, field)
        if summary is not None and summary.inner_reps is not None:
            out[metric] = summary.inner_reps
    return out


def cell_checks(
    worker: list[Check],
    metrics: CellMetrics | None,
    *,
    loaded: LoadedScenario,
    cell: Cell,
    peak_gbps: float | None,
    vendor_gbps: float | None,
    cache_bytes: int | None,
    device: str,
) -> list[Check]:
    """The worker's checks followed by those derived from the metrics (recomputed from scratch)."""
    kept = [check for check in worker if check.name not in DERIVED_CHECKS]
    if metrics is None:
        return kept
    weights = accounting.weight_bytes(loaded.scenario.model, cell.variant, cell.dtype)
    derived = checks.derived_checks(
        metrics,
        peak_gbps=peak_gbps,
        vendor_gbps=vendor_gbps,
        cache_bytes=cache_bytes,
        weight_bytes=weights,
        device=device,
    )
    return kept + derived
