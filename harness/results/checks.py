"""Checks of a result file that relate several fields, run on every load after the schema's own.

The schema (:mod:`harness.results.schema`) checks each field alone: types, ranges, finiteness.
What it cannot see is checked here, every problem reported rather than the first:

- an ``ok`` cell has metrics;
- every latency summary agrees with its raw samples: ``median``, ``p10``, ``p90``, ``ci_low`` and
  ``ci_high`` equal a recomputation from the samples (harness/measure/stats.py) within rounding,
  which also puts them inside ``[min, max]`` of the samples and in order; each of
  ``process_medians`` lies within ``[min, max]`` (each is the median of some of the samples);
- no two cells have the same coordinates (variant, batch size, context length, dtype, backend).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from harness.errors import Problem
from harness.measure.stats import summarize
from harness.results.schema import CellMetrics, CellResult, RunResult, Summary

# Summary values are written with repr() and read back exactly; these only forgive a file whose
# numbers were rounded on the way (to about seven significant digits, or to whole nanoseconds,
# finer than any timer here resolves).
REL_TOLERANCE = 1e-6
ABS_TOLERANCE_S = 1e-9
SUMMARY_STATISTICS = ("median", "p10", "p90", "ci_low", "ci_high")


def result_problems(result: RunResult, source: str) -> list[Problem]:
    """Every cross-field problem of ``result`` (read from ``source``), in file order; [] when none."""
    problems: list[Problem] = []
    first_index: dict[tuple[str, int, int, str, str], int] = {}
    for index, cell in enumerate(result.cells):
        path = f"cells[{index}]"
        if cell.key in first_index:
            problems.append(Problem(f"the same cell as cells[{first_index[cell.key]}] ({_label(cell)})", source, path))
        else:
            first_index[cell.key] = index
        if cell.status == "ok" and cell.metrics is None:
            problems.append(Problem("an ok cell has no metrics", source, f"{path}.metrics"))
        if cell.metrics is not None:
            for name, summary in _summaries(cell.metrics):
                problems += [
                    Problem(reason, source, f"{path}.metrics.{name}.{field}")
                    for field, reason in summary_problems(summary)
                ]
    return problems


def summary_problems(summary: Summary) -> list[tuple[str, str]]:
    """``(field, reason)`` for each statistic of ``summary`` that its samples do not give."""
    low, high = min(summary.samples), max(summary.samples)
    recomputed = summarize(summary.samples)
    problems = []
    for field in SUMMARY_STATISTICS:
        value, expected = getattr(summary, field), getattr(recomputed, field)
        if not math.isclose(value, expected, rel_tol=REL_TOLERANCE, abs_tol=ABS_TOLERANCE_S):
            if not low <= value <= high:
                problems.append((field, f"{value!r} lies outside the samples' range [{low!r}, {high!r}]"))
            else:
                problems.append((field, f"{value!r} does not follow from the samples (recomputed: {expected!r})"))
    for index, median in enumerate(summary.process_medians):
        if not _within(median, low, high):
            problems.append(
                (f"process_medians[{index}]", f"{median!r} lies outside the samples' range [{low!r}, {high!r}]")
            )
    return problems


def _within(value: float, low: float, high: float) -> bool:
    return low * (1 - REL_TOLERANCE) - ABS_TOLERANCE_S <= value <= high * (1 + REL_TOLERANCE) + ABS_TOLERANCE_S


def _summaries(metrics: CellMetrics) -> Iterator[tuple[str, Summary]]:
    for name in CellMetrics.model_fields:
        value = getattr(metrics, name)
        if isinstance(value, Summary):
            yield name, value


def _label(cell: CellResult) -> str:
    return f"{cell.variant} b{cell.batch_size} ctx{cell.context_len} {cell.dtype} {cell.backend}"
