"""Paired statistics of interleaved rounds: exact ratios, the median ratio's interval, the decision inputs."""

from __future__ import annotations

import pytest

from harness.compare.paired import can_still_change, family_confidence, paired_change, round_ratios, rounds_needed


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


def test_the_family_of_a_default_comparison_needs_twelve_rounds() -> None:
    # 20 cells x 4 latencies: 1 - 0.05/80 = 0.999375; 2 / 2**11 = 0.00098 is too much, 2 / 2**12 = 0.00049 is not
    assert family_confidence(80) == pytest.approx(0.999375)
    assert rounds_needed(family_confidence(80)) == 12
    assert family_confidence(1) == 0.95  # never below the single interval's level


def test_a_cell_can_still_change_until_its_ratios_fall_on_both_sides_of_one() -> None:
    confidence = family_confidence(80)  # 12 rounds, interval [min, max]: k = 0
    assert can_still_change([1.04, 1.02, 1.09], 12, confidence)
    assert can_still_change([0.97], 12, confidence)
    assert not can_still_change([1.04, 0.99], 12, confidence)
    assert not can_still_change([1.0], 12, confidence)  # a ratio of exactly 1 lies on both sides
    assert not can_still_change([1.1, 1.2], 3, confidence)  # 3 rounds never reach the confidence


def test_with_more_rounds_than_needed_a_cell_may_have_k_ratios_on_the_wrong_side() -> None:
    # 10 rounds at 95%: the interval is the 2nd smallest to the 2nd largest ratio (k = 1)
    assert can_still_change([1.1, 0.98, 1.2], 10, 0.95)
    assert not can_still_change([1.1, 0.98, 0.99, 1.2], 10, 0.95)
