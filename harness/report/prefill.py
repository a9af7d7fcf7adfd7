"""The report's prefill section: each prefill cell's time to first token beside its cost per step.

A prefill cell (``prefill`` true, harness/scenario/serving.py) runs the whole prompt of ``context_len`` tokens
per sequence through the stack over an empty cache in one step; its decode latency is the time to first
token. Pure functions from a result to markdown.
"""

from __future__ import annotations

from tabulate import tabulate

from harness.report.tables import MISSING, TABLEFMT, fmt_ms
from harness.results.schema import CellResult, RunResult
from harness.units import format_bytes


def _row(cell: CellResult) -> list[str]:
    coords = [cell.variant, cell.backend, str(cell.context_len), str(cell.batch_size)]
    metrics = cell.metrics
    if metrics is None or cell.status != "ok" or metrics.decode_latency_s is None:
        return [*coords, cell.status, MISSING, *([MISSING] * 4)]
    seconds = metrics.decode_latency_s.median
    tokens = cell.batch_size * cell.context_len
    return [
        *coords,
        fmt_ms(seconds),
        f"{tokens / seconds:,.0f}",
        format_bytes(metrics.bytes_per_step),
        f"{metrics.flops_per_step / 1e9:.2f}",
        f"{metrics.flops_per_step / metrics.bytes_per_step:.1f}",
        f"{metrics.flops_per_step / seconds / 1e9:.1f}",
    ]


def prefill_table(result: RunResult) -> str | None:
    """One row per prefill cell the backend ran; None when the run has none."""
    cells = [cell for cell in result.cells if cell.prefill and cell.status != "unsupported"]
    if not cells:
        return None
    headers = [
        "variant",
        "backend",
        "prompt",
        "batch",
        "TTFT ms",
        "prompt tokens/s",
        "bytes/step",
        "GFLOP/step",
        "FLOP/byte",
        "GFLOP/s",
    ]
    return tabulate([_row(cell) for cell in cells], headers=headers, tablefmt=TABLEFMT, disable_numparse=True)


def prefill_section(result: RunResult) -> list[str]:
    """The section's markdown lines; nothing for a run without prefill cells."""
    table = prefill_table(result)
    if table is None:
        return []
    return [
        "### Prefill",
        "",
        "Each prefill cell puts a prompt of `prompt` tokens per sequence through the whole stack over an empty "
        "cache in one step, filling it: the median of that step is the time to first token (TTFT). Beside it "
        "the prompt tokens per second (batch · prompt over TTFT), the ideal bytes and FLOPs of the step, their "
        "ratio and the FLOP/s achieved (FLOPs per step over TTFT).",
        "",
        table,
        "",
    ]
