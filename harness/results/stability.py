"""Whether a cell's latencies held still enough to trust: three rules, assessed over a whole run.

A cell is ``unstable`` when any of these holds, each recorded as a sentence with its numbers:

1. **Rounds disagree beyond their own samples.** Two measurement rounds (separate processes, minutes
   apart) whose medians' 95% confidence intervals do not overlap and whose medians differ by more
   than ``ROUND_DISAGREEMENT`` (10%): the machine changed between them more than either round's
   samples can show.
2. **Spread far above the run's.** The cell's p10-p90 width, relative to its median, is more than
   ``SPREAD_FACTOR`` (4x) the run's typical (median over cells) width for that metric, and more than
   ``SPREAD_MIN`` (25%): its samples were disturbed while the rest of the run's were not.
3. **The host was busy while it was timed.** In some round, other processes and the hypervisor
   (steal) took more than ``CONTENDED_CORES`` (a quarter of a core) on average during its timed
   windows (harness/measure/hostload.py); on a GPU, another process on the device or throttling
   (the cell's ``gpu_not_shared`` and ``no_throttling`` checks).

The thresholds are set from this project's own machines: a quiet 2-core VM shows rounds within a
few percent, p10-p90 widths of 2-10%, and other processes below 5% of a core; a CPU hog shows a
whole core and widths of several times the median. Consumers: the report marks and lists unstable
cells, the claims check calls claims resting on them inconclusive, compare reports them as
``unstable`` instead of a change, and ``attnbench run --resume --rerun-unstable`` measures them again.

An interleaved comparison (``attnbench ab``) pairs each round of BASE with a round of HEAD taken
moments apart, and decides on the per-round ratios (harness/stats/paired.py): the drift between
rounds (rule 1) and within them (rule 2) moves both sides of a round alike, and ratios that still
disagree widen their interval until it no longer excludes 1. There only rule 3, what
was measured of the host itself, makes a cell unstable (:func:`paired_reasons`). On a shared VM
whose neighbours drift by 10-50% from one round to the next, that is the difference between
comparing nothing and comparing every cell.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from harness.results.schema import CellResult, RunResult, Stability, Summary
from harness.stats.order import median_ci, percentile_sorted

ROUND_DISAGREEMENT = 0.10
SPREAD_FACTOR = 4.0
SPREAD_MIN = 0.25
CONTENDED_CORES = 0.25
# Latencies whose stability is assessed (cold samples are single calls and noisier by nature; they
# follow the warm ones' verdict through the host-load rule).
ASSESSED = ("decode_latency_s", "attention_latency_s")
GPU_CONTENTION_CHECKS = ("gpu_not_shared", "no_throttling")


def relative_spread(summary: Summary) -> float:
    """(p90 - p10) / median."""
    return (summary.p90 - summary.p10) / summary.median if summary.median > 0 else 0.0


def rounds_of(summary: Summary) -> list[list[float]]:
    """The samples of each round, when the summary records how many each contributed."""
    sizes = summary.process_sizes
    if len(sizes) < 2 or sum(sizes) != len(summary.samples):
        return []
    out, start = [], 0
    for size in sizes:
        out.append(summary.samples[start : start + size])
        start += size
    return out


def _reference_move(cell: CellResult, i: int, j: int) -> str:
    """How far the bare reference loop moved between rounds i and j's processes (0-based), as a clause of the
    round-disagreement reason; empty when either round has no reference. A move as large as the cell's shows the
    machine itself moved between the two processes; a still reference does not clear the machine (on a 2-core VM
    bare loops' rounds disagreed as often as the harness's while the reference's moves did not predict which
    cells: docs/metrics.md, benchmarks/bare_rounds.py)."""
    loads = cell.host_load
    if max(i, j) >= len(loads):
        return ""
    first, second = loads[i].reference_s, loads[j].reference_s
    if first is None or second is None or min(first, second) <= 0:
        return ""
    moved = abs(first - second) / min(first, second)
    return f"; the reference loop moved {moved:.0%} between the same two rounds' processes"


def _round_disagreement(metric: str, summary: Summary, cell: CellResult | None = None) -> str | None:
    rounds = [r for r in rounds_of(summary) if r]
    intervals = [(statistics.median(r), *median_ci(r)) for r in rounds]
    worst: tuple[float, int, int] | None = None
    for i, (m_i, low_i, high_i) in enumerate(intervals):
        for j, (m_j, low_j, high_j) in enumerate(intervals[i + 1 :], start=i + 1):
            disjoint = high_i < low_j or high_j < low_i
            difference = abs(m_i - m_j) / min(m_i, m_j) if min(m_i, m_j) > 0 else 0.0
            if disjoint and difference > ROUND_DISAGREEMENT and (worst is None or difference > worst[0]):
                worst = (difference, i, j)
    if worst is None:
        return None
    difference, i, j = worst
    return (
        f"{metric}: rounds {i + 1} and {j + 1} disagree by {difference:.0%} (medians {intervals[i][0] * 1e3:.4g} and "
        f"{intervals[j][0] * 1e3:.4g} ms, 95% intervals disjoint)"
        + ("" if cell is None else _reference_move(cell, i, j))
    )


def _spread(metric: str, summary: Summary, typical: float | None) -> str | None:
    spread = relative_spread(summary)
    if typical is None or spread <= max(SPREAD_MIN, SPREAD_FACTOR * typical):
        return None
    return (
        f"{metric}: p10-p90 spans {spread:.0%} of the median, {spread / typical:.1f}x the run's typical {typical:.0%}"
    )


def contention_reasons(cell: CellResult) -> list[str]:
    """Rule 3: the host (or the GPU) busy with other work while the cell was timed, in any round."""
    reasons = []
    busiest = max(cell.host_load, key=lambda load: load.other_cores, default=None)
    if busiest is not None and busiest.other_cores > CONTENDED_CORES:
        round_number = cell.host_load.index(busiest) + 1
        reasons.append(
            f"host busy while timing (round {round_number}): other processes {busiest.other_cpu_s:.2f} CPU-s and "
            f"steal {busiest.steal_s:.2f} s in {busiest.wall_s:.2f} s, {busiest.other_cores:.2f} cores on average"
        )
    failed = [name for name in GPU_CONTENTION_CHECKS if name in cell.checks_failed]
    if failed:
        reasons.append(f"GPU contended while timing ({', '.join(failed)} failed)")
    return reasons


def typical_spreads(cells: Sequence[CellResult]) -> dict[str, float]:
    """The median relative p10-p90 width per assessed metric over the ``ok`` cells that have it."""
    out = {}
    for metric in ASSESSED:
        spreads = [
            relative_spread(summary)
            for cell in cells
            if cell.status == "ok" and cell.metrics is not None and (summary := getattr(cell.metrics, metric))
        ]
        if spreads:
            out[metric] = statistics.median(spreads)
    return out


def assess_cell(cell: CellResult, typical: dict[str, float]) -> Stability:
    """The three rules (module doc) on one cell, against the run's typical spreads."""
    reasons: list[str] = []
    if cell.metrics is not None:
        for metric in ASSESSED:
            summary = getattr(cell.metrics, metric)
            if summary is None:
                continue
            for reason in (_round_disagreement(metric, summary, cell), _spread(metric, summary, typical.get(metric))):
                if reason is not None:
                    reasons.append(reason)
    reasons += contention_reasons(cell)
    return Stability(unstable=bool(reasons), reasons=reasons)


def assess_run(result: RunResult) -> None:
    """Set every ``ok`` cell's stability, in place."""
    typical = typical_spreads(result.cells)
    for index, cell in enumerate(result.cells):
        if cell.status == "ok":
            result.cells[index] = cell.model_copy(update={"stability": assess_cell(cell, typical)})


@dataclass(frozen=True)
class NoiseFloor:
    """How much the bare reference loop (harness/measure/reference.py) moved between a run's workers."""

    workers: int  # measuring processes that timed the reference
    median_s: float  # median of their reference medians
    spread: float  # (p90 - p10) / median of their reference medians: the machine's process-to-process noise
    max_deviation: float  # the worker furthest from the median, relative to it

    def describe(self) -> str:
        return (
            f"noise floor: the bare reference loop ({self.median_s * 1e3:.3g} ms) moved by {self.spread:.1%} "
            f"(p10-p90) across {self.workers} measuring processes, at most {self.max_deviation:.1%} from its median"
        )


def noise_floor(cells: Sequence[CellResult]) -> NoiseFloor | None:
    """The run's noise floor from every round's reference reading, or None where fewer than two were taken."""
    medians = sorted(load.reference_s for cell in cells for load in cell.host_load if load.reference_s is not None)
    if len(medians) < 2:
        return None
    middle = percentile_sorted(medians, 0.5)
    return NoiseFloor(
        workers=len(medians),
        median_s=middle,
        spread=(percentile_sorted(medians, 0.9) - percentile_sorted(medians, 0.1)) / middle,
        max_deviation=max(abs(m - middle) for m in medians) / middle,
    )


def paired_reasons(cell: CellResult) -> list[str]:
    """Why a cell of an interleaved comparison is unstable: rule 3 alone (module doc); the pairing
    cancels what rules 1 and 2 see."""
    return contention_reasons(cell)
