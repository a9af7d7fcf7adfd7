"""The comparison as data a machine reads: per cell and metric the ratio HEAD/BASE, its interval, the
verdict and the reason for it (``attnbench compare --json``, ``attnbench ab --json``).

docs/verdicts.md documents the schema; ``SCHEMA`` names its version and changes with any incompatible
change. Every number here comes from the :class:`~harness.compare.comparison.Comparison` and the two
sides' result files; nothing is decided again, only explained:

- an interleaved comparison's latency carries the interval its verdict rests on: the Wilcoxon
  signed-rank interval of the per-round ratios at the comparison's confidence (harness/stats/paired.py);
- a latency of two separate runs carries the ratio's bounds from each side's 95% interval of its
  median, ``[head.ci_low / base.ci_high, head.ci_high / base.ci_low]``: both medians lie in their
  intervals together with a chance of at least 0.95 ** 2 (about 90%), so the ratio does too. Its
  verdict rests on Mann-Whitney U, the threshold and the run-to-run noise, not on these bounds;
- bandwidth is bytes over a latency, so its ratio's interval is that latency's inverted;
- memory, KV-cache bytes and max batch are single numbers per side: no interval.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from harness.compare.changes import CellComparison, MetricChange, cell_label
from harness.compare.comparison import Comparison
from harness.compare.render import summary_line
from harness.compare.sides import Side
from harness.compare.thresholds import LATENCY_METRICS
from harness.results.schema import CellMetrics, CellResult, Summary

SCHEMA = "attnbench-verdicts/1"
# Each side's interval of its median is a 95% one (harness/stats/order.py): the ratio's bounds from two
# of them hold together with at least this chance.
SEPARATE_RUNS_COVERAGE = 0.95**2

IntervalKind = Literal["paired signed-rank", "from both medians' 95% intervals"]


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    kind: IntervalKind
    confidence: float  # the chance the interval was made for (separate runs: a lower bound)


def overall(comparison: Comparison) -> Literal["regression", "ok"]:
    """The one word a pipeline branches on: any regression (a metric, or a cell that ran at BASE and
    failed at HEAD) makes it ``regression``, as the exit code 1 does."""
    return "regression" if comparison.regressions else "ok"


def _cells_by_label(side: Side) -> dict[tuple[str, str], CellResult]:
    return {(r.scenario.name, cell_label(c)): c for r in side.results for c in r.cells}


def _bandwidth_basis(metrics: CellMetrics) -> Summary | None:
    """The latency the bandwidth divides by (harness.run.runner.apply_bandwidths), as compare reads it."""
    return metrics.decode_latency_cold_s or metrics.decode_latency_s


def _separate_interval(base: Summary, head: Summary) -> Interval:
    return Interval(head.ci_low / base.ci_high, head.ci_high / base.ci_low, "from both medians' 95% intervals",
                    SEPARATE_RUNS_COVERAGE)  # fmt: skip


def _interval(change: MetricChange, base: CellResult, head: CellResult, confidence: float) -> Interval | None:
    """The interval of ``change``'s ratio HEAD/BASE (module doc), or None for a single number per side."""
    if change.paired is not None:
        low, high = change.paired.ci_low, change.paired.ci_high
        if change.metric == "bandwidth_gbps":  # the paired ratio is its latency's: bandwidth moves inversely
            low, high = 1.0 / high, 1.0 / low
        return Interval(low, high, "paired signed-rank", confidence)
    if base.metrics is None or head.metrics is None:
        return None
    if change.metric in LATENCY_METRICS:
        base_summary, head_summary = getattr(base.metrics, change.metric), getattr(head.metrics, change.metric)
        if base_summary is None or head_summary is None:
            return None
        return _separate_interval(base_summary, head_summary)
    if change.metric == "bandwidth_gbps":
        base_basis, head_basis = _bandwidth_basis(base.metrics), _bandwidth_basis(head.metrics)
        if base_basis is None or head_basis is None:
            return None
        latency = _separate_interval(base_basis, head_basis)
        return Interval(1.0 / latency.high, 1.0 / latency.low, latency.kind, latency.confidence)
    return None


def _moved(change: MetricChange) -> str:
    relative = change.change
    return "no change from 0" if relative is None else f"{relative:+.1%}"


def reason(change: MetricChange, alpha: float) -> str:
    """Why ``change`` got its verdict, in one sentence with its numbers."""
    threshold = change.threshold
    if change.paired is not None:
        return _paired_reason(change)
    beyond = threshold.exceeded_by(change.base, change.head)
    parts = [f"{_moved(change)} {'beyond' if beyond else 'within'} {threshold.spec}"]
    if change.p_value is not None:
        relation = "<" if change.p_value < alpha else ">="
        parts.append(f"Mann-Whitney U p = {change.p_value:.2g} {relation} {alpha:g}")
    if change.noise is not None and change.base:
        relative = abs(change.head - change.base) / abs(change.base)
        parts.append(f"{'beyond' if relative > change.noise else 'within'} the noise ±{change.noise:.1%}")
    return "; ".join(parts)


def _paired_reason(change: MetricChange) -> str:
    """An interleaved comparison decides on the per-round ratios (harness/compare/changes.py): their
    Hodges-Lehmann ratio against the threshold, their signed-rank interval against 1. Bandwidth takes the
    verdict of the latency it divides by, so its reason speaks of that latency's ratios."""
    p, threshold = change.paired, change.threshold
    assert p is not None
    whose = "its latency's " if change.metric == "bandwidth_gbps" else ""
    if threshold.relative:
        beyond = threshold.exceeded_by(1.0, p.ratio)
        gate = f"{whose}round ratio ×{p.ratio:.3f} {'beyond' if beyond else 'within'} {threshold.spec}"
    else:
        beyond = threshold.exceeded_by(change.base, change.head)
        gate = f"{_moved(change)} {'beyond' if beyond else 'within'} {threshold.spec}"
    if not p.covered:
        interval = f"{len(p.ratios)} rounds are too few for the confidence asked (the interval is [min, max])"
    else:
        side = "excludes" if p.significant else "includes"
        interval = f"{whose}round ratios' interval [{p.ci_low:.3f}, {p.ci_high:.3f}] {side} 1"
    return f"{gate}; {interval}"


def _metric_entry(
    change: MetricChange, base: CellResult | None, head: CellResult | None, comparison: Comparison
) -> dict[str, Any]:
    interval = None if base is None or head is None else _interval(change, base, head, comparison.confidence)
    return {
        "metric": change.metric,
        "base": change.base,
        "head": change.head,
        "ratio": change.head / change.base if change.base else None,
        "interval": None if interval is None else [interval.low, interval.high],
        "interval_kind": None if interval is None else interval.kind,
        "interval_confidence": None if interval is None else interval.confidence,
        "p_value": change.p_value,
        "threshold": change.threshold.spec,
        "noise": change.noise,
        "rounds": None if change.paired is None else len(change.paired.ratios),
        "verdict": change.verdict,
        "reason": reason(change, comparison.alpha),
    }


def _cell_entry(
    cell: CellComparison, bases: dict[tuple[str, str], CellResult], heads: dict[tuple[str, str], CellResult],
    comparison: Comparison,
) -> dict[str, Any]:  # fmt: skip
    key = (cell.scenario, cell.label)
    base, head = bases.get(key), heads.get(key)
    return {
        "scenario": cell.scenario,
        "cell": cell.label,
        "compared": True,
        "verdict": _cell_verdict(cell),
        "base_status": "ok",
        "head_status": "ok",
        "reason": None,
        "metrics": [_metric_entry(change, base, head, comparison) for change in cell.changes],
    }


def _cell_verdict(cell: CellComparison) -> str:
    verdicts = {change.verdict for change in cell.changes}
    return "regression" if "regression" in verdicts else "improvement" if "improvement" in verdicts else "~"


def _side(side: Side) -> dict[str, Any]:
    return {
        "spec": side.spec,
        "kind": side.kind,
        "target": side.target,
        "commits": side.commits,
        "scenarios": [r.scenario.name for r in side.results],
    }


def verdicts(comparison: Comparison) -> dict[str, Any]:
    """The whole comparison as a JSON-ready dict (docs/verdicts.md)."""
    bases, heads = _cells_by_label(comparison.base), _cells_by_label(comparison.head)
    cells = [_cell_entry(cell, bases, heads, comparison) for cell in comparison.cells]
    cells += [
        {
            "scenario": s.scenario,
            "cell": s.label,
            "compared": False,
            "verdict": "regression" if s.is_regression else (s.verdict or "not compared"),
            "base_status": s.base_status,
            "head_status": s.head_status,
            "reason": s.reason,
            "metrics": [],
        }
        for s in comparison.skipped
    ]
    return {
        "schema": SCHEMA,
        "verdict": overall(comparison),
        "exit_code": comparison.exit_code,
        "summary": summary_line(comparison).replace("**", ""),
        "counts": {
            "regressions": comparison.regressions,
            "improvements": comparison.count("improvement"),
            "unchanged": comparison.count("~"),
            "compared_cells": len(comparison.cells),
            "not_compared_cells": len(comparison.skipped),
        },
        "base": _side(comparison.base),
        "head": _side(comparison.head),
        "paired": comparison.paired,
        "confidence": comparison.confidence if comparison.paired else None,
        "alpha": comparison.alpha,
        "thresholds": {metric: t.spec for metric, t in comparison.thresholds.items()},
        "notes": list(comparison.notes),
        "cells": cells,
    }


def render_json(comparison: Comparison) -> str:
    """:func:`verdicts` as indented JSON text, ending in a newline."""
    return json.dumps(verdicts(comparison), indent=1, allow_nan=False) + "\n"
