"""Exact values of the order statistics in harness/stats/order.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from harness.results.summary import summarize
from harness.stats.order import iqr, mann_whitney_p, median_ci, median_ci_indices, percentile, relative_range


def test_summarize_keeps_samples_in_the_order_given() -> None:
    assert summarize([3.0, 1.0, 2.0]).samples == [3.0, 1.0, 2.0]


def test_median_of_an_odd_count_is_the_middle_order_statistic() -> None:
    assert summarize([5.0, 1.0, 4.0, 2.0, 3.0]).median == 3.0


def test_median_of_an_even_count_is_the_mean_of_the_middle_pair() -> None:
    assert summarize([4.0, 1.0, 3.0, 2.0]).median == 2.5


def test_p10_and_p90_interpolate_linearly_between_order_statistics() -> None:
    summary = summarize([50.0, 10.0, 40.0, 20.0, 30.0])
    # h = (n - 1) * q: p10 at h = 0.4 (between 10 and 20), p90 at h = 3.6 (between 40 and 50)
    assert summary.p10 == pytest.approx(14.0, rel=1e-12)
    assert summary.p90 == pytest.approx(46.0, rel=1e-12)


def test_percentile_agrees_with_numpy_default_method() -> None:
    samples = [0.0123, 0.0119, 0.0131, 0.0127, 0.0120, 0.0145, 0.0118, 0.0122]
    for q in (0.0, 0.1, 0.25, 0.5, 0.9, 1.0):
        assert percentile(samples, q) == pytest.approx(float(np.percentile(samples, q * 100)), rel=1e-12)


def test_percentile_rejects_a_fraction_outside_zero_to_one() -> None:
    with pytest.raises(ValueError, match="quantile"):
        percentile([1.0, 2.0], 1.5)


def test_iqr_is_the_difference_of_the_interpolated_quartiles() -> None:
    # 1..8: q1 at h = 1.75 -> 2.75, q3 at h = 5.25 -> 6.25
    assert iqr([8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]) == pytest.approx(3.5, rel=1e-12)


@pytest.mark.parametrize(
    ("n", "indices"),
    [(6, (0, 5)), (9, (1, 7)), (10, (1, 8)), (20, (5, 14)), (30, (9, 20)), (100, (39, 60))],
)
def test_median_ci_indices_match_the_binomial_order_statistic_table(n: int, indices: tuple[int, int]) -> None:
    assert median_ci_indices(n) == indices


@pytest.mark.parametrize("n", range(6, 120))
def test_median_ci_indices_are_the_narrowest_with_at_least_95_percent_coverage(n: int) -> None:
    indices = median_ci_indices(n)
    assert indices is not None
    k = indices[0]
    assert 1 - 2 * scipy_stats.binom.cdf(k, n, 0.5) >= 0.95
    assert 1 - 2 * scipy_stats.binom.cdf(k + 1, n, 0.5) < 0.95


@pytest.mark.parametrize("n", [1, 2, 5])
def test_median_ci_indices_are_none_below_six_samples(n: int) -> None:
    assert median_ci_indices(n) is None


def test_median_ci_falls_back_to_min_and_max_with_too_few_samples() -> None:
    assert median_ci([3.0, 1.0, 2.0, 5.0, 4.0]) == (1.0, 5.0)


def test_summarize_ci_of_twenty_samples_is_the_sixth_and_fifteenth_smallest() -> None:
    samples = [float(x) for x in (13, 2, 20, 7, 1, 16, 9, 4, 18, 11, 6, 15, 3, 19, 10, 5, 14, 8, 17, 12)]
    summary = summarize(samples)
    assert (summary.ci_low, summary.ci_high) == (6.0, 15.0)
    assert summary.median == 10.5


def test_summarize_of_one_sample_is_that_sample_everywhere() -> None:
    summary = summarize([0.25])
    assert (summary.median, summary.p10, summary.p90, summary.ci_low, summary.ci_high) == (0.25,) * 5


def test_summarize_rejects_no_samples() -> None:
    with pytest.raises(ValueError, match="at least one"):
        summarize([])


def test_summarize_rejects_non_finite_samples() -> None:
    with pytest.raises(ValueError, match="finite"):
        summarize([1.0, math.nan])


def test_mann_whitney_p_of_disjoint_three_sample_groups_is_the_exact_one_tenth() -> None:
    # exact null distribution: 2 of the C(6, 3) = 20 orderings are as extreme (two-sided)
    assert mann_whitney_p([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1, rel=1e-12)


def test_mann_whitney_p_of_identical_constant_samples_is_one() -> None:
    assert mann_whitney_p([2.0, 2.0, 2.0], [2.0, 2.0, 2.0]) == 1.0


def test_mann_whitney_p_is_symmetric_in_its_arguments() -> None:
    a, b = [1.0, 2.5, 3.0, 4.2], [2.0, 3.5, 5.0, 6.1]
    assert mann_whitney_p(a, b) == mann_whitney_p(b, a)


def test_relative_range_is_the_spread_over_the_median() -> None:
    assert relative_range([2.0, 1.0, 4.0]) == pytest.approx((4.0 - 1.0) / 2.0)
    assert relative_range([3.0]) == 0.0
    with pytest.raises(ValueError):
        relative_range([])
