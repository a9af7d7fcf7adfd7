"""The comparison as GitHub markdown (for a CI job summary) and its one-line summary."""

from __future__ import annotations

import math

from tabulate import tabulate

from harness.compare.changes import MetricChange
from harness.compare.comparison import Comparison, percent
from harness.compare.sides import Side
from harness.compare.thresholds import LATENCY_METRICS
from harness.units import format_bytes


def _significant(value: float, digits: int = 4) -> str:
    """``value`` with ``digits`` significant digits in fixed notation: 11 -> "11.00", 4012.3 -> "4012"."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def format_value(metric: str, value: float) -> str:
    """A metric value with its unit: latencies scaled to s/ms/us/ns, bytes in binary units."""
    if metric in LATENCY_METRICS:
        for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
            if abs(value) >= scale:
                return f"{_significant(value / scale)} {unit}"
        return f"{_significant(value / 1e-9)} ns"
    if metric.endswith("_bytes"):
        return format_bytes(value)
    if metric == "bandwidth_gbps":
        return f"{_significant(value)} GB/s"
    return f"{value:g}"


def _format_change(change: MetricChange) -> str:
    relative = change.change
    if relative is None:
        return "n/a" if change.head != change.base else "+0.0%"
    return f"{relative * 100:+.1f}%"


def _side_line(name: str, side: Side) -> str:
    scenarios = ", ".join(r.scenario.name for r in side.results)
    return f"- {name}: `{side.spec}` ({side.kind}; target {side.target}; commit {', '.join(side.commits)}; {scenarios})"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _status(status: str | None) -> str:
    return "missing" if status is None else status


def _evidence(change: MetricChange) -> str:
    """The noise a change had to exceed, or for an interleaved comparison its ratio and interval."""
    if change.paired is not None:
        p = change.paired
        shown = f"×{p.ratio:.3f} [{p.ci_low:.3f}, {p.ci_high:.3f}]"
        return shown if p.covered else f"{shown}, {len(p.ratios)} rounds"  # too few for the confidence: min, max
    return "" if change.noise is None else f"±{change.noise:.1%}"


def render_markdown(comparison: Comparison, only_changed: bool = False) -> str:
    """The comparison as GitHub markdown: the overall verdict on the first line, then one table per
    scenario and the cells not compared."""
    thresholds = ", ".join(t.spec for t in comparison.thresholds.values())
    lines = [
        summary_line(comparison),  # the verdict first: what a reader (or a script reading one line) needs
        "",
        "## attnbench compare",
        "",
        _side_line("base", comparison.base),
        _side_line("head", comparison.head),
        f"- gates: {thresholds}; latency also needs "
        + (
            f"per-round ratios HEAD/BASE whose {percent(comparison.confidence)} signed-rank interval excludes 1"
            if comparison.paired
            else f"Mann-Whitney U p < {comparison.alpha:g} (two-sided) and, where cells were measured in several "
            "rounds, a change beyond their run-to-run noise"
        ),
        *(f"- note: {note}" for note in comparison.notes),
    ]
    paired = any(change.paired is not None for cell in comparison.cells for change in cell.changes)
    headers = [
        "cell",
        "metric",
        "base",
        "head",
        "change",
        "p-value",
        f"ratio ({percent(comparison.confidence)} CI)" if paired else "noise",
        "verdict",
    ]
    scenarios = dict.fromkeys(cell.scenario for cell in comparison.cells)
    for scenario in scenarios:
        rows: list[list[str]] = []
        for cell in (c for c in comparison.cells if c.scenario == scenario):
            shown = [c for c in cell.changes if not only_changed or c.verdict != "~"]
            for i, change in enumerate(shown):
                rows.append(
                    [
                        cell.label if i == 0 else "",
                        change.metric,
                        format_value(change.metric, change.base),
                        format_value(change.metric, change.head),
                        _format_change(change),
                        "" if change.p_value is None else f"{change.p_value:.2g}",
                        _evidence(change),
                        change.verdict,
                    ]
                )
        if rows:
            lines += ["", f"### {scenario}", "", tabulate(rows, headers, tablefmt="github", disable_numparse=True)]
    if comparison.skipped:
        rows = [
            [
                s.scenario,
                s.label,
                _status(s.base_status),
                _status(s.head_status),
                "regression" if s.is_regression else s.verdict,
                s.reason,
            ]
            for s in comparison.skipped
        ]
        headers = ["scenario", "cell", "base", "head", "verdict", "why"]
        lines += ["", "### not compared", "", tabulate(rows, headers, tablefmt="github", disable_numparse=True)]
    return "\n".join(lines) + "\n"


def summary_line(comparison: Comparison) -> str:
    """``**REGRESSION**: 2 regressions, 1 improvement, 13 unchanged (~) in 4 cells; 1 cell not compared.``"""
    outcome = "**REGRESSION**" if comparison.regressions else "**OK**"
    parts = [
        _plural(comparison.regressions, "regression"),
        _plural(comparison.count("improvement"), "improvement"),
        f"{comparison.count('~')} unchanged (~) in {_plural(len(comparison.cells), 'compared cell')}",
    ]
    tail = f"; {_plural(len(comparison.skipped), 'cell')} not compared" if comparison.skipped else ""
    return f"{outcome}: {', '.join(parts)}{tail}."
