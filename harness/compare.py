"""Compare two sets of results cell by cell and decide whether HEAD regressed against BASE.

A latency change counts only when it is both significant on the raw samples (two-sided
Mann-Whitney U below ``alpha``, as asv does) and larger than its threshold (as pytest-benchmark's
``--benchmark-compare-fail`` expresses it); otherwise it is shown as ``~``. Memory, KV-cache bytes,
measured max batch and bandwidth carry no samples and are gated on their threshold alone.

Thresholds are strings ``METRIC:VALUE``: ``VALUE`` ending in ``%`` is relative to BASE, a plain
number is absolute in the metric's unit (``max_batch:0`` flags any drop, ``kv_cache_bytes:0`` any
growth). ``median`` sets every latency metric at once; naming one latency metric overrides it.

Each side of a comparison is a result file, a folder (its newest result per scenario), or a git
revision (its committed results for the target of the other side; when both sides are revisions,
the one target committed at both, or the ``target`` given). An argument naming an existing path is
read as that path, never as a revision. Cells are matched on
``(scenario, variant, batch_size, context_len, dtype, backend)``; cells found on one side only, or
not ``ok`` on either side, are listed rather than dropped. A cell that ran at BASE but failed
(``oom``/``error``) at HEAD counts as a regression.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tabulate import tabulate

from harness.errors import UserError
from harness.measure.stats import mann_whitney_p
from harness.results import gitrev
from harness.results.schema import CellMetrics, CellResult, RunResult, Summary
from harness.results.store import load_result, newest_results
from harness.units import format_bytes

Verdict = Literal["regression", "improvement", "~"]

DEFAULT_ALPHA = 0.01
# Latency metrics, compared whenever both sides carry samples for them (cold ones are optional).
LATENCY_METRICS = ("decode_latency_s", "attention_latency_s", "decode_latency_cold_s", "attention_latency_cold_s")
# Metrics without samples, and whether a larger value is worse.
SCALAR_METRICS: dict[str, bool] = {
    "peak_memory_bytes": True,
    "kv_cache_bytes": True,
    "max_batch": False,  # the measured max batch under the memory budget
    "bandwidth_gbps": False,
}
MEDIAN = "median"  # threshold key for every latency metric
DEFAULT_FAIL_ON = ("median:5%", "peak_memory_bytes:1%", "max_batch:0", "kv_cache_bytes:0", "bandwidth_gbps:5%")
FAIL_ON_FLAG = "--fail-on"


# --- thresholds ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Threshold:
    """How large a change must be to count: a fraction of BASE, or an absolute amount in metric units."""

    amount: float
    relative: bool
    spec: str  # as written, e.g. "median:5%"

    def exceeded_by(self, base: float, head: float) -> bool:
        """Whether ``|head - base|`` is strictly larger than the threshold."""
        delta = abs(head - base)
        if not self.relative:
            return delta > self.amount
        if base == 0:
            return delta > 0
        return delta / abs(base) > self.amount


def parse_threshold(spec: str) -> tuple[str, Threshold]:
    """``"median:5%"`` -> ``("median", Threshold(0.05, relative=True))``; UserError naming the flag if bad."""
    known = (MEDIAN, *LATENCY_METRICS, *SCALAR_METRICS)
    metric, sep, value = spec.strip().partition(":")
    metric, value = metric.strip(), value.strip()
    if not sep or not metric or not value:
        raise UserError(f"{spec!r} is not METRIC:VALUE (e.g. median:5%, max_batch:0)", source=FAIL_ON_FLAG)
    if metric not in known:
        raise UserError(f"{spec!r}: unknown metric {metric!r}; use one of {', '.join(known)}", source=FAIL_ON_FLAG)
    relative = value.endswith("%")
    try:
        amount = float(value.removesuffix("%"))
    except ValueError:
        raise UserError(f"{spec!r}: {value!r} is not a number or a percentage", source=FAIL_ON_FLAG) from None
    if not math.isfinite(amount) or amount < 0:
        raise UserError(f"{spec!r}: the threshold must be a finite number >= 0", source=FAIL_ON_FLAG)
    return metric, Threshold(amount / 100 if relative else amount, relative, f"{metric}:{value}")


def parse_thresholds(specs: Iterable[str] = ()) -> dict[str, Threshold]:
    """The defaults (:data:`DEFAULT_FAIL_ON`) with each given spec replacing the one for its metric.

    A spec may hold several comma-separated entries (``"median:3%,max_batch:0"``).
    """
    thresholds = dict(parse_threshold(spec) for spec in DEFAULT_FAIL_ON)
    for spec in specs:
        for part in spec.split(","):
            metric, threshold = parse_threshold(part)
            thresholds[metric] = threshold
    return thresholds


def _threshold_for(metric: str, thresholds: dict[str, Threshold]) -> Threshold:
    return thresholds.get(metric) or thresholds[MEDIAN]


# --- comparing cells ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricChange:
    """One metric of one cell at BASE and HEAD, and the verdict."""

    metric: str
    base: float
    head: float
    p_value: float | None  # Mann-Whitney U on the raw samples; None for metrics without samples
    threshold: Threshold
    verdict: Verdict
    noise: float | None = None  # run-to-run noise the change had to exceed (relative); None if unknown

    @property
    def change(self) -> float | None:
        """``(head - base) / base``; None when BASE is 0."""
        return (self.head - self.base) / self.base if self.base else None


@dataclass(frozen=True)
class CellComparison:
    scenario: str
    label: str
    changes: tuple[MetricChange, ...]


@dataclass(frozen=True)
class SkippedCell:
    """A cell not compared: absent on one side (status None) or not ``ok`` on one side."""

    scenario: str
    label: str
    base_status: str | None
    head_status: str | None

    @property
    def is_regression(self) -> bool:
        """It ran at BASE and failed at HEAD."""
        return self.base_status == "ok" and self.head_status in ("oom", "error")


def cell_label(cell: CellResult) -> str:
    return f"{cell.variant} b{cell.batch_size} ctx{cell.context_len} {cell.dtype} {cell.backend}"


def _verdict(worse: bool, significant: bool, exceeded: bool) -> Verdict:
    if not (significant and exceeded):
        return "~"
    return "regression" if worse else "improvement"


def run_to_run_noise(*summaries: Summary) -> float | None:
    """The largest relative spread of process medians, (max - min) / median, over the summaries.

    A cell measured in several rounds (``measure.rounds``) has one median per worker process,
    taken at different times of its run: how far they disagree is how much identical code moves
    between runs on this machine, which the samples of one process cannot show (they share its
    memory placement and the machine's state of the moment). None when no side has two rounds.
    """
    spreads = [
        (max(s.process_medians) - min(s.process_medians)) / statistics.median(s.process_medians)
        for s in summaries
        if len(s.process_medians) >= 2
    ]
    return max(spreads) if spreads else None


# A single cell's two or three rounds say little about the spread; the run's typical spread across
# all its cells says more. A latency change must exceed this many times the typical spread too
# (measured here on a shared 2-core VM: typical spread 4.9%, identical runs differing by up to 18%).
MACHINE_NOISE_FACTOR = 3.0


def machine_noise(results: Sequence[RunResult]) -> float | None:
    """Median over every latency summary with several rounds of its relative process-median spread."""
    spreads = [
        noise
        for result in results
        for cell in result.cells
        if cell.metrics is not None
        for metric in LATENCY_METRICS
        if (summary := getattr(cell.metrics, metric)) is not None and (noise := run_to_run_noise(summary)) is not None
    ]
    return statistics.median(spreads) if spreads else None


def _noise_floor(cell_noise: float | None, machine: float | None) -> float | None:
    if machine is None:
        return cell_noise
    return max(cell_noise or 0.0, MACHINE_NOISE_FACTOR * machine)


def _beyond_noise(base: float, head: float, noise: float | None) -> bool:
    return noise is None or base == 0 or abs(head - base) / abs(base) > noise


def _latency_change(
    metric: str, base: Summary, head: Summary, threshold: Threshold, alpha: float, machine: float | None = None
) -> MetricChange:
    p = mann_whitney_p(base.samples, head.samples)
    noise = _noise_floor(run_to_run_noise(base, head), machine)
    exceeded = threshold.exceeded_by(base.median, head.median) and _beyond_noise(base.median, head.median, noise)
    verdict = _verdict(head.median > base.median, p < alpha, exceeded)
    return MetricChange(metric, base.median, head.median, p, threshold, verdict, noise)


def _bandwidth_basis(metrics: CellMetrics) -> Summary | None:
    """The latency that bandwidth_gbps was divided by (see harness.runner.apply_bandwidths)."""
    return metrics.decode_latency_cold_s or metrics.decode_latency_s


def _scalar(metrics: CellMetrics, metric: str) -> float | None:
    if metric == "max_batch":
        return None if metrics.max_batch is None else metrics.max_batch.measured
    value = getattr(metrics, metric)
    return None if value is None else float(value)


def compare_cell(
    scenario: str,
    base: CellResult,
    head: CellResult,
    thresholds: dict[str, Threshold],
    alpha: float,
    machine: float | None = None,
) -> CellComparison:
    """Every metric both sides carry for one matched cell (both ``ok``); ``machine``: see machine_noise."""
    assert base.metrics is not None and head.metrics is not None
    changes: list[MetricChange] = []
    for metric in LATENCY_METRICS:
        base_summary, head_summary = getattr(base.metrics, metric), getattr(head.metrics, metric)
        if base_summary is not None and head_summary is not None:
            changes.append(
                _latency_change(metric, base_summary, head_summary, _threshold_for(metric, thresholds), alpha, machine)
            )
    for metric, larger_is_worse in SCALAR_METRICS.items():
        base_value, head_value = _scalar(base.metrics, metric), _scalar(head.metrics, metric)
        if base_value is None or head_value is None:
            continue
        threshold = thresholds[metric]
        worse = head_value > base_value if larger_is_worse else head_value < base_value
        exceeded = threshold.exceeded_by(base_value, head_value)
        noise = None
        if metric == "bandwidth_gbps":  # derived from a latency median: as noisy as that latency
            basis = [_bandwidth_basis(m) for m in (base.metrics, head.metrics)]
            noise = _noise_floor(run_to_run_noise(*(b for b in basis if b is not None)), machine)
            exceeded = exceeded and _beyond_noise(base_value, head_value, noise)
        verdict = _verdict(worse, True, exceeded)
        changes.append(MetricChange(metric, base_value, head_value, None, threshold, verdict, noise))
    return CellComparison(scenario, cell_label(base), tuple(changes))


def _index(results: Sequence[RunResult], side: str) -> dict[tuple[object, ...], tuple[str, CellResult]]:
    cells: dict[tuple[object, ...], tuple[str, CellResult]] = {}
    for result in results:
        for cell in result.cells:
            key = (result.scenario.name, *cell.key)
            if key in cells:
                raise UserError(
                    f"cell {cell_label(cell)} appears twice in scenario {result.scenario.name!r}", source=side
                )
            cells[key] = (result.scenario.name, cell)
    return cells


# --- the sides of a comparison ------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """One side of a comparison: the argument as given, what it was read as, and its results."""

    spec: str
    kind: Literal["file", "folder", "revision"]
    results: tuple[RunResult, ...]

    @property
    def target(self) -> str:
        return self.results[0].target

    @property
    def commits(self) -> list[str]:
        return sorted({r.git.short or "nogit" for r in self.results})


def _local_side(spec: str) -> Side:
    path = Path(spec)
    if path.is_file():
        return Side(spec, "file", (load_result(path),))
    newest = newest_results(path)
    if not newest:
        raise UserError("holds no result files", source=spec)
    targets = sorted({target for target, _ in newest})
    if len(targets) > 1:
        raise UserError(
            f"holds results for several targets ({', '.join(targets)}); "
            f"pass one target's folder, e.g. {path / targets[0]}",
            source=spec,
        )
    return Side(spec, "folder", tuple(load_result(newest[key]) for key in sorted(newest)))


def _revision_side(spec: str, target: str, scenarios: Sequence[str] | None, cwd: Path | None) -> Side:
    return Side(spec, "revision", tuple(gitrev.committed_results(spec, target, scenarios, cwd)))


def _shared_committed_target(base: str, head: str, cwd: Path | None) -> str:
    base_targets, head_targets = gitrev.committed_targets(base, cwd), gitrev.committed_targets(head, cwd)
    common = sorted(set(base_targets) & set(head_targets))
    if len(common) == 1:
        return common[0]
    if not common:
        raise UserError(
            f"no target has committed results at both revisions (base: {', '.join(base_targets) or 'none'}; "
            f"head: {', '.join(head_targets) or 'none'})",
            source=f"{base}..{head}",
        )
    raise UserError(f"several targets have results at both revisions ({', '.join(common)}); choose one with --target")


def load_sides(base: str, head: str, target: str | None = None, cwd: Path | None = None) -> tuple[Side, Side]:
    """Read both sides; a revision takes the target (and scenarios) of the other side (module doc)."""
    base_local, head_local = Path(base).exists(), Path(head).exists()
    if base_local and head_local:
        return _local_side(base), _local_side(head)
    if base_local or head_local:
        local = _local_side(base if base_local else head)
        scenarios = [r.scenario.name for r in local.results]
        other = _revision_side(head if base_local else base, target or local.target, scenarios, cwd)
        return (local, other) if base_local else (other, local)
    chosen = target or _shared_committed_target(base, head, cwd)
    return _revision_side(base, chosen, None, cwd), _revision_side(head, chosen, None, cwd)


# --- the whole comparison -----------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    base: Side
    head: Side
    thresholds: dict[str, Threshold]
    alpha: float
    cells: tuple[CellComparison, ...]
    skipped: tuple[SkippedCell, ...]
    notes: tuple[str, ...] = field(default=())

    def count(self, verdict: Verdict) -> int:
        return sum(c.verdict == verdict for cell in self.cells for c in cell.changes)

    @property
    def regressions(self) -> int:
        return self.count("regression") + sum(s.is_regression for s in self.skipped)

    @property
    def exit_code(self) -> int:
        """1 when anything regressed, else 0."""
        return 1 if self.regressions else 0


def compare_sides(
    base: Side,
    head: Side,
    thresholds: dict[str, Threshold] | None = None,
    alpha: float = DEFAULT_ALPHA,
    allow_cross_target: bool = False,
) -> Comparison:
    """Match cells of both sides and compare each matched pair; refuse different targets unless allowed."""
    if not 0 < alpha < 1:
        raise UserError(f"must lie between 0 and 1, got {alpha}", source="--alpha")
    notes: list[str] = []
    if base.target != head.target:
        if not allow_cross_target:
            raise UserError(
                f"results come from different hardware targets (base: {base.target}, head: {head.target}); "
                "timings and memory are only comparable on one target. Pass --allow-cross-target to compare anyway"
            )
        notes.append(
            f"targets differ ({base.target} vs {head.target}); compared because --allow-cross-target was given"
        )
    thresholds = thresholds if thresholds is not None else parse_thresholds()
    machine = machine_noise([*base.results, *head.results])
    if machine is not None:
        notes.append(
            f"run-to-run noise: process medians of one cell spread {machine:.1%} (median over cells); "
            f"a latency change must also exceed {MACHINE_NOISE_FACTOR:g}x that, or its own cell's spread if larger"
        )
    base_cells, head_cells = _index(base.results, base.spec), _index(head.results, head.spec)
    compared: list[CellComparison] = []
    skipped: list[SkippedCell] = []
    for key in [*base_cells, *(k for k in head_cells if k not in base_cells)]:
        scenario, some_cell = base_cells.get(key) or head_cells[key]
        base_cell = base_cells.get(key, (scenario, None))[1]
        head_cell = head_cells.get(key, (scenario, None))[1]
        if base_cell is not None and head_cell is not None and base_cell.status == head_cell.status == "ok":
            compared.append(compare_cell(scenario, base_cell, head_cell, thresholds, alpha, machine))
        else:
            skipped.append(
                SkippedCell(
                    scenario,
                    cell_label(some_cell),
                    None if base_cell is None else base_cell.status,
                    None if head_cell is None else head_cell.status,
                )
            )
    return Comparison(base, head, thresholds, alpha, tuple(compared), tuple(skipped), tuple(notes))


# --- rendering ----------------------------------------------------------------------------------


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


def render_markdown(comparison: Comparison, only_changed: bool = False) -> str:
    """The comparison as GitHub markdown: one table per scenario, cells not compared, a summary line."""
    thresholds = ", ".join(t.spec for t in comparison.thresholds.values())
    lines = [
        "## attnbench compare",
        "",
        _side_line("base", comparison.base),
        _side_line("head", comparison.head),
        f"- gates: {thresholds}; latency also needs Mann-Whitney U p < {comparison.alpha:g} (two-sided)"
        " and, where cells were measured in several rounds, a change beyond their run-to-run noise",
        *(f"- note: {note}" for note in comparison.notes),
    ]
    headers = ["cell", "metric", "base", "head", "change", "p-value", "noise", "verdict"]
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
                        "" if change.noise is None else f"±{change.noise:.1%}",
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
                "regression" if s.is_regression else "",
            ]
            for s in comparison.skipped
        ]
        lines += [
            "",
            "### not compared",
            "",
            tabulate(rows, ["scenario", "cell", "base", "head", "verdict"], tablefmt="github", disable_numparse=True),
        ]
    lines += ["", summary_line(comparison)]
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
