"""The Summary a result stores for a list of samples: the samples, their median, p10, p90 and 95% interval.

The order statistics themselves are defined in harness/stats/order.py; this builds the record.
"""

from __future__ import annotations

from collections.abc import Sequence

from harness.results.schema import Summary
from harness.stats.order import checked_sorted, median_ci, percentile_sorted


def summarize(samples: Sequence[float]) -> Summary:
    """Samples kept in the order given, with their median, p10, p90 and the median's 95% interval."""
    values = checked_sorted(samples)
    ci_low, ci_high = median_ci(values)
    return Summary(
        samples=[float(s) for s in samples],
        median=percentile_sorted(values, 0.5),
        p10=percentile_sorted(values, 0.10),
        p90=percentile_sorted(values, 0.90),
        ci_low=ci_low,
        ci_high=ci_high,
    )
