"""Checks of a result file beyond its schema, run on every load, every problem reported.

:func:`json_problems` runs on the parsed JSON before the schema, and holds for every value,
including the free-form ``environment`` and ``scenario`` tables that the schema leaves open:

- nesting at most ``MAX_NESTING`` levels deep (deeper, nothing else is checked);
- every number finite (Python's json reads ``NaN``, ``Infinity`` and ``1e999``) and every integer
  within 64 bits (it reads integers of thousands of digits too);
- no lone surrogate in any text or key (JSON can spell ``"\\ud800"``, which no UTF-8 file can hold
  and no report can write).

The schema (:mod:`harness.results.schema`) then checks each field alone: types, ranges. What it
cannot see, :func:`result_problems` checks on the validated result:

- an ``ok`` cell has metrics;
- every latency summary agrees with its raw samples: ``median``, ``p10``, ``p90``, ``ci_low`` and
  ``ci_high`` equal a recomputation from the samples (harness/stats/order.py) within rounding,
  which also puts them inside ``[min, max]`` of the samples and in order; each of
  ``process_medians`` lies within ``[min, max]`` (each is the median of some of the samples);
- no two cells have the same coordinates (variant, batch size, context length, dtype, backend);
- each of a cell's placements finishes no earlier than it starts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime

from harness.cellkey import CellKey
from harness.errors import Problem, dotted
from harness.results.schema import CellMetrics, RunResult, Summary
from harness.results.summary import summarize

# Summary values are written with repr() and read back exactly; these only forgive a file whose
# numbers were rounded on the way (to about seven significant digits, or to whole nanoseconds,
# finer than any timer here resolves).
REL_TOLERANCE = 1e-6
ABS_TOLERANCE_S = 1e-9
SUMMARY_STATISTICS = ("median", "p10", "p90", "ci_low", "ci_high")


# Deeper than any result file's structure (cells[].metrics.max_batch.probes[] is 7 levels); a file
# nested deeper is not a result file, and would exhaust the stack of code that walks it.
MAX_NESTING = 32
# Any integer a result holds: counts are signed 64-bit, seeds (scenario.measure.seed) unsigned.
INT_MIN, INT_MAX = -(2**63), 2**64 - 1


def json_problems(data: object, source: str) -> list[Problem]:
    """What is wrong with parsed JSON whatever the field (module doc), in file order."""
    problems: list[Problem] = []
    stack: list[tuple[tuple[int | str, ...], object]] = [((), data)]
    while stack:
        loc, item = stack.pop()
        if len(loc) > MAX_NESTING:
            return [Problem(f"not a result file (nested deeper than {MAX_NESTING} levels)", source)]
        if isinstance(item, dict):
            for key in item:
                if not _is_text(key):
                    problems.append(Problem("the key holds a lone surrogate, not a character", source, dotted(loc)))
            stack.extend(((*loc, key), value) for key, value in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend(((*loc, index), value) for index, value in reversed(list(enumerate(item))))
        elif (reason := _value_problem(item)) is not None:
            problems.append(Problem(reason, source, dotted(loc) or None))
    return problems


def _value_problem(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not INT_MIN <= value <= INT_MAX:
        return f"Input should be a whole number within 64 bits (got one of {len(str(abs(value)))} digits)"
    if isinstance(value, float) and not math.isfinite(value):
        return f"Input should be a finite number (got {value!r})"
    if isinstance(value, str) and not _is_text(value):
        return "Input holds a lone surrogate, not a character"
    return None


def _is_text(value: str) -> bool:
    """Whether ``value`` can be written as UTF-8 (no lone surrogate)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def result_problems(result: RunResult, source: str) -> list[Problem]:
    """Every cross-field problem of ``result`` (read from ``source``), in file order; [] when none."""
    problems: list[Problem] = []
    first_index: dict[CellKey, int] = {}
    for index, cell in enumerate(result.cells):
        path = f"cells[{index}]"
        if cell.key in first_index:
            problems.append(
                Problem(f"the same cell as cells[{first_index[cell.key]}] ({cell.key.label})", source, path)
            )
        else:
            first_index[cell.key] = index
        if cell.status == "ok" and cell.metrics is None:
            problems.append(Problem("an ok cell has no metrics", source, f"{path}.metrics"))
        for round_index, placement in enumerate(cell.placement):
            if datetime.fromisoformat(placement.finished_utc) < datetime.fromisoformat(placement.started_utc):
                problems.append(
                    Problem(
                        f"finishes ({placement.finished_utc}) before it starts ({placement.started_utc})",
                        source,
                        f"{path}.placement[{round_index}].finished_utc",
                    )
                )
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
