"""The verdict a report opens with: every variant against a baseline variant, per context and batch size.

For each (context length, batch size) and each variant other than the baseline (the scenario's
``report.baseline``, else the first variant), at the same dtype and backend:

- KV bytes per token ×: the variant's cache per sequence at this context over the baseline's (windows and
  8-bit caches counted, harness/report/savings.py); exact, from the accounting the cells record.
- max batch ×: the measured max batch under the memory budget over the baseline's, at this context.
- decode latency ×: the warm decode step's median over the baseline's, with a 95% interval. Each median's
  distribution-free interval (binomial order statistics, harness/stats/order.py) is taken at
  √0.95 ≈ 97.5%; the two cells are timed in separate processes, so both cover their medians at once with
  probability at least 0.95, and then the ratio of medians lies in [low_a / high_b, high_a / low_b]. The
  interval is conservative: it errs towards "not distinguishable".
- a conclusion: "not distinguishable" when the interval includes 1, when either cell is unstable or failed a
  self-check, or when the result carries no stability assessment or self-checks at all (unchecked);
  otherwise faster or slower by the median ratio.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tabulate import tabulate

from harness.report.provenance import missing_evidence
from harness.report.savings import kv_per_sequence
from harness.report.tables import MISSING, TABLEFMT
from harness.results.schema import CellResult, RunResult, Summary
from harness.scenario.serving import form_suffix
from harness.stats.order import CONFIDENCE, median_ci

# Each median's interval level, so that both hold together with probability CONFIDENCE (module doc).
PER_MEDIAN_CONFIDENCE = math.sqrt(CONFIDENCE)
NOT_DISTINGUISHABLE = "not distinguishable"


@dataclass(frozen=True)
class LatencyRatio:
    """Decode latency of a variant over the baseline's: the median ratio and its 95% interval."""

    ratio: float
    low: float
    high: float

    @property
    def includes_one(self) -> bool:
        return self.low <= 1.0 <= self.high


def latency_ratio(subject: Summary, baseline: Summary) -> LatencyRatio:
    """The ratio of medians subject / baseline with its conservative 95% interval (module doc)."""
    sub_low, sub_high = median_ci(subject.samples, PER_MEDIAN_CONFIDENCE)
    base_low, base_high = median_ci(baseline.samples, PER_MEDIAN_CONFIDENCE)
    return LatencyRatio(subject.median / baseline.median, sub_low / base_high, sub_high / base_low)


@dataclass(frozen=True)
class VerdictRow:
    """One variant against the baseline at one cell's coordinates."""

    variant: str
    dtype: str
    backend: str
    kv_ratio: float | None  # variant / baseline KV bytes per token at this context
    max_batch_ratio: float | None  # measured max batch, variant / baseline
    latency: LatencyRatio | None
    decode: str  # "faster", "slower" or NOT_DISTINGUISHABLE
    conclusion: str


def serving_form(cell: CellResult) -> str:
    """The suffix of the cell's serving form (harness/scenario/serving.py), when its name carries it; else ''."""
    suffix = form_suffix(cell.page_size, cell.length_mix, cell.q_len, cell.prefill, cell.chunk)
    return suffix if suffix and cell.variant.endswith(suffix) else ""


def base_variant(cell: CellResult) -> str:
    """The cell's variant without its serving form: ``H128-MQA-CLA2`` for ``H128-MQA-CLA2-longtail-P16``."""
    suffix = serving_form(cell)
    return cell.variant[: len(cell.variant) - len(suffix)]


def baseline_variant(result: RunResult) -> str | None:
    """The variant the verdict compares with: the recorded ``report.baseline`` if the run has it, else the first
    (without a serving form's suffix)."""
    variants = list(dict.fromkeys(base_variant(c) for c in result.cells))
    if not variants:
        return None
    recorded = result.scenario.baseline
    return recorded if recorded in variants else variants[0]


def _measured_max_batch(cell: CellResult) -> int | None:
    if cell.metrics is None or cell.metrics.max_batch is None:
        return None
    return cell.metrics.max_batch.measured


def _max_batch_at(result: RunResult, variant: str, dtype: str, backend: str, context: int) -> int | None:
    """The measured max batch of a variant at a context (every batch size's cell carries the same search)."""
    for cell in result.cells:
        if (cell.variant, cell.dtype, cell.backend, cell.context_len) == (variant, dtype, backend, context):
            measured = _measured_max_batch(cell)
            if measured is not None:
                return measured
    return None


def _untrusted(cells: Sequence[CellResult], missing: list[str]) -> str | None:
    """Why these cells' latencies cannot decide: unstable, failed self-checks, or never assessed (the result lacks
    evidence fields, harness/report/provenance.py)."""
    if any(c.unstable for c in cells):
        return "unstable"
    failed = sorted({name for c in cells for name in c.checks_failed})
    if failed:
        return f"failed self-checks ({', '.join(failed)})"
    if missing:
        return f"unchecked (the result has no {', '.join(missing)})"
    return None


def _times(ratio: float) -> str:
    """``×0.125``, ``×0.86``, ``×1.10``, ``×37.8``: two decimals from 1 to 10, else three significant digits."""
    return f"×{ratio:.2f}" if 1 <= ratio < 10 else f"×{ratio:.3g}"


def _decode(latency: LatencyRatio | None, untrusted: str | None) -> str:
    if latency is None or untrusted is not None or latency.includes_one:
        return NOT_DISTINGUISHABLE
    return "faster" if latency.ratio < 1 else "slower"


def _conclusion(kv: float | None, batch: float | None, latency: LatencyRatio | None, untrusted: str | None) -> str:
    parts = []
    if kv is not None and not math.isclose(kv, 1.0):
        parts.append(f"{1 / kv:.3g}× less KV per token" if kv < 1 else f"{kv:.3g}× more KV per token")
    if batch is not None and not math.isclose(batch, 1.0):
        parts.append(f"{batch:.3g}× the max batch")
    if latency is None:
        parts.append("decode latency not measured for both")
    elif untrusted is not None:
        parts.append(f"decode latency {NOT_DISTINGUISHABLE}: {untrusted}")
    elif latency.includes_one:
        parts.append(f"decode latency {NOT_DISTINGUISHABLE} (interval includes 1)")
    elif latency.ratio < 1:
        parts.append(f"decode {1 - latency.ratio:.0%} faster")
    else:
        parts.append(f"decode {latency.ratio - 1:.0%} slower")
    return "; ".join(parts)


def verdict_rows(result: RunResult, baseline: str, context: int, batch: int) -> list[VerdictRow]:
    """Every variant other than ``baseline`` against it, at one context and batch size, per dtype and backend, and
    per serving form: a variant's paged, ragged or multi-token form against the baseline's same form (what a form
    costs one variant is the serving tables' question, not the verdict's)."""
    missing = missing_evidence(result)
    cells = {
        (c.variant, c.dtype, c.backend): c for c in result.cells if (c.context_len, c.batch_size) == (context, batch)
    }
    rows = []
    for (variant, dtype, backend), cell in cells.items():
        form = serving_form(cell)
        base = cells.get((baseline + form, dtype, backend))
        if base_variant(cell) == baseline or base is None:
            continue
        if cell.status != "ok" or base.status != "ok":
            statuses = ", ".join(f"{c.variant} {c.status}" for c in (cell, base) if c.status != "ok")
            conclusion = f"{NOT_DISTINGUISHABLE}: {statuses}"
            rows.append(VerdictRow(variant, dtype, backend, None, None, None, NOT_DISTINGUISHABLE, conclusion))
            continue
        kv = kv_per_sequence(cell) / kv_per_sequence(base)
        sub_batch = _max_batch_at(result, variant, dtype, backend, context)
        base_batch = _max_batch_at(result, baseline + form, dtype, backend, context)
        batch_ratio = sub_batch / base_batch if sub_batch is not None and base_batch else None
        sub_latency = None if cell.metrics is None else cell.metrics.decode_latency_s
        base_latency = None if base.metrics is None else base.metrics.decode_latency_s
        latency = None if sub_latency is None or base_latency is None else latency_ratio(sub_latency, base_latency)
        untrusted = _untrusted([cell, base], missing)
        conclusion = _conclusion(kv, batch_ratio, latency, untrusted)
        rows.append(
            VerdictRow(variant, dtype, backend, kv, batch_ratio, latency, _decode(latency, untrusted), conclusion)
        )
    return rows


def _latency_text(latency: LatencyRatio | None) -> str:
    if latency is None:
        return MISSING
    return f"{_times(latency.ratio)} [{latency.low:.2f}, {latency.high:.2f}]"


def verdict_section(result: RunResult) -> list[str]:
    """Markdown lines: a decision table per (context, batch) against the baseline; empty without a second variant."""
    baseline = baseline_variant(result)
    if baseline is None:
        return []
    coords = sorted({(c.context_len, c.batch_size) for c in result.cells})
    tables = [(context, batch, verdict_rows(result, baseline, context, batch)) for context, batch in coords]
    tables = [(context, batch, rows) for context, batch, rows in tables if rows]
    if not tables:
        return []
    several = len({(c.dtype, c.backend) for c in result.cells}) > 1
    lines = [
        "### Verdict",
        "",
        f"Every variant against the baseline `{baseline}` (`report.baseline` in the scenario; default the first "
        "variant), cell by cell at the same dtype, backend and serving form (a paged, ragged or multi-token form "
        "against the baseline's same form). ×: variant / baseline. Decode latency is the warm "
        "step's median ratio with its 95% interval [low, high] from the two medians' order-statistic intervals; "
        f"a ratio whose interval includes 1, or whose cells are unstable, failed self-checks or were never "
        f"checked, is *{NOT_DISTINGUISHABLE}*.",
        "",
    ]
    lines += _overview(tables)
    headers = [
        "variant",
        *(["dtype", "backend"] if several else []),
        "KV bytes/token",
        "max batch (measured)",
        "decode latency [95%]",
        "conclusion",
    ]
    for context, batch, rows in tables:
        body = [
            [
                row.variant,
                *([row.dtype, row.backend] if several else []),
                MISSING if row.kv_ratio is None else _times(row.kv_ratio),
                MISSING if row.max_batch_ratio is None else _times(row.max_batch_ratio),
                _latency_text(row.latency),
                row.conclusion,
            ]
            for row in rows
        ]
        lines += [f"**Context {context}, batch {batch}**", ""]
        lines += [tabulate(body, headers=headers, tablefmt=TABLEFMT, disable_numparse=True), ""]
    return lines


def _overview(tables: list[tuple[int, int, list[VerdictRow]]]) -> list[str]:
    """One line per variant: in how many cells its decode was faster, slower, or not distinguishable."""
    counts: dict[str, list[int]] = {}
    for _, _, rows in tables:
        for row in rows:
            tally = counts.setdefault(row.variant, [0, 0, 0])
            tally[("faster", "slower", NOT_DISTINGUISHABLE).index(row.decode)] += 1
    lines = [
        f"- `{variant}`: decode faster in {faster}, slower in {slower}, {NOT_DISTINGUISHABLE} in {unclear} of "
        f"{faster + slower + unclear} cells"
        for variant, (faster, slower, unclear) in counts.items()
    ]
    return [*lines, ""]
