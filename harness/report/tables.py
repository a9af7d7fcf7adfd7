"""Markdown tables of one result: environment, scenario, one table per metric, failed cells, claims.

Every function takes result data and returns GitHub-flavoured markdown text (tabulate's "github"
format), or None when no cell has the metric. Metric tables have a row per variant and batch size
and a column per context length; a cell that did not run shows its status.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tabulate import tabulate

from harness.cellkey import CellKey
from harness.report.claims import ClaimCheck
from harness.results.schema import CellMetrics, CellResult, RunResult, Summary
from harness.units import format_bytes

MISSING = "—"
TABLEFMT = "github"
SUSPECT = " ⚠"  # after a value whose cell failed a self-check or is unstable

# Known environment keys and their labels, shown first and in this order when present;
# every other scalar entry follows under its own key.
ENVIRONMENT_LABELS: tuple[tuple[str, str], ...] = (
    ("device_name", "Device"),
    ("cpu_model", "CPU"),
    ("logical_cores", "CPU cores (logical)"),
    ("torch_num_threads", "torch threads"),
    ("memory_total_bytes", "Memory"),
    ("gpu_memory_total_bytes", "GPU memory"),
    ("torch_version", "torch"),
    ("torch_cuda_version", "CUDA (torch build)"),
    ("cuda_driver_version", "CUDA (driver)"),
    ("driver_version", "Driver"),
    ("vendor_peak_bandwidth_gbps", "Vendor peak bandwidth"),
    ("python_version", "Python"),
    ("os", "OS"),
)
# Shown elsewhere in the report already.
ENVIRONMENT_SKIP = frozenset({"target", "device"})


def fmt_ms(seconds: float) -> str:
    """Milliseconds with three significant digits or more: 0.269, 7.57, 52.6, 1234."""
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_summary_ms(summary: Summary) -> str:
    """``7.57 (7.43–7.71)``: median and p10–p90, in milliseconds."""
    return f"{fmt_ms(summary.median)} ({fmt_ms(summary.p10)}–{fmt_ms(summary.p90)})"


def _scalar(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and key.endswith("_bytes"):
        return format_bytes(value)
    if isinstance(value, int | float) and key.endswith("_gbps"):
        return f"{value:.1f} GB/s"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def _flatten(data: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        elif value is not None:
            yield f"{prefix}{key}", value


def environment_rows(result: RunResult) -> list[tuple[str, str]]:
    """What the result says about its hardware: known keys first, then the rest, missing keys skipped."""
    flat = dict(_flatten(result.environment))
    rows = [("Target", f"`{result.target}`"), ("Device kind", result.device)]
    shown: set[str] = set()
    for key, label in ENVIRONMENT_LABELS:
        if key in flat:
            rows.append((label, _scalar(key, flat[key])))
            shown.add(key)
    if result.peak_bandwidth_gbps is not None:
        rows.append(("Measured peak bandwidth", f"{result.peak_bandwidth_gbps:.1f} GB/s"))
    rows.extend((key, _scalar(key, flat[key])) for key in sorted(flat) if key not in shown | ENVIRONMENT_SKIP)
    return rows


def key_value_table(rows: Sequence[tuple[str, str]]) -> str:
    return tabulate(list(rows), headers=["", ""], tablefmt=TABLEFMT, disable_numparse=True)


def scenario_rows(result: RunResult, source: str) -> list[tuple[str, str]]:
    """The scenario and the run: name, file and hash, model shape, commit, quick flag, times."""
    scenario, git = result.scenario, result.git
    model = ", ".join(f"{k} {v}" for k, v in scenario.model.items())
    commit = git.commit or "unknown"
    if git.dirty:
        commit += " (dirty: uncommitted changes)"
    elif git.dirty is None:
        commit += " (dirty flag unknown)"
    rows = [
        ("Scenario", f"`{scenario.name}`"),
        ("Description", scenario.description or MISSING),
        ("Scenario file", f"`{scenario.source}`"),
        ("sha256", f"`{scenario.sha256}`"),
        ("Model", model),
        ("Git commit", f"`{commit}`" + (f" on {git.branch}" if git.branch else "")),
        ("Quick run", "yes (fewer samples; numbers are indicative)" if result.quick else "no"),
        ("Started (UTC)", result.started_utc),
        ("Finished (UTC)", result.finished_utc or "not finished" + (" (interrupted)" if result.interruptions else "")),
        ("Result file", source),
    ]
    if result.interruptions:
        stops = "; ".join(f"{i.signal} at {i.utc} after {i.cells_done} cells" for i in result.interruptions)
        resumed = ", resumed with --resume" if result.finished_utc else ""
        rows.insert(-1, ("Interrupted", stops + resumed))
    return rows


def _axes(cells: Sequence[CellResult]) -> tuple[list[str], list[int], list[int], bool]:
    """Variants in order of appearance, sorted batches and contexts, and whether dtype/backend vary."""
    variants = list(dict.fromkeys(c.variant for c in cells))
    batches = sorted({c.batch_size for c in cells})
    contexts = sorted({c.context_len for c in cells})
    several = len({(c.dtype, c.backend) for c in cells}) > 1
    return variants, batches, contexts, several


def grid_table(result: RunResult, value: Callable[[CellMetrics], str | None]) -> str | None:
    """Rows variant (dtype, backend) x batch size, columns context length; None if no cell has a value."""
    cells = result.cells
    variants, batches, contexts, several = _axes(cells)
    by_key = {c.key: c for c in cells}
    series = list(dict.fromkeys((c.variant, c.dtype, c.backend) for c in cells))
    series.sort(key=lambda s: variants.index(s[0]))
    rows: list[list[str]] = []
    found = False
    for variant, dtype, backend in series:
        for batch in batches:
            row = [variant, *([dtype, backend] if several else []), str(batch)]
            any_cell = False
            for context in contexts:
                cell = by_key.get(CellKey(variant, batch, context, dtype, backend))
                text: str | None = None
                if cell is not None:
                    any_cell = True
                    if cell.status != "ok":
                        text = cell.status
                    elif cell.metrics is not None:
                        text = value(cell.metrics)
                        found = found or text is not None
                        if text is not None and (cell.checks_failed or cell.unstable):
                            text += SUSPECT
                row.append(text or MISSING)
            if any_cell:
                rows.append(row)
    if not found:
        return None
    headers = ["variant", *(["dtype", "backend"] if several else []), "batch", *(f"ctx {c}" for c in contexts)]
    return tabulate(rows, headers=headers, tablefmt=TABLEFMT, disable_numparse=True)


def latency_table(result: RunResult, field: str) -> str | None:
    """A Summary field of CellMetrics (``decode_latency_s``, ...) as median (p10–p90) ms."""

    def value(m: CellMetrics) -> str | None:
        summary = getattr(m, field)
        return None if summary is None else fmt_summary_ms(summary)

    return grid_table(result, value)


def vendor_peak_gbps(result: RunResult) -> float | None:
    """The vendor's peak bandwidth from the environment (GPUs), when known."""
    value = result.environment.get("vendor_peak_bandwidth_gbps")
    return float(value) if isinstance(value, int | float) and value > 0 else None


def bandwidth_table(result: RunResult, attention: bool = False) -> str | None:
    """Achieved GB/s with the fraction of the measured peak, and of the vendor's peak where known.

    ``12.3 (66%)``, or ``1650 (72%; 49% of vendor)`` on a GPU.
    """
    vendor = vendor_peak_gbps(result)

    def value(m: CellMetrics) -> str | None:
        gbps = m.attention_bandwidth_gbps if attention else m.bandwidth_gbps
        fraction = m.attention_bandwidth_fraction if attention else m.bandwidth_fraction
        if gbps is None:
            return None
        shares = [f"{fraction:.0%}"] if fraction is not None else []
        if vendor is not None:
            shares.append(f"{gbps / vendor:.0%} of vendor")
        return f"{gbps:.1f}" + (f" ({'; '.join(shares)})" if shares else "")

    return grid_table(result, value)


def peak_memory_table(result: RunResult) -> str | None:
    def value(m: CellMetrics) -> str | None:
        if m.peak_memory_bytes is None:
            return None
        text = format_bytes(m.peak_memory_bytes)
        if m.peak_reserved_bytes is not None:
            text += f" (reserved {format_bytes(m.peak_reserved_bytes)})"
        return text

    return grid_table(result, value)


def train_step_table(result: RunResult) -> str | None:
    """Training step per cell: peak memory, and the K/V activations saved for backward against the accounting."""

    def value(m: CellMetrics) -> str | None:
        step = m.train_step
        if step is None:
            return None
        if step.status != "ok":
            return step.status
        peak = MISSING if step.peak_memory_bytes is None else format_bytes(step.peak_memory_bytes)
        if step.kv_activation_bytes is None:
            return peak
        kv = format_bytes(step.kv_activation_bytes)
        same = step.kv_activation_bytes == step.kv_activation_bytes_expected
        expected = "= expected" if same else f"expected {format_bytes(step.kv_activation_bytes_expected)}"
        return f"{peak}; K/V {kv} ({expected})"

    return grid_table(result, value)


def kv_cache_table(result: RunResult) -> str | None:
    """Measured KV cache bytes against the accounting: ``4.00 MiB (= expected)`` or the difference."""

    def value(m: CellMetrics) -> str | None:
        if m.kv_cache_bytes is None:
            return None
        measured, expected = m.kv_cache_bytes, m.kv_cache_bytes_expected
        if measured == expected:
            return f"{format_bytes(measured)} (= expected)"
        return f"{format_bytes(measured)} (expected {format_bytes(expected)}, {measured / expected - 1:+.1%})"

    return grid_table(result, value)


def max_batch_table(result: RunResult) -> str | None:
    """Max batch under the budget per variant and context: budget, predicted, measured, error."""
    rows: dict[tuple[str, str, str, int], list[str]] = {}
    several = len({(c.dtype, c.backend) for c in result.cells}) > 1
    for cell in result.cells:
        if cell.metrics is None or cell.metrics.max_batch is None:
            continue
        key = (cell.variant, cell.dtype, cell.backend, cell.context_len)
        mb = cell.metrics.max_batch
        if key in rows and mb.measured is None:
            continue
        error = mb.error_fraction
        if error is None and mb.measured:
            error = (mb.predicted - mb.measured) / mb.measured
        rows[key] = [
            cell.variant,
            *([cell.dtype, cell.backend] if several else []),
            str(cell.context_len),
            format_bytes(mb.budget_bytes),
            str(mb.predicted),
            MISSING if mb.measured is None else str(mb.measured),
            MISSING if error is None else f"{error:+.1%}",
        ]
    if not rows:
        return None
    headers = [
        "variant",
        *(["dtype", "backend"] if several else []),
        "context",
        "budget",
        "predicted",
        "measured",
        "error",
    ]
    return tabulate(list(rows.values()), headers=headers, tablefmt=TABLEFMT, disable_numparse=True)


def checks_summary(result: RunResult) -> str:
    """One sentence: how many ok cells passed all their self-checks, or which checks failed how often."""
    ok = [c for c in result.cells if c.status == "ok"]
    checked = [c for c in ok if c.checks]
    if not checked:
        return "No cell of this run carries self-checks (it was measured before they were recorded)."
    failing = [c for c in checked if c.checks_failed]
    if not failing:
        count = sum(len(c.checks) for c in checked)
        return f"All {len(checked)} measured cells passed all their self-checks ({count} in all)."
    kinds: dict[str, int] = {}
    for cell in failing:
        for name in dict.fromkeys(cell.checks_failed):
            kinds[name] = kinds.get(name, 0) + 1
    listed = ", ".join(f"`{name}` ({n} cells)" for name, n in sorted(kinds.items()))
    return (
        f"⚠ {len(failing)} of {len(checked)} measured cells failed self-checks: {listed}. Their numbers are marked "
        f"{SUSPECT.strip()} in the tables below, and claims resting on them are inconclusive."
    )


def stability_summary(result: RunResult) -> str | None:
    """One sentence on the run's unstable cells, or None when none is (or stability was not assessed)."""
    assessed = [c for c in result.cells if c.stability is not None]
    unstable = [c for c in assessed if c.unstable]
    if not unstable:
        return None
    return (
        f"⚠ {len(unstable)} of {len(assessed)} measured cells are unstable (their rounds disagreed, their spread "
        f"was far above the run's, or the host was busy while they were timed): marked {SUSPECT.strip()} below; "
        "claims resting on them are inconclusive. `attnbench run --resume --rerun-unstable` measures them again."
    )


def stability_table(result: RunResult) -> str | None:
    """Every unstable cell with the reasons, one row per reason."""
    rows = [
        [c.variant, str(c.batch_size), str(c.context_len), c.dtype, c.backend, _one_line(reason)]
        for c in result.cells
        if c.unstable and c.stability is not None
        for reason in c.stability.reasons
    ]
    if not rows:
        return None
    headers = ["variant", "batch", "context", "dtype", "backend", "why unstable"]
    return tabulate(rows, headers=headers, tablefmt=TABLEFMT, disable_numparse=True)


def checks_table(result: RunResult) -> str | None:
    """Every failed self-check, one row per cell and check, with the numbers behind it."""
    rows = [
        [c.variant, str(c.batch_size), str(c.context_len), c.dtype, c.backend, check.name, _one_line(check.detail)]
        for c in result.cells
        for check in c.checks
        if not check.passed
    ]
    if not rows:
        return None
    headers = ["variant", "batch", "context", "dtype", "backend", "check", "detail"]
    return tabulate(rows, headers=headers, tablefmt=TABLEFMT, disable_numparse=True)


def sdpa_kernels_table(result: RunResult) -> str | None:
    """The SDPA kernel each variant and dtype ran (as the profiler saw it), and whether K/V were copied."""
    seen: dict[tuple[str, str], tuple[str, str]] = {}
    for c in result.cells:
        if c.metrics is None or c.metrics.sdpa_kernel is None:
            continue
        copied = "repeated per query head" if c.metrics.sdpa_kv_copied else "read in place"
        seen.setdefault((c.variant, c.dtype), (c.metrics.sdpa_kernel, copied))
    if not seen:
        return None
    rows = [[variant, dtype, kernel, copied] for (variant, dtype), (kernel, copied) in seen.items()]
    return tabulate(rows, headers=["variant", "dtype", "kernel measured", "K/V"], tablefmt=TABLEFMT)


def failed_cells_table(result: RunResult) -> str | None:
    """Cells with status oom or error, with the error they recorded."""
    rows = [
        [c.variant, str(c.batch_size), str(c.context_len), c.dtype, c.backend, c.status, _one_line(c.error)]
        for c in result.cells
        if c.status != "ok"
    ]
    if not rows:
        return None
    headers = ["variant", "batch", "context", "dtype", "backend", "status", "error"]
    return tabulate(rows, headers=headers, tablefmt=TABLEFMT, disable_numparse=True)


def _one_line(text: str | None) -> str:
    """Cell text for a table: one line, pipes escaped."""
    if not text:
        return MISSING
    return " ".join(text.split()).replace("|", "\\|")


VERDICT_LABELS = {
    "holds": "✅ holds",
    "does not hold": "❌ does not hold",
    "inconclusive": "❔ inconclusive",
    "not testable": "➖ not testable",
}


def claims_table(checks: Sequence[ClaimCheck]) -> str:
    """The claims this run could test, one row per comparison; below them, once per claim, those it could not
    and why (a row per comparison saying only "not testable" would bury the verdicts)."""
    tested = [c for c in checks if c.verdict != "not testable"]
    out = []
    if tested:
        rows = [[c.claim, c.comparison, VERDICT_LABELS[c.verdict], _one_line(c.evidence)] for c in tested]
        out.append(
            tabulate(
                rows, headers=["claim", "comparison", "verdict", "evidence"], tablefmt=TABLEFMT, disable_numparse=True
            )
        )
    untested: dict[str, list[ClaimCheck]] = {}
    for check in checks:
        if check.verdict == "not testable":
            untested.setdefault(check.claim, []).append(check)
    if untested:
        lines = [f"{VERDICT_LABELS['not testable']} in this run:"]
        for claim, group in untested.items():
            comparisons = [c.comparison for c in group if c.comparison not in ("", "—")]
            reasons = list(dict.fromkeys(_one_line(c.evidence) for c in group))
            where = f" ({', '.join(comparisons)})" if comparisons else ""
            lines.append(f"- {claim}{where}: {'; '.join(reasons)}")
        out.append("\n".join(lines))
    return "\n\n".join(out)
