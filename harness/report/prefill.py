"""The report's prefill section: each prefill cell's time to first token beside its cost per step.

A prefill cell (``prefill`` true, harness/scenario/serving.py) runs the whole prompt of ``context_len`` tokens
per sequence through the stack over an empty cache in one step; its decode latency is the time to first
token. A chunked-prefill cell (``chunk`` set, harness/model/chunked.py) runs a chunk of sequence 0's prompt beside
one decode token of each other sequence in one packed step; it is shown beside the plain decode step of the same
variant and layout (``<name>`` for ``<name>-chunk<C>``), whose sequences it stalls for the chunk's extra time.
Pure functions from a result to markdown.
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


def _decode_partner(cell: CellResult, cells: list[CellResult]) -> CellResult | None:
    name = cell.variant.removesuffix(f"-chunk{cell.chunk}")
    coords = (cell.batch_size, cell.context_len, cell.dtype, cell.backend)
    return next(
        (c for c in cells if c.variant == name and (c.batch_size, c.context_len, c.dtype, c.backend) == coords), None
    )


def _median_ms(cell: CellResult | None) -> str:
    if cell is None or cell.status != "ok" or cell.metrics is None or cell.metrics.decode_latency_s is None:
        return MISSING if cell is None else cell.status
    return fmt_ms(cell.metrics.decode_latency_s.median)


def chunked_table(result: RunResult) -> str | None:
    """One row per chunked-prefill cell the backend ran, with its decode step beside it; None when there are none."""
    cells = [cell for cell in result.cells if cell.chunk is not None and cell.status != "unsupported"]
    if not cells:
        return None
    body = []
    for cell in cells:
        metrics = cell.metrics
        row = [cell.variant, str(cell.chunk), cell.backend, str(cell.context_len), str(cell.batch_size)]
        row += [_median_ms(cell), _median_ms(_decode_partner(cell, result.cells))]
        if metrics is None:
            row += [MISSING] * 3
        else:
            ratio = metrics.flops_per_step / metrics.bytes_per_step
            row += [format_bytes(metrics.bytes_per_step), f"{metrics.flops_per_step / 1e9:.2f}", f"{ratio:.1f}"]
        body.append(row)
    headers = ["variant", "chunk", "backend", "context", "batch", "step ms", "decode step ms", "bytes/step"]
    headers += ["GFLOP/step", "FLOP/byte"]
    return tabulate(body, headers=headers, tablefmt=TABLEFMT, disable_numparse=True)


def prefill_section(result: RunResult) -> list[str]:
    """The section's markdown lines; nothing for a run without prefill or chunked-prefill cells."""
    return _prefill_lines(result) + _chunked_lines(result)


def _chunked_lines(result: RunResult) -> list[str]:
    table = chunked_table(result)
    if table is None:
        return []
    return [
        "### Chunked prefill",
        "",
        "Each chunked-prefill step runs a chunk of `chunk` prompt tokens of one sequence beside one decode token "
        "of each of the batch's other sequences, all at `context`, in one packed step (weights read once for "
        "all of them): its median beside the plain decode step of the same variant and layout, which is what the "
        "decoding sequences would have taken without the chunk; then the step's ideal bytes, FLOPs and their "
        "ratio.",
        "",
        table,
        "",
    ]


def _prefill_lines(result: RunResult) -> list[str]:
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
