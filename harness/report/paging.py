"""The paged-cache section: each paged cell beside its contiguous cell, capacity and decode latency.

Pure functions from a result to markdown. A paged cell (``page_size`` set, harness/model/paged.py) is
the variant ``<name>-P<page_size>`` (harness/scenario/serving.py); its contiguous cell is ``<name>`` at the
same batch, context, dtype and backend. The table shows what paging costs each layout: the cache one
sequence holds (whole pages and block-table entries, the last page's unused tail included), the max
batch under the budget (predicted, and measured where the run searched), and the median decode latency.
"""

from __future__ import annotations

from tabulate import tabulate

from harness.report.savings import kv_per_sequence
from harness.report.tables import MISSING, TABLEFMT, fmt_ms
from harness.results.schema import CellResult, RunResult
from harness.scenario.serving import paged_name
from harness.units import format_bytes


def _max_batch(cell: CellResult | None) -> str:
    found = None if cell is None or cell.metrics is None else cell.metrics.max_batch
    if found is None:
        return MISSING
    return f"{found.predicted}" + ("" if found.measured is None else f" ({found.measured})")


def _decode_s(cell: CellResult | None) -> float | None:
    if cell is None or cell.status != "ok" or cell.metrics is None or cell.metrics.decode_latency_s is None:
        return None
    return cell.metrics.decode_latency_s.median


def _decode(cell: CellResult | None) -> str:
    seconds = _decode_s(cell)
    if seconds is not None:
        return fmt_ms(seconds)
    return MISSING if cell is None or cell.status == "ok" else cell.status


def contiguous_partner(cell: CellResult, cells: list[CellResult]) -> CellResult | None:
    """The contiguous cell a paged cell is measured against, if the run has it."""
    assert cell.page_size is not None
    for other in cells:
        if (
            other.page_size is None
            and paged_name(other.variant, cell.page_size) == cell.variant
            and (other.batch_size, other.context_len, other.dtype, other.backend)
            == (cell.batch_size, cell.context_len, cell.dtype, cell.backend)
        ):
            return other
    return None


def paging_table(result: RunResult) -> str | None:
    """One row per paged cell, beside its contiguous cell; None when the run has no paged cell."""
    paged = [cell for cell in result.cells if cell.page_size is not None]
    if not paged:
        return None
    body = []
    for cell in paged:
        partner = contiguous_partner(cell, result.cells)
        if cell.status == "unsupported" and (partner is None or partner.status == "unsupported"):
            continue  # a backend that runs neither layout of this variant
        kv_paged = kv_per_sequence(cell)
        kv_flat = None if partner is None else kv_per_sequence(partner)
        paged_s, flat_s = _decode_s(cell), _decode_s(partner)
        body.append(
            [
                cell.variant,
                str(cell.page_size),
                cell.backend,
                str(cell.context_len),
                str(cell.batch_size),
                MISSING if kv_flat is None else format_bytes(kv_flat),
                format_bytes(kv_paged),
                MISSING if kv_flat is None else f"{kv_paged / kv_flat - 1:+.2%}",
                _max_batch(partner),
                _max_batch(cell),
                _decode(partner),
                _decode(cell),
                MISSING if paged_s is None or flat_s is None else f"{paged_s / flat_s:.2f}x",
            ]
        )
    headers = [
        "variant",
        "page",
        "backend",
        "context",
        "batch",
        "KV/seq contiguous",
        "KV/seq paged",
        "paging adds",
        "max batch contiguous",
        "max batch paged",
        "decode ms contiguous",
        "decode ms paged",
        "paged / contiguous",
    ]
    return tabulate(body, headers=headers, tablefmt=TABLEFMT, disable_numparse=True)


def paging_section(result: RunResult) -> list[str]:
    """The section's markdown lines; nothing for a run without paged cells."""
    table = paging_table(result)
    if table is None:
        return []
    return [
        "### Paged against contiguous caches",
        "",
        "Each paged cell beside the contiguous cell of the same variant, batch, context, dtype and backend: the "
        "cache one sequence holds (whole pages plus 8-byte block-table entries: 'paging adds' is the last "
        "page's unused tail and the table), the max batch under the memory budget (predicted, measured in "
        "parentheses), and the median decode latency. Eager gathers the attended positions out of their "
        "pages every step; native reads the pages in place.",
        "",
        table,
        "",
    ]
