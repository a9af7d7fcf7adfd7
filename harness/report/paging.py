"""The serving sections: each paged cell beside its contiguous cell, each ragged cell beside its uniform one.

Pure functions from a result to markdown. A paged cell (``page_size`` set, harness/model/paged.py) is
the variant ``<name>-P<page_size>`` (harness/scenario/serving.py); its contiguous cell is ``<name>`` at the
same batch, context, dtype and backend. The table shows what paging costs each layout: the cache one
sequence holds (whole pages and block-table entries, the last page's unused tail included), the max
batch under the budget (predicted, and measured where the run searched), and the median decode latency.
A multi-token cell (``q_len`` above 1) is ``<name>-T<q_len>``; beside its one-token cell ``<name>``: bytes and
FLOPs per step, their ratio, the achieved bandwidth and the latency per step and per new token.
A ragged cell (``length_mix`` set, harness/lengths.py) is ``<name>-<mix>[-P<page_size>]``; its uniform
cell is ``<name>[-P<page_size>]``: beside it, the batch's mean context, the cache the batch holds, the
bytes a step moves, the max batch and the decode latency.
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
    """The contiguous cell a paged cell is measured against, if the run has it: the same name without its page
    suffix, which a step suffix may follow (``X-P16-T4`` against ``X-T4``, ``X-P16-prefill`` against
    ``X-prefill``)."""
    assert cell.page_size is not None
    suffix = paged_name("", cell.page_size)
    head, found, tail = cell.variant.rpartition(suffix)
    contiguous = head + tail if found and (not tail or tail.startswith("-")) else None
    for other in cells:
        if (
            other.page_size is None
            and other.variant == contiguous
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


def uniform_partner(cell: CellResult, cells: list[CellResult]) -> CellResult | None:
    """The cell of the same variant and layout with every sequence at context_len, if the run has it."""
    assert cell.length_mix is not None
    suffix = f"-{cell.length_mix}"
    base = cell.variant
    pages = "" if cell.page_size is None else f"-P{cell.page_size}"
    if pages and base.endswith(pages):
        base = base[: -len(pages)]
    if not base.endswith(suffix):
        return None
    uniform = base[: -len(suffix)] + pages
    for other in cells:
        if (
            other.length_mix is None
            and other.variant == uniform
            and (other.batch_size, other.context_len, other.dtype, other.backend)
            == (cell.batch_size, cell.context_len, cell.dtype, cell.backend)
        ):
            return other
    return None


def _kv_bytes(cell: CellResult | None) -> str:
    if cell is None or cell.metrics is None or cell.metrics.kv_cache_bytes_expected is None:
        return MISSING
    return format_bytes(cell.metrics.kv_cache_bytes_expected)


def _step_bytes(cell: CellResult | None) -> str:
    return MISSING if cell is None or cell.metrics is None else format_bytes(cell.metrics.bytes_per_step)


def ragged_table(result: RunResult) -> str | None:
    """One row per ragged cell, beside its uniform cell; None when the run has no ragged cell."""
    ragged = [cell for cell in result.cells if cell.length_mix is not None]
    if not ragged:
        return None
    body = []
    for cell in ragged:
        partner = uniform_partner(cell, result.cells)
        if cell.status == "unsupported" and (partner is None or partner.status == "unsupported"):
            continue
        lengths = cell.context_lens or []
        mean = f"{sum(lengths) / len(lengths):,.0f}" if lengths else MISSING
        ragged_s, uniform_s = _decode_s(cell), _decode_s(partner)
        body.append(
            [
                cell.variant,
                cell.length_mix,
                cell.backend,
                str(cell.context_len),
                mean,
                str(cell.batch_size),
                _kv_bytes(partner),
                _kv_bytes(cell),
                _step_bytes(partner),
                _step_bytes(cell),
                _max_batch(partner),
                _max_batch(cell),
                _decode(partner),
                _decode(cell),
                MISSING if ragged_s is None or uniform_s is None else f"{ragged_s / uniform_s:.2f}x",
            ]
        )
    headers = [
        "variant",
        "lengths",
        "backend",
        "longest",
        "mean",
        "batch",
        "KV uniform",
        "KV ragged",
        "bytes/step uniform",
        "bytes/step ragged",
        "max batch uniform",
        "max batch ragged",
        "decode ms uniform",
        "decode ms ragged",
        "ragged / uniform",
    ]
    return tabulate(body, headers=headers, tablefmt=TABLEFMT, disable_numparse=True)


def ragged_section(result: RunResult) -> list[str]:
    """The section's markdown lines; nothing for a run without ragged cells."""
    table = ragged_table(result)
    if table is None:
        return []
    return [
        "### Ragged against uniform batches",
        "",
        "Each ragged cell (every sequence at its own context, the longest at the cell's context) beside the cell "
        "of the same variant and layout with every sequence at that longest context: the batch's mean context, "
        "the KV cache the batch allocates (a contiguous cache gives every sequence a slot for the longest, a "
        "paged one only each sequence's pages), the ideal bytes a decode step moves (each sequence reads its "
        "own positions), the max batch under the budget (predicted, measured in parentheses) and the median "
        "decode latency.",
        "",
        table,
        "",
    ]


def _one_token_partner(cell: CellResult, cells: list[CellResult]) -> CellResult | None:
    suffix = f"-T{cell.q_len}"
    if not cell.variant.endswith(suffix):
        return None
    name = cell.variant[: -len(suffix)]
    for other in cells:
        if (
            other.q_len is None
            and other.variant == name
            and (other.batch_size, other.context_len, other.dtype, other.backend)
            == (cell.batch_size, cell.context_len, cell.dtype, cell.backend)
        ):
            return other
    return None


def _step_row(cell: CellResult, q_len: int) -> list[str]:
    metrics = cell.metrics
    if metrics is None:
        return [MISSING] * 5
    seconds = _decode_s(cell)
    bandwidth = metrics.bandwidth_gbps
    return [
        format_bytes(metrics.bytes_per_step),
        f"{metrics.flops_per_step / 1e9:.2f}",
        f"{metrics.flops_per_step / metrics.bytes_per_step:.1f}",
        MISSING if bandwidth is None else f"{bandwidth:.1f}",
        _decode(cell) if seconds is None else f"{fmt_ms(seconds)} / {fmt_ms(seconds / q_len)}",
    ]


def multi_token_table(result: RunResult) -> str | None:
    """Each multi-token cell below its one-token cell; None when the run has none."""
    multi = [cell for cell in result.cells if cell.q_len is not None and cell.status != "unsupported"]
    if not multi:
        return None
    body = []
    for cell in multi:
        assert cell.q_len is not None
        partner = _one_token_partner(cell, result.cells)
        coords = [cell.backend, str(cell.context_len), str(cell.batch_size)]
        if partner is not None and partner.status == "ok":
            body.append([partner.variant, "1", *coords, *_step_row(partner, 1)])
        body.append([cell.variant, str(cell.q_len), *coords, *_step_row(cell, cell.q_len)])
    headers = [
        "variant",
        "q_len",
        "backend",
        "context",
        "batch",
        "bytes/step",
        "GFLOP/step",
        "FLOP/byte",
        "GB/s",
        "decode ms: step / per token",
    ]
    return tabulate(body, headers=headers, tablefmt=TABLEFMT, disable_numparse=True)


def multi_token_section(result: RunResult) -> list[str]:
    """The section's markdown lines; nothing for a run without multi-token cells."""
    table = multi_token_table(result)
    if table is None:
        return []
    return [
        "### Multi-token steps",
        "",
        "Each step of q_len new tokens per sequence (causal within them: speculative verification) below the "
        "one-token step of the same variant: the ideal bytes a step moves (the cache read once per layer, "
        "weights once), its FLOPs, their ratio (FLOP per byte: a step stays memory-bound while this is below "
        "the machine's FLOP/s over its bandwidth), the achieved bandwidth (bytes per step over the median), and "
        "the median latency per step and per new token.",
        "",
        table,
        "",
    ]
