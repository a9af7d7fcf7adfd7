"""The KV-cache savings table: every variant of a run ranked by what its cache costs per token at each context.

Pure functions from a result to markdown. A variant's cache per sequence counts each windowed
layer's min(context + 1, window) positions and an 8-bit cache's one byte per element (the
``kv_bytes_per_sequence`` a cell records; older results without it are full-attention caches of
``kv_bytes_per_token · (context + 1)``). Beside it: the max batch under the memory budget and the
median decode latency the run measured, so that a saving can be weighed against its cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tabulate import tabulate

from harness.report.tables import MISSING, TABLEFMT, fmt_ms
from harness.results.schema import CellResult, RunResult
from harness.units import format_bytes


@dataclass(frozen=True)
class Row:
    """One variant (with its dtype and backend) at one context."""

    variant: str
    spelling: str
    dtype: str
    backend: str
    kv_bytes_per_sequence: int
    kv_bytes_per_token: float  # per cached token at this context: per sequence / (context + 1)
    max_batch: str  # "predicted (measured)", or what is known
    decode_ms: dict[int, str]  # batch size -> median decode latency, or the cell's status


def kv_per_sequence(cell: CellResult) -> int:
    """Cache bytes one sequence holds at the cell's context."""
    if cell.kv_bytes_per_sequence is not None:
        return cell.kv_bytes_per_sequence
    return cell.kv_bytes_per_token * (cell.context_len + 1)


def _max_batch(cells: Sequence[CellResult]) -> str:
    for cell in cells:
        if cell.metrics is not None and cell.metrics.max_batch is not None:
            found = cell.metrics.max_batch
            measured = "" if found.measured is None else f" ({found.measured} measured)"
            return f"{found.predicted}{measured}"
    return MISSING


def _decode(cell: CellResult) -> str:
    if cell.status != "ok":
        return cell.status
    summary = None if cell.metrics is None else cell.metrics.decode_latency_s
    return MISSING if summary is None else fmt_ms(summary.median)


def rows_at(result: RunResult, context_len: int) -> list[Row]:
    """Every (variant, dtype, backend) at one context, smallest cache per sequence first (ties in run order)."""
    groups: dict[tuple[str, str, str], list[CellResult]] = {}
    for cell in result.cells:
        if cell.context_len == context_len:
            groups.setdefault((cell.variant, cell.dtype, cell.backend), []).append(cell)
    rows = []
    for (variant, dtype, backend), cells in groups.items():
        per_sequence = kv_per_sequence(cells[0])
        rows.append(
            Row(
                variant=variant,
                spelling=cells[0].spelling or variant,
                dtype=dtype,
                backend=backend,
                kv_bytes_per_sequence=per_sequence,
                kv_bytes_per_token=per_sequence / (context_len + 1),
                max_batch=_max_batch(cells),
                decode_ms={cell.batch_size: _decode(cell) for cell in cells},
            )
        )
    return sorted(rows, key=lambda row: row.kv_bytes_per_sequence)


def savings_table(result: RunResult, context_len: int) -> str:
    """Markdown table of :func:`rows_at`, with each cache as a fraction of the largest at this context."""
    rows = rows_at(result, context_len)
    several = len({(row.dtype, row.backend) for row in rows}) > 1
    batches = sorted({batch for row in rows for batch in row.decode_ms})
    largest = max(row.kv_bytes_per_sequence for row in rows)
    body = [
        [
            str(rank),
            row.variant if row.spelling == row.variant else f"{row.variant} ({row.spelling})",
            *([row.dtype, row.backend] if several else []),
            f"{row.kv_bytes_per_token:,.0f}",
            format_bytes(row.kv_bytes_per_sequence),
            f"{row.kv_bytes_per_sequence / largest:.1%}",
            row.max_batch,
            *(row.decode_ms.get(batch, MISSING) for batch in batches),
        ]
        for rank, row in enumerate(rows, start=1)
    ]
    headers = [
        "rank",
        "variant",
        *(["dtype", "backend"] if several else []),
        "KV B/token",
        "KV per sequence",
        "of largest",
        "max batch",
        *(f"decode ms, b{batch}" for batch in batches),
    ]
    return tabulate(body, headers=headers, tablefmt=TABLEFMT, disable_numparse=True)


def savings_section(result: RunResult) -> list[str]:
    """The section's markdown lines: a ranked table per context; nothing for a run of fewer than two variants."""
    if len({cell.variant for cell in result.cells}) < 2:
        return []
    lines = [
        "### KV-cache savings, ranked",
        "",
        "Every variant ranked by the KV cache one sequence holds at each context: bytes per cached token "
        "(per sequence / (context + 1)), where a windowed layer holds at most its window and an 8-bit cache "
        "one byte per element plus its scales; the share of the largest cache at that context; the max batch "
        "under the memory budget (predicted, and measured where the run searched); and the median decode "
        "latency in ms per batch size (or why a cell did not run).",
        "",
    ]
    for context in sorted({cell.context_len for cell in result.cells}):
        lines += [f"Context {context}:", "", savings_table(result, context), ""]
    return lines
