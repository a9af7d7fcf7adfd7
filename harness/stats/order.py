"""Order statistics over raw timing samples: median, percentiles, a confidence interval, significance.

Everything here is a plain function of the samples, so results can be recomputed from a result
file at any time. Definitions:

- Percentiles use linear interpolation between order statistics (Hyndman & Fan 1996, definition 7;
  numpy's default ``method="linear"``): for sorted ``x[0..n-1]`` and fraction ``q``, take
  ``h = (n - 1) * q`` and return ``x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)])``.
- The confidence interval of the median is distribution-free, from binomial order statistics
  (Conover, "Practical Nonparametric Statistics", 3rd ed. 1999, §3.2): the number of samples below
  the true median is Binomial(n, 1/2), so ``[x_(k+1), x_(n-k)]`` (1-based) covers it with probability
  ``1 - 2 * P(B <= k)``; ``k`` is the largest count that keeps this at or above the confidence asked.
  With too few samples for any such ``k`` (n <= 5 at 95%) the interval falls back to ``[min, max]``,
  whose coverage is then below the level asked.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from fractions import Fraction

from scipy import stats as scipy_stats

CONFIDENCE = 0.95  # level of the median's confidence interval stored in every result's Summary


def checked_sorted(samples: Sequence[float]) -> list[float]:
    if len(samples) == 0:
        raise ValueError("need at least one sample")
    values = sorted(float(s) for s in samples)
    if not all(math.isfinite(v) for v in values):
        raise ValueError("samples must be finite numbers")
    return values


def percentile_sorted(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0 <= q <= 1) of already sorted values, by linear interpolation (see module doc)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must lie in [0, 1], got {q}")
    h = (len(sorted_values) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (h - lo) * (sorted_values[hi] - sorted_values[lo])


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0 <= q <= 1) of ``samples``, by linear interpolation (see module doc)."""
    return percentile_sorted(checked_sorted(samples), q)


def iqr(samples: Sequence[float]) -> float:
    """Interquartile range: 75th minus 25th percentile, both by linear interpolation."""
    values = checked_sorted(samples)
    return percentile_sorted(values, 0.75) - percentile_sorted(values, 0.25)


def relative_range(values: Sequence[float]) -> float:
    """(max - min) / median of ``values``: how far apart they lie, relative to their middle."""
    if len(values) == 0:
        raise ValueError("need at least one value")
    return (max(values) - min(values)) / statistics.median(values)


def median_ci_indices(n: int, confidence: float = CONFIDENCE) -> tuple[int, int] | None:
    """0-based indices ``(k, n - 1 - k)`` of the sorted samples bounding the median's interval.

    ``k`` is the largest integer with ``2 * P(B <= k) <= 1 - confidence`` for B ~ Binomial(n, 1/2)
    (Conover 1999, §3.2). Computed in exact integer arithmetic, so boundary cases do not depend on
    rounding. None when no ``k`` qualifies, i.e. too few samples for the confidence asked.
    """
    if n < 1:
        raise ValueError("need at least one sample")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    alpha = 1 - Fraction(str(confidence))
    total = 2**n
    best: int | None = None
    cumulative = 0  # sum of C(n, i) for i <= k
    term = 1  # C(n, k)
    for k in range((n + 1) // 2):
        cumulative += term
        if Fraction(2 * cumulative, total) > alpha:
            break
        best = k
        term = term * (n - k) // (k + 1)
    if best is None:
        return None
    return best, n - 1 - best


def median_ci(samples: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Distribution-free confidence interval of the median; ``(min, max)`` when n is too small (module doc)."""
    values = checked_sorted(samples)
    indices = median_ci_indices(len(values), confidence)
    if indices is None:
        return values[0], values[-1]
    return values[indices[0]], values[indices[1]]


def mann_whitney_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test that ``a`` and ``b`` come from one distribution.

    scipy picks the exact distribution for small samples without ties and the normal approximation
    otherwise. When every sample on both sides is equal the statistic has no spread and scipy
    returns NaN; there is then no evidence of a difference, so this returns 1.0.
    """
    if len(a) == 0 or len(b) == 0:
        raise ValueError("need at least one sample on each side")
    p = float(scipy_stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    return 1.0 if math.isnan(p) else p
