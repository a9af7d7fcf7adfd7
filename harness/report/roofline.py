"""The report's roofline section: each cell's bandwidth and FLOP/s as fractions of the target's two peaks, and
per variant the q_len at which a step stops being memory-bound, predicted and measured.

A step is memory-bound while its bytes take longer at the peak bandwidth than its FLOPs at the peak matmul
rate (Williams et al. 2009, "Roofline"): bytes / B > FLOPs / F. From the accounting (harness/accounting.py)
the predicted crossover is the smallest q_len whose step of q_len new tokens per sequence has
FLOPs / F >= bytes / B, with B the measured peak bandwidth (harness/measure/bandwidth.py) and F the
measured matmul peak of the cell's dtype (harness/measure/matmul_peak.py). The measured crossover reads the
step latencies of the same variant at q_len 1 and the largest q_len measured: the FLOP rate the latency's
growth between them shows, F_step = (FLOPs(q_max) - FLOPs(1)) / (t(q_max) - t(1)), and the smallest q_len
whose FLOPs at that rate take as long as the one-token step, FLOPs(q) / F_step >= t(1). No growth measured:
the crossover lies beyond q_max.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from pydantic import ValidationError
from tabulate import tabulate

from harness import accounting
from harness.predict.features import variant_of
from harness.report.tables import MISSING, TABLEFMT
from harness.results.schema import CellResult, RunResult
from harness.scenario.schema import ModelSpec
from harness.variants import Variant

# Largest q_len the crossover search looks at; a step still memory-bound there is shown as beyond it.
MAX_Q_LEN = 4096


def matmul_peak_tflops(result: RunResult, dtype: str) -> float | None:
    """The target's measured matmul peak for ``dtype``, TFLOP/s, from the result's environment; None if absent."""
    peak = result.environment.get("peak_matmul")
    tflops = peak.get("tflops") if isinstance(peak, dict) else None
    value = tflops.get(dtype) if isinstance(tflops, dict) else None
    return float(value) if isinstance(value, int | float) and value > 0 else None


def _step_seconds(cell: CellResult) -> float | None:
    """The decode-step median the bandwidth divides by (cold where measured), or None."""
    metrics = cell.metrics
    if cell.status != "ok" or metrics is None:
        return None
    summary = metrics.decode_latency_cold_s or metrics.decode_latency_s
    return None if summary is None else summary.median


def flops_fraction(result: RunResult, cell: CellResult) -> float | None:
    """The cell's achieved FLOP/s (FLOPs per step over the step's median) over the matmul peak of its dtype."""
    seconds, peak = _step_seconds(cell), matmul_peak_tflops(result, cell.dtype)
    if seconds is None or peak is None or cell.metrics is None:
        return None
    return cell.metrics.flops_per_step / seconds / (peak * 1e12)


def _percent(value: float | None) -> str:
    return MISSING if value is None else f"{100 * value:.1f}%"


def fractions_table(result: RunResult) -> str | None:
    """Both fractions of every measured cell; None when the result holds no matmul peak or no measured cell."""
    cells = [cell for cell in result.cells if _step_seconds(cell) is not None]
    if not cells or not any(matmul_peak_tflops(result, cell.dtype) for cell in cells):
        return None
    body = []
    for cell in cells:
        metrics, seconds = cell.metrics, _step_seconds(cell)
        assert metrics is not None and seconds is not None
        body.append(
            [
                cell.variant,
                cell.backend,
                str(cell.context_len),
                str(cell.batch_size),
                f"{metrics.flops_per_step / metrics.bytes_per_step:.1f}",
                _percent(metrics.bandwidth_fraction),
                f"{metrics.flops_per_step / seconds / 1e9:.1f}",
                _percent(flops_fraction(result, cell)),
            ]
        )
    headers = ["variant", "backend", "context", "batch", "FLOP/byte", "bandwidth % of peak", "GFLOP/s"]
    headers += ["FLOP/s % of matmul peak"]
    return tabulate(body, headers=headers, tablefmt=TABLEFMT, disable_numparse=True)


def first_q_len(bound: Callable[[int], bool]) -> int | None:
    """The smallest q_len in 1 .. MAX_Q_LEN for which ``bound`` holds, by bisection (``bound`` holds from some q_len
    on); None when it holds nowhere up to MAX_Q_LEN."""
    if not bound(MAX_Q_LEN):
        return None
    low, high = 1, MAX_Q_LEN
    while low < high:
        middle = (low + high) // 2
        if bound(middle):
            high = middle
        else:
            low = middle + 1
    return low


def _at_q(variant: Variant, q_len: int) -> Variant:
    return dataclasses.replace(variant, q_len=q_len)


def predicted_crossover(
    model: ModelSpec, variant: Variant, cell: CellResult, peak_gbps: float, tflops: float
) -> int | None:
    """The smallest q_len whose step's FLOPs at the matmul peak take as long as its bytes at the peak bandwidth."""

    def compute_bound(q_len: int) -> bool:
        v = _at_q(variant, q_len)
        flops = accounting.flops_per_step(model, v, cell.batch_size, cell.context_len)
        nbytes = accounting.bytes_per_step(model, v, cell.dtype, cell.batch_size, cell.context_len)
        return flops / (tflops * 1e12) >= nbytes / (peak_gbps * 1e9)

    return first_q_len(compute_bound)


def measured_crossover(model: ModelSpec, variant: Variant, cell: CellResult, steps: dict[int, float]) -> str:
    """The crossover the latencies of q_len 1 and the largest q_len measured show (module docstring)."""
    q_max = max(steps)
    t_one, t_max = steps[1], steps[q_max]
    flops_one = accounting.flops_per_step(model, variant, cell.batch_size, cell.context_len)
    flops_max = accounting.flops_per_step(model, _at_q(variant, q_max), cell.batch_size, cell.context_len)
    if t_max <= t_one:
        return f"> {q_max}"
    rate = (flops_max - flops_one) / (t_max - t_one)  # FLOP/s the step's growth shows

    def compute_bound(q_len: int) -> bool:
        flops = accounting.flops_per_step(model, _at_q(variant, q_len), cell.batch_size, cell.context_len)
        return flops / rate >= t_one

    found = first_q_len(compute_bound)
    return f"> {MAX_Q_LEN}" if found is None else str(found)


def _multi_token_steps(cell: CellResult, cells: list[CellResult]) -> dict[int, float]:
    """Step medians by q_len of ``cell`` (a one-token cell) and its measured multi-token forms."""
    coords = (cell.batch_size, cell.context_len, cell.dtype, cell.backend)
    steps: dict[int, float] = {}
    for other in cells:
        seconds = _step_seconds(other)
        if seconds is None or (other.batch_size, other.context_len, other.dtype, other.backend) != coords:
            continue
        if other.variant == cell.variant:
            steps[1] = seconds
        elif other.q_len is not None and other.variant == f"{cell.variant}-T{other.q_len}":
            steps[other.q_len] = seconds
    return steps


def crossover_table(result: RunResult) -> str | None:
    """Per one-token cell with a measured multi-token form: the predicted and measured crossover q_len."""
    try:
        model = ModelSpec.model_validate(result.scenario.model)
    except ValidationError:
        return None
    peak_gbps = result.peak_bandwidth_gbps
    body = []
    for cell in result.cells:
        plain = cell.q_len is None and not cell.prefill and cell.chunk is None and cell.length_mix is None
        tflops = matmul_peak_tflops(result, cell.dtype)
        if not plain or tflops is None or not peak_gbps:
            continue
        steps = _multi_token_steps(cell, result.cells)
        if 1 not in steps or len(steps) < 2:
            continue
        variant = variant_of(cell)
        predicted = predicted_crossover(model, variant, cell, peak_gbps, tflops)
        coords = [cell.variant, cell.backend, str(cell.context_len), str(cell.batch_size)]
        measured = ", ".join(str(q) for q in sorted(steps))
        body.append(
            [
                *coords,
                f"> {MAX_Q_LEN}" if predicted is None else str(predicted),
                measured_crossover(model, variant, cell, steps),
                measured,
            ]
        )
    if not body:
        return None
    headers = ["variant", "backend", "context", "batch", "predicted crossover q_len", "measured crossover q_len"]
    headers += ["q_len measured"]
    return tabulate(body, headers=headers, tablefmt=TABLEFMT, disable_numparse=True)


def roofline_section(result: RunResult) -> list[str]:
    """The section's markdown lines; nothing for a result without a matmul peak."""
    fractions = fractions_table(result)
    if fractions is None:
        return []
    lines = [
        "### Roofline: bandwidth and FLOP/s of the peaks",
        "",
        "Each measured cell's FLOPs per ideal byte, its achieved bandwidth as a share of the measured peak "
        "bandwidth, and its achieved FLOP/s (FLOPs per step over the step's median) as a share of the measured "
        "matmul peak of its dtype (`environment.peak_matmul`).",
        "",
        fractions,
        "",
    ]
    crossover = crossover_table(result)
    if crossover is not None:
        lines += [
            "Where a step of several new tokens per sequence stops being memory-bound: predicted from the "
            "accounting, the smallest q_len whose FLOPs at the matmul peak take as long as its bytes at the peak "
            "bandwidth; measured, the smallest q_len whose FLOPs, at the rate the step latency's growth from "
            "q_len 1 to the largest measured shows, take as long as the one-token step (beyond the largest "
            "measured when the latency did not grow).",
            "",
            crossover,
            "",
        ]
    return lines
