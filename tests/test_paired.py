"""Paired statistics of interleaved rounds: exact ratios, the median ratio's interval, the decision inputs."""

from __future__ import annotations

import pytest

from harness.compare.paired import paired_change, round_ratios, rounds_needed


def test_round_ratios_are_head_over_base_round_by_round() -> None:
    assert round_ratios([2.0, 4.0, 5.0], [3.0, 4.0, 4.0]) == [1.5, 1.0, 0.8]


def test_round_ratios_need_as_many_rounds_on_each_side() -> None:
    with pytest.raises(ValueError, match="2 BASE rounds against 3 HEAD rounds"):
        round_ratios([1.0, 1.0], [1.0, 1.0, 1.0])


def test_six_rounds_are_the_fewest_whose_interval_reaches_95_percent() -> None:
    assert rounds_needed() == 6
    assert rounds_needed(0.9) == 5


def test_a_slowdown_in_every_round_gives_an_interval_above_one() -> None:
    base = [1.00, 1.00, 1.00, 1.00, 1.00, 1.00]
    head = [1.10, 1.12, 1.09, 1.11, 1.10, 1.13]
    change = paired_change(base, head, [1.0] * 12, [1.1] * 12)
    assert change.median_ratio == pytest.approx(1.105)
    assert (change.ci_low, change.ci_high) == (pytest.approx(1.09), pytest.approx(1.13))  # n = 6: [min, max]
    assert change.covered and change.significant


def test_ten_rounds_give_the_second_smallest_and_second_largest_ratio() -> None:
    base = [1.0] * 10
    head = [0.97, 1.01, 1.02, 0.99, 1.03, 1.00, 0.98, 1.04, 1.01, 1.00]
    change = paired_change(base, head, [1.0], [1.0])
    assert (change.ci_low, change.ci_high) == (0.98, 1.03)  # k = 1: 2 P(B <= 1) = 22/1024 <= 5%
    assert not change.significant


def test_too_few_rounds_never_count_as_significant() -> None:
    change = paired_change([1.0] * 3, [1.2] * 3, [1.0] * 30, [1.2] * 30)
    assert change.ci_low > 1 and not change.covered and not change.significant
