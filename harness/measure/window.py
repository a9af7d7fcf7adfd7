"""How long to warm up and how many samples to take: both decided by what the step itself does.

A fixed warm-up (say 20 ms) ends wherever it ends: in a fresh process the first calls of a decode
step still fault pages in, grow the allocator and fill the CPU's caches and branch predictors, so a
round that starts timing too early has a median between the cold start and the steady state, a
different one in every process. A fixed timing window has the same flaw the other way round: five
samples of a noisy step give a median whose own uncertainty is wider than the change one wants to see.
So both are sized by measuring (docs/metrics.md, "Warm-up and timing window"):

- **Warm-up until steady.** The step is called in short windows (at least ``WINDOW_CALLS`` calls and
  ``WINDOW_S`` seconds each); warm-up ends once the medians of the last ``STEADY_WINDOWS`` windows lie
  within ``tolerance`` of each other (relative to the smallest), and at least ``min_s`` has passed,
  or at ``max_s``, when the reading says it never got steady.
- **A window sized by the noise.** Samples are taken until the distribution-free 95% confidence
  interval of their median (harness/stats/order.py, order statistics) lies within ``target`` of the
  median on both sides, once the scenario's least time and count are in; ``max_s`` and
  ``max_samples`` cap it. The half-width reached is recorded with the samples, so a reader sees how
  well each round pinned its median down, and whether it got there.

Stopping when an interval is narrow enough (optional stopping) makes that interval a little
optimistic; it is used only to size the window, and every statistic downstream is recomputed from
the raw samples.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from harness.stats.order import median_ci

WINDOW_S = 0.01  # a warm-up window lasts at least this long ...
WINDOW_CALLS = 3  # ... and holds at least this many calls
STEADY_WINDOWS = 3  # warm-up is over when this many successive window medians agree
STEADY_TOLERANCE = 0.02  # ... within this fraction, when no timing target (target_ci) says otherwise


@dataclass(frozen=True)
class WarmUp:
    """How long a warm-up ran, and whether the step's time had stopped moving when it ended."""

    seconds: float
    steady: bool | None  # False: it stopped at its cap with the window medians still moving; None: not assessed
    windows: int  # windows whose medians were compared (0 for a fixed warm-up)


def window_medians_steady(medians: Sequence[float], tolerance: float) -> bool:
    """Do the last ``STEADY_WINDOWS`` window medians lie within ``tolerance`` of the smallest of them?"""
    recent = list(medians[-STEADY_WINDOWS:])
    if len(recent) < STEADY_WINDOWS:
        return False
    return max(recent) - min(recent) <= tolerance * min(recent)


def warm_up_until_steady(
    fn: Callable[[], object],
    *,
    min_s: float,
    max_s: float,
    tolerance: float,
    sync: Callable[[], None] | None = None,
) -> WarmUp:
    """Call ``fn`` (then ``sync``) in windows until their medians hold still (module doc), within ``max_s``."""
    if not 0 <= min_s <= max_s:
        raise ValueError(f"need 0 <= min_s <= max_s, got {min_s} and {max_s}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    start = time.perf_counter()
    medians: list[float] = []
    while True:
        calls: list[float] = []
        window_start = time.perf_counter()
        while len(calls) < WINDOW_CALLS or time.perf_counter() - window_start < WINDOW_S:
            before = time.perf_counter()
            fn()
            if sync is not None:
                sync()
            calls.append(time.perf_counter() - before)
        medians.append(statistics.median(calls))
        elapsed = time.perf_counter() - start
        if elapsed >= min_s and window_medians_steady(medians, tolerance):
            return WarmUp(elapsed, True, len(medians))
        if elapsed >= max_s:
            return WarmUp(elapsed, False, len(medians))


def ci_half_width(samples: Sequence[float]) -> float:
    """The larger side of the median's 95% interval, relative to the median (inf when it cannot be told)."""
    if not samples:
        return float("inf")
    median = statistics.median(samples)
    low, high = median_ci(samples)
    return max(median - low, high - median) / median if median > 0 else float("inf")


def least_reached(n_samples: int, timed_s: float, min_time_s: float, min_samples: int, max_samples: int) -> bool:
    """A fixed window's stop: both ``min_time_s`` of timed work and ``min_samples`` are in, or ``max_samples``."""
    return n_samples >= max_samples or (n_samples >= min_samples and timed_s >= min_time_s)


@dataclass(frozen=True)
class Window:
    """When a timed window may stop: the least it must hold, what it aims for, and its caps."""

    min_time_s: float
    min_samples: int
    max_samples: int
    target: float | None = None  # relative half-width of the median's 95% interval to reach; None: none
    max_time_s: float | None = None  # cap on timed seconds while aiming for ``target``

    def __post_init__(self) -> None:
        if self.min_time_s < 0:
            raise ValueError(f"min_time_s must be >= 0, got {self.min_time_s}")
        if not 1 <= self.min_samples <= self.max_samples:
            raise ValueError(f"need 1 <= min_samples <= max_samples, got {self.min_samples} and {self.max_samples}")
        if self.target is not None and self.target <= 0:
            raise ValueError(f"target must be > 0, got {self.target}")
        if self.max_time_s is not None and self.max_time_s < self.min_time_s:
            raise ValueError(f"max_time_s ({self.max_time_s}) is below min_time_s ({self.min_time_s})")

    def done(self, samples: Sequence[float], timed_s: float) -> bool:
        """Stop at ``max_samples``; else once the least time and count are in and, with a target, once the
        median's interval is within it or ``max_time_s`` of timed work has been spent."""
        n = len(samples)
        if n >= self.max_samples:
            return True
        if not least_reached(n, timed_s, self.min_time_s, self.min_samples, self.max_samples):
            return False
        if self.target is None:
            return True
        if self.max_time_s is not None and timed_s >= self.max_time_s:
            return True
        return ci_half_width(samples) <= self.target
