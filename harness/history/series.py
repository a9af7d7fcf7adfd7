"""Every result of a target as series over commits: per cell and metric, one point per result file.

The commit axis is git's: the commits of the results that HEAD's history holds, oldest first in
topological order (:func:`harness.results.gitrev.commit_order`); a run of a working tree with
uncommitted changes sits right after its commit, and results whose commit HEAD's history does not
hold (another branch, no git) come last, in the order they ran, marked as such. A cell is one series
per scenario, variant, batch size, context, dtype and backend; when a scenario's model or ``--quick``
changed between runs, each definition is a series of its own (its numbers measure something else).
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.compare.changes import cell_label
from harness.history.steps import Step, detect_steps
from harness.results.schema import CellMetrics, CellResult, RunResult, Summary

# What the history follows, in the order its charts appear: (field, title, unit).
METRICS: tuple[tuple[str, str, str], ...] = (
    ("decode_latency_s", "decode latency (warm median, 95% interval)", "s"),
    ("bandwidth_fraction", "bandwidth, fraction of the measured peak", ""),
    ("peak_memory_bytes", "peak memory", "bytes"),
    ("max_batch", "max batch under the budget (measured)", "sequences"),
)


@dataclass(frozen=True)
class Commit:
    """One place on the commit axis."""

    position: int
    commit: str | None  # full hash; None for a run outside git
    short: str
    dirty: bool  # a working tree with uncommitted changes on top of ``commit``
    in_history: bool  # HEAD's history holds the commit

    @property
    def label(self) -> str:
        return self.short + ("+dirty" if self.dirty else "") + ("" if self.in_history else " (not in HEAD)")


@dataclass(frozen=True)
class Point:
    """One metric of one cell in one result file."""

    position: int  # on the commit axis
    file: str
    started_utc: str
    value: float
    low: float | None  # its interval, where the metric has one
    high: float | None
    unstable: str | None  # why the cell's numbers are not to be trusted (unstable, failed self-checks)
    assessed: bool  # the file recorded the cell's stability at all (older files did not)


@dataclass(frozen=True)
class Series:
    scenario: str
    cell: str  # cell_label, with the definition's hash when the scenario changed between runs
    metric: str
    points: tuple[Point, ...]
    steps: tuple[Step, ...]  # indices into ``levels``' positions (see level_positions)
    level_positions: tuple[int, ...]  # the commit positions the step detection saw, one value each


@dataclass(frozen=True)
class TargetHistory:
    target: str
    commits: tuple[Commit, ...]
    series: tuple[Series, ...]
    files: tuple[str, ...]
    models: dict[str, str]  # scenario -> its model's scale and dtype, from its newest result

    def scenarios(self) -> list[str]:
        return list(dict.fromkeys(s.scenario for s in self.series))


def definition(result: RunResult) -> str:
    """A short hash of what decides a cell's numbers besides its coordinates: the scenario's model
    table and ``--quick``."""
    text = json.dumps({"model": result.scenario.model, "quick": result.quick}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def commit_axis(results: Sequence[RunResult], order: dict[str, int]) -> dict[tuple[str | None, bool], Commit]:
    """The axis (module doc) for ``results``, keyed by (commit, dirty)."""
    first_run: dict[tuple[str | None, bool], str] = {}
    for result in results:
        key = (result.git.commit, bool(result.git.dirty))
        first_run[key] = min(first_run.get(key, result.started_utc), result.started_utc)

    def sort_key(key: tuple[str | None, bool]) -> tuple[int, int, str]:
        commit, dirty = key
        if commit is not None and commit in order:
            return (0, order[commit] * 2 + int(dirty), "")
        return (1, 0, first_run[key])

    axis = {}
    for position, key in enumerate(sorted(first_run, key=sort_key)):
        commit, dirty = key
        short = commit[:7] if commit else "nogit"
        axis[key] = Commit(position, commit, short, dirty, commit is not None and commit in order)
    return axis


def _interval_of(summary: Summary | None) -> tuple[float | None, float | None]:
    return (None, None) if summary is None else (summary.ci_low, summary.ci_high)


def metric_value(metrics: CellMetrics, metric: str) -> tuple[float, float | None, float | None] | None:
    """(value, low, high) of ``metric`` for one cell, or None when the cell has no such value."""
    if metric == "decode_latency_s":
        summary = metrics.decode_latency_s
        return None if summary is None else (summary.median, *_interval_of(summary))
    if metric == "bandwidth_fraction":
        fraction = metrics.bandwidth_fraction
        if fraction is None:
            return None
        basis = metrics.decode_latency_cold_s if metrics.bandwidth_basis == "cold" else metrics.decode_latency_s
        if basis is None:
            return (fraction, None, None)
        # bandwidth is bytes over the basis latency's median: its interval is that latency's, inverted
        return (fraction, fraction * basis.median / basis.ci_high, fraction * basis.median / basis.ci_low)
    if metric == "peak_memory_bytes":
        return None if metrics.peak_memory_bytes is None else (float(metrics.peak_memory_bytes), None, None)
    if metric == "max_batch":
        found = metrics.max_batch
        if found is None or found.measured is None:
            return None
        spread = found.uncertainty
        if not spread:
            return (float(found.measured), None, None)
        return (float(found.measured), float(max(found.measured - spread, 0)), float(found.measured + spread))
    raise ValueError(f"unknown history metric {metric!r}")


def _distrust(cell: CellResult) -> str | None:
    if cell.unstable and cell.stability is not None:
        return "unstable: " + ("; ".join(cell.stability.reasons) or "no reason recorded")
    if cell.checks_failed:
        return "failed self-checks: " + ", ".join(dict.fromkeys(cell.checks_failed))
    return None


def _weight(points: Iterable[Point]) -> float | None:
    """The inverse of the relative width of the points' intervals (their median), as asv weights its points."""
    widths = [(p.high - p.low) / p.value for p in points if p.low is not None and p.high is not None and p.value > 0]
    widths = [w for w in widths if w > 0]
    return 1.0 / statistics.median(widths) if widths else None


def _levels(points: Sequence[Point]) -> tuple[list[int], list[float], list[float] | None]:
    """One value per commit position (the median of its points) and its weight, for step detection.
    Points whose cell was unstable or failed a self-check are left out: they are marked, not believed."""
    points = [p for p in points if p.unstable is None]
    positions = sorted({p.position for p in points})
    at = {pos: [p for p in points if p.position == pos] for pos in positions}
    values = [statistics.median(p.value for p in at[pos]) for pos in positions]
    weights = [_weight(at[pos]) for pos in positions]
    known = [w for w in weights if w is not None]
    if not known:
        return positions, values, None
    fill = statistics.median(known)
    return positions, values, [fill if w is None else w for w in weights]


def build_history(target: str, loaded: Sequence[tuple[Path, RunResult]], order: dict[str, int]) -> TargetHistory:
    """The history of ``target`` from its result files (already validated), on git's commit ``order``."""
    results = [result for _, result in loaded]
    axis = commit_axis(results, order)
    definitions: dict[str, set[str]] = {}
    for result in results:
        definitions.setdefault(result.scenario.name, set()).add(definition(result))
    points: dict[tuple[str, str, str], list[Point]] = {}
    for path, result in sorted(loaded, key=lambda item: item[1].started_utc):
        position = axis[(result.git.commit, bool(result.git.dirty))].position
        several = len(definitions[result.scenario.name]) > 1
        for cell in result.cells:
            if cell.status != "ok" or cell.metrics is None:
                continue
            label = cell_label(cell) + (f" [definition {definition(result)}]" if several else "")
            for metric, _, _ in METRICS:
                found = metric_value(cell.metrics, metric)
                if found is None:
                    continue
                value, low, high = found
                point = Point(
                    position,
                    path.name,
                    result.started_utc,
                    value,
                    low,
                    high,
                    _distrust(cell),
                    cell.stability is not None,
                )
                points.setdefault((result.scenario.name, label, metric), []).append(point)
    series = []
    for (scenario, label, metric), found_points in sorted(points.items()):
        positions, values, weights = _levels(found_points)
        steps = tuple(detect_steps(values, weights))
        series.append(Series(scenario, label, metric, tuple(found_points), steps, tuple(positions)))
    commits = tuple(sorted(axis.values(), key=lambda c: c.position))
    models = {result.scenario.name: model_scale(result) for result in sorted(results, key=lambda r: r.started_utc)}
    return TargetHistory(target, commits, tuple(series), tuple(sorted({path.name for path, _ in loaded})), models)


def model_scale(result: RunResult) -> str:
    """``d_model 512, 8 layers, float32``: what a title says of the model measured."""
    model = result.scenario.model
    parts = [
        f"d_model {model['d_model']}" if "d_model" in model else "",
        f"{model['n_layers']} layers" if "n_layers" in model else "",
    ]
    parts.append(str(model.get("dtype", "")))
    return ", ".join(p for p in parts if p)
