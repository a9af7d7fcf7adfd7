"""The report's tensor-parallel section: each rank's cache, memory and decode latency per degree, and what
replicating K/V heads costs (MQA's one head is on every rank). Pure functions from a result to markdown."""

from __future__ import annotations

from tabulate import tabulate

from harness.report.tables import MISSING, SUSPECT, TABLEFMT, fmt_summary_ms
from harness.results.schema import CellResult, RunResult, TPMeasurement
from harness.units import format_bytes

LEAD = (
    "The decode step sharded over tp ranks (Megatron layout: query heads, their K/V heads and the MLP split, "
    "two all-reduces per layer), each rank a process of its own; `tp 1` is the same harness unsharded. "
    "A rank holds ceil(n_kv_heads / tp) K/V heads: below n_kv_heads ranks they split, beyond it they are "
    "replicated, and *replication* is the K/V bytes over all ranks divided by the unsharded cache. Per-rank "
    "cache is the largest rank's measured bytes (= the accounting, or the difference); peak is the largest "
    "rank's; latency is per step, the slowest rank's."
)
CPU_NOTE = (
    "On this CPU the ranks share the machine's cores (threads per rank in the table) and talk through gloo, so "
    "the latency measures that, not a machine with a device per rank; cache bytes and peaks are per rank as on "
    "any machine."
)


def _row(cell: CellResult, m: TPMeasurement, several: bool) -> list[str]:
    coords = [cell.variant, *([cell.dtype, cell.backend] if several else []), str(cell.batch_size)]
    coords += [str(cell.context_len), str(m.tp), f"{m.kv_heads_per_rank} of {cell.n_kv_heads}"]
    if m.status != "ok" or not m.ranks:
        return [*coords, MISSING, m.status, MISSING, MISSING, MISSING]
    largest = max(r.kv_cache_bytes for r in m.ranks)
    kv = format_bytes(largest)
    expected = m.kv_cache_bytes_per_rank_expected
    if expected is not None:
        kv += " (= expected)" if largest == expected else f" (expected {format_bytes(expected)})"
    peaks = [r.peak_memory_bytes for r in m.ranks if r.peak_memory_bytes is not None]
    latency = MISSING if m.decode_latency_s is None else fmt_summary_ms(m.decode_latency_s)
    if cell.checks_failed or cell.unstable:
        latency += SUSPECT
    threads = MISSING if m.threads_per_rank is None else str(m.threads_per_rank)
    return [*coords, f"{m.kv_replication:.1f}×", kv, format_bytes(max(peaks)) if peaks else MISSING, latency, threads]


def replication_notes(result: RunResult) -> list[str]:
    """One line per variant whose K/V heads were replicated at some measured degree, at its largest such degree."""
    notes: dict[str, str] = {}
    for cell in result.cells:
        measured = [] if cell.metrics is None else cell.metrics.tp
        for m in sorted(measured, key=lambda m: m.tp):
            if m.kv_replication > 1 and m.status == "ok" and m.ranks:
                per_rank = max(r.kv_cache_bytes for r in m.ranks)
                notes[cell.variant] = (
                    f"- `{cell.variant}` ({cell.n_kv_heads} K/V heads) at tp {m.tp}, batch {cell.batch_size}, context "
                    f"{cell.context_len}: every rank holds {m.kv_heads_per_rank} K/V head(s) per producer, "
                    f"{format_bytes(per_rank)} of cache per rank, {m.kv_replication:.1f}× the unsharded cache over "
                    f"all ranks; a layout with at least {m.tp} K/V heads would hold 1/{m.tp} of its cache per rank."
                )
    return list(notes.values())


def tp_section(result: RunResult) -> list[str]:
    """The section's markdown lines; none when no cell was measured sharded."""
    several = len({(c.dtype, c.backend) for c in result.cells}) > 1
    rows = [
        _row(cell, m, several)
        for cell in result.cells
        if cell.metrics is not None
        for m in sorted(cell.metrics.tp, key=lambda m: m.tp)
    ]
    if not rows:
        return []
    headers = [
        "variant",
        *(["dtype", "backend"] if several else []),
        "batch",
        "context",
        "tp",
        "K/V heads per rank",
        "replication",
        "cache per rank",
        "peak per rank",
        "decode ms (p10–p90)",
        "threads per rank",
    ]
    lines = ["### Tensor parallelism", "", LEAD, ""]
    if result.device == "cpu":
        lines += [CPU_NOTE, ""]
    lines += [tabulate(rows, headers=headers, tablefmt=TABLEFMT, disable_numparse=True), ""]
    notes = replication_notes(result)
    if notes:
        lines += ["Replicated K/V heads:", "", *notes, ""]
    return lines
