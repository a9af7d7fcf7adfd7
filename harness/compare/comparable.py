"""What may be compared at all: the same hardware, measured the same way, with numbers that held still.

A difference between two results is the code's only when everything else is equal. Three levels:

- **Hardware.** Results of different targets are never compared without ``--allow-cross-target``;
  neither are results under one target id whose fingerprints differ in what decides speed (CPU
  family, model and stepping, caches, instruction sets, cores; GPU name, memory, clocks, power limit),
  which files written before target ids carried a CPU signature may share.
- **Settings.** Two runs of a scenario with different models, quick flags or timing settings measure
  different things: all their cells are *not comparable*.
- **Cells.** A cell unstable on either side is *unstable* (measure it again; in an interleaved
  comparison only a busy host counts, since the pairing cancels drift), one that failed a
  self-check *inconclusive*, cells that ran other code (another backend resolved by ``auto``, another
  SDPA kernel) *not comparable*, and cells whose sides timed a latency another way (another timer,
  another number of calls per sample) *measured differently*.
"""

from __future__ import annotations

from typing import Any

from harness.compare.thresholds import LATENCY_METRICS
from harness.results import stability
from harness.results.schema import CellResult, RunResult

# Fingerprint fields that decide speed on each kind of device; compared where both sides have them.
CPU_SPEED_FIELDS = (
    "cpu_model",
    "cpu_family",
    "cpu_model_number",
    "cpu_stepping",
    "cpu_isa",
    "logical_cores",
    "cpu_l1d_cache_bytes",
    "cpu_l2_cache_bytes",
    "cpu_l3_cache_bytes",
)
GPU_SPEED_FIELDS = (
    "device_name",
    "gpu_memory_total_bytes",
    "sm_count",
    "max_sm_clock_mhz",
    "max_memory_clock_mhz",
    "application_sm_clock_mhz",
    "application_memory_clock_mhz",
    "power_limit_w",
)
# The verdict of a cell whose sides timed a latency by another method (another timer, or another number of
# calls per sample): like "not comparable", never a change, but one that measuring again alike resolves.
MEASURED_DIFFERENTLY = "measured differently"
# Measure settings that change what a cell's samples are; the others (rounds, time limits, the energy
# window) change how many there are or what else is read, not the latencies themselves.
SAMPLE_SETTINGS = (
    "warmup_s",
    "warmup_max_s",
    "min_time_s",
    "target_ci",
    "max_time_s",
    "min_samples",
    "max_samples",
    "cold",
    "seed",
    "memory_budget",
)


def hardware_differences(base: RunResult, head: RunResult) -> list[str]:
    """Speed-deciding fingerprint fields that differ between two results, as ``field: base vs head``."""
    fields = GPU_SPEED_FIELDS if base.device == head.device == "cuda" else CPU_SPEED_FIELDS
    out = []
    for field in fields:
        a, b = base.environment.get(field), head.environment.get(field)
        if a is not None and b is not None and a != b:
            out.append(f"{field}: {_short(a)} vs {_short(b)}")
    return out


def _short(value: Any) -> str:
    text = ", ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def setting_differences(base: RunResult, head: RunResult) -> str | None:
    """Why two runs of one scenario measured different things, or None."""
    reasons = []
    if base.quick != head.quick:
        reasons.append(f"--quick {'at base' if base.quick else 'at head'} only")
    if base.scenario.model != head.scenario.model:
        changed = sorted(k for k in {*base.scenario.model, *head.scenario.model}
                         if base.scenario.model.get(k) != head.scenario.model.get(k))  # fmt: skip
        reasons.append(f"model differs ({', '.join(changed)})")
    changed = [
        f"{key} {base.scenario.measure.get(key)} vs {head.scenario.measure.get(key)}"
        for key in SAMPLE_SETTINGS
        if base.scenario.measure.get(key) != head.scenario.measure.get(key)
    ]
    if changed:
        reasons.append(f"measure settings differ ({', '.join(changed)})")
    return "; ".join(reasons) or None


def timed_differently(base: CellResult, head: CellResult) -> list[str]:
    """How the two sides of a cell timed a latency differently, one phrase per latency: another timer (or a
    CUDA graph at one side only), or another number of calls per sample (a sample is the mean of that many
    back-to-back calls, and two counts give two different means of one code). Fields a file does not
    record (written before they were) differ from nothing."""
    out = []
    for metric in LATENCY_METRICS:
        a, b = (None if cell.metrics is None else getattr(cell.metrics, metric) for cell in (base, head))
        if a is None or b is None:
            continue
        if a.timer is not None and b.timer is not None and (a.timer, a.graph_used) != (b.timer, b.graph_used):
            out.append(f"{metric} timed with {a.timer} at base, {b.timer} at head")
        elif a.inner_reps is not None and b.inner_reps is not None and a.inner_reps != b.inner_reps:
            out.append(f"{metric} with {a.inner_reps} calls per sample at base, {b.inner_reps} at head")
    return out


def _unstable_reason(cell: CellResult, paired: bool) -> str | None:
    """The first reason the cell's numbers did not hold still (harness/results/stability.py), if any;
    in an interleaved comparison only the host's own contention counts (the pairing cancels drift)."""
    if paired:
        return next(iter(stability.paired_reasons(cell)), None)
    if cell.unstable and cell.stability is not None and cell.stability.reasons:
        return cell.stability.reasons[0]
    return None


def why_not_compared(base: CellResult, head: CellResult, paired: bool = False) -> tuple[str, str] | None:
    """(verdict, reason) when two ``ok`` cells must not be compared, else None.

    An unstable cell (its numbers did not hold still: harness/results/stability.py; with ``paired``,
    the sides of one interleaved comparison, only because its host was busy) is reported as
    ``unstable``, to be measured again; a cell that failed a self-check makes the comparison
    inconclusive (its numbers are suspect); cells that ran other code (another backend resolved by
    ``auto``, another SDPA kernel) are not comparable, and cells timed another way (another timer, another
    number of calls per sample: :func:`timed_differently`) are *measured differently*: a difference
    between them is the method's, not the code's.
    """
    unstable = [
        f"{side}: {reason}"
        for side, cell in (("base", base), ("head", head))
        if (reason := _unstable_reason(cell, paired)) is not None
    ]
    if unstable:
        return "unstable", f"{'; '.join(unstable)} (measure it again)"
    failed = [
        f"{side} {', '.join(dict.fromkeys(cell.checks_failed))}"
        for side, cell in (("base", base), ("head", head))
        if cell.checks_failed
    ]
    if failed:
        return "inconclusive", f"failed self-checks ({'; '.join(failed)})"
    base_backend, head_backend = base.backend_used or base.backend, head.backend_used or head.backend
    if base_backend != head_backend:
        return "not comparable", f"ran backend {base_backend} at base, {head_backend} at head"
    kernels = [None if c.metrics is None else c.metrics.sdpa_kernel for c in (base, head)]
    if None not in kernels and kernels[0] != kernels[1]:
        return "not comparable", f"ran SDPA kernel {kernels[0]} at base, {kernels[1]} at head"
    timed = timed_differently(base, head)
    if timed:
        return MEASURED_DIFFERENTLY, "; ".join(timed)
    return None
