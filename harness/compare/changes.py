"""Comparing one matched cell: significance, thresholds and run-to-run noise, metric by metric."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from harness.cellkey import CellKey
from harness.compare.thresholds import LATENCY_METRICS, SCALAR_METRICS, Threshold, Verdict, threshold_for
from harness.errors import UserError
from harness.results.schema import CellMetrics, CellResult, RunResult, Summary
from harness.stats.order import mann_whitney_p, relative_range
from harness.stats.paired import PAIRED_CONFIDENCE, PairedChange, paired_change


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
    paired: PairedChange | None = None  # interleaved runs: the per-round ratios and their interval

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
    """A cell not compared: absent on one side (status None), not ``ok`` on one side, or ``ok`` on both
    but not to be compared (``verdict`` "inconclusive" or "not comparable", ``reason`` says why)."""

    scenario: str
    label: str
    base_status: str | None
    head_status: str | None
    verdict: str = ""
    reason: str = ""

    @property
    def is_regression(self) -> bool:
        """It ran at BASE and failed at HEAD."""
        return self.base_status == "ok" and self.head_status in ("oom", "killed", "error", "timeout")


def cell_label(cell: CellResult) -> str:
    return cell.key.label


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
    spreads = [relative_range(s.process_medians) for s in summaries if len(s.process_medians) >= 2]
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


def latency_change(
    metric: str, base: Summary, head: Summary, threshold: Threshold, alpha: float, machine: float | None = None
) -> MetricChange:
    p = mann_whitney_p(base.samples, head.samples)
    noise = _noise_floor(run_to_run_noise(base, head), machine)
    exceeded = threshold.exceeded_by(base.median, head.median) and _beyond_noise(base.median, head.median, noise)
    verdict = _verdict(head.median > base.median, p < alpha, exceeded)
    return MetricChange(metric, base.median, head.median, p, threshold, verdict, noise)


def paired_latency_change(
    metric: str,
    base: Summary,
    head: Summary,
    threshold: Threshold,
    confidence: float = PAIRED_CONFIDENCE,
) -> MetricChange | None:
    """The change of an interleaved comparison's latency: significant when the signed-rank interval of its
    per-round ratios at ``confidence`` excludes 1, a change when their Hodges-Lehmann ratio is also beyond
    the threshold (harness/stats/paired.py).
    Mann-Whitney U on the pooled samples is reported, not required: the machine's drift between rounds
    widens both sides' pooled samples alike and hides from it what the per-round ratios see. None when
    the two sides do not have the same number of rounds."""
    if len(base.process_medians) != len(head.process_medians) or len(base.process_medians) < 2:
        return None
    change = paired_change(base.process_medians, head.process_medians, base.samples, head.samples, confidence)
    exceeded = threshold.exceeded_by(1.0, change.ratio) if threshold.relative else (
        threshold.exceeded_by(base.median, head.median)
    )  # fmt: skip
    verdict = _verdict(change.ratio > 1, change.significant, exceeded)
    return MetricChange(metric, base.median, head.median, change.p_value, threshold, verdict, paired=change)


def _bandwidth_basis(metrics: CellMetrics) -> Summary | None:
    """The latency that bandwidth_gbps was divided by (see harness.run.runner.apply_bandwidths)."""
    return metrics.decode_latency_cold_s or metrics.decode_latency_s


def _max_batch_uncertainty(metrics: CellMetrics) -> int:
    """± sequences the measured max batch moves between identical probes (0 where exact or unknown)."""
    return 0 if metrics.max_batch is None or metrics.max_batch.uncertainty is None else metrics.max_batch.uncertainty


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
    paired_confidence: float | None = None,
) -> CellComparison:
    """Every metric both sides carry for one matched cell (both ``ok``); ``machine``: see machine_noise.

    ``paired_confidence`` (the two sides are one interleaved comparison whose intervals are asked for
    this confidence): latencies, and bandwidth through the latency it divides by, are decided on
    per-round ratios (harness/stats/paired.py).
    """
    assert base.metrics is not None and head.metrics is not None
    changes: list[MetricChange] = []
    for metric in LATENCY_METRICS:
        base_summary, head_summary = getattr(base.metrics, metric), getattr(head.metrics, metric)
        if base_summary is not None and head_summary is not None:
            threshold = threshold_for(metric, thresholds)
            change = None
            if paired_confidence is not None:
                change = paired_latency_change(metric, base_summary, head_summary, threshold, paired_confidence)
            changes.append(change or latency_change(metric, base_summary, head_summary, threshold, alpha, machine))
    for metric, larger_is_worse in SCALAR_METRICS.items():
        base_value, head_value = _scalar(base.metrics, metric), _scalar(head.metrics, metric)
        if base_value is None or head_value is None:
            continue
        threshold = thresholds[metric]
        worse = head_value > base_value if larger_is_worse else head_value < base_value
        exceeded = threshold.exceeded_by(base_value, head_value)
        noise = None
        paired_basis = None
        if metric == "bandwidth_gbps":  # derived from a latency median: as noisy as that latency
            basis = [_bandwidth_basis(m) for m in (base.metrics, head.metrics)]
            if paired_confidence is not None and basis[0] is not None and basis[1] is not None:
                paired_basis = paired_latency_change(metric, basis[0], basis[1], threshold, paired_confidence)
            noise = _noise_floor(run_to_run_noise(*(b for b in basis if b is not None)), machine)
            exceeded = exceeded and _beyond_noise(base_value, head_value, noise)
        if paired_basis is not None:  # a slower step is a lower bandwidth: the latency's paired verdict holds
            verdict = paired_basis.verdict
            evidence = (paired_basis.p_value, threshold, verdict, None, paired_basis.paired)
            changes.append(MetricChange(metric, base_value, head_value, *evidence))
            continue
        if metric == "max_batch":  # a boundary found by probing: it moves by its measured repeatability
            sequences = sum(_max_batch_uncertainty(m) for m in (base.metrics, head.metrics))
            if sequences:
                noise = sequences / base_value if base_value else None
                exceeded = exceeded and abs(head_value - base_value) > sequences
        verdict = _verdict(worse, True, exceeded)
        changes.append(MetricChange(metric, base_value, head_value, None, threshold, verdict, noise))
    return CellComparison(scenario, cell_label(base), tuple(changes))


def index_cells(results: Sequence[RunResult], side: str) -> dict[tuple[str, CellKey], tuple[str, CellResult]]:
    """Every cell of ``results`` by its scenario's name and its key; UserError for a cell listed twice."""
    cells: dict[tuple[str, CellKey], tuple[str, CellResult]] = {}
    for result in results:
        for cell in result.cells:
            key = (result.scenario.name, cell.key)
            if key in cells:
                raise UserError(
                    f"cell {cell_label(cell)} appears twice in scenario {result.scenario.name!r}", source=side
                )
            cells[key] = (result.scenario.name, cell)
    return cells
