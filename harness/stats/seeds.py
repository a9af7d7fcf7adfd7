"""Statistics over training seeds: a variant's mean validation loss with its confidence interval, and the
interval of the difference between two variants' means. Plain functions of the per-seed numbers.

- The interval of a mean over n seeds is Student's: mean ± t(1 - α/2, n - 1) · s / sqrt(n), s the sample
  standard deviation (Student 1908; any statistics text, e.g. Wasserman, "All of Statistics", §6.3).
- The interval of a difference of two means is Welch's (Welch 1947, "The generalization of Student's
  problem when several different population variances are involved"): (m_a - m_b) ± t(1 - α/2, ν) ·
  sqrt(s_a²/n_a + s_b²/n_b), with the Welch–Satterthwaite degrees of freedom
  ν = (s_a²/n_a + s_b²/n_b)² / ((s_a²/n_a)²/(n_a - 1) + (s_b²/n_b)²/(n_b - 1)).

A difference whose interval contains 0 is inside the seed spread: at this scale the data cannot tell
the two apart, and the claims say so. Perplexity is exp(loss), so an interval of the loss maps to one of
the perplexity through exp.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as scipy_stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class MeanCI:
    """A mean over seeds and its confidence interval; the interval is None with fewer than two seeds."""

    mean: float
    low: float | None
    high: float | None
    n: int
    sd: float | None  # sample standard deviation; None with one seed


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> MeanCI:
    """Student's interval of the mean of ``values`` (module doc)."""
    if not values:
        raise ValueError("need at least one value")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return MeanCI(mean, None, None, len(values), None)
    sd = statistics.stdev(values)
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, len(values) - 1)) * sd / math.sqrt(len(values))
    return MeanCI(mean, mean - half, mean + half, len(values), sd)


@dataclass(frozen=True)
class DifferenceCI:
    """mean(a) - mean(b) and Welch's interval of it."""

    difference: float
    low: float
    high: float
    dof: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def welch_difference_ci(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> DifferenceCI:
    """Welch's interval of mean(a) - mean(b) (module doc); each side needs at least two values."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's interval needs at least two values on each side")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    difference = statistics.fmean(a) - statistics.fmean(b)
    spread = va + vb
    if spread == 0:
        return DifferenceCI(difference, difference, difference, math.inf)
    dof = spread**2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, dof)) * math.sqrt(spread)
    return DifferenceCI(difference, difference - half, difference + half, dof)
