"""Paired statistics of interleaved rounds: exact ratios, the median ratio's interval, the decision inputs."""

from __future__ import annotations

import pytest

from harness.compare.paired import (
    FUTILITY,
    change_chance,
    family_confidence,
    paired_change,
    round_ratios,
    rounds_needed,
    rounds_tolerating,
    worth_another_round,
)
from harness.measure.stats import median_ci_indices


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


def test_a_cell_cannot_change_once_its_ratios_fall_on_both_sides_of_one() -> None:
    confidence = family_confidence(80)  # 12 rounds, interval [min, max]: k = 0
    assert change_chance([1.04, 0.99], 12, confidence) == 0.0
    assert change_chance([1.0], 12, confidence) == 0.0  # a ratio of exactly 1 lies on both sides
    assert change_chance([1.1, 1.2], 3, confidence) == 0.0  # 3 rounds never reach the confidence
    assert change_chance([1.1] * 12, 12, confidence) == 1.0  # done, and every ratio above 1


def test_the_chance_of_a_change_is_the_beta_binomial_prediction_from_the_rounds_so_far() -> None:
    confidence = family_confidence(80)
    # k = 0: the 9 rounds left must all agree; a wrong one has chance Beta(1, 1 + 3) after 3 agreeing
    # ones, and P(none of 9) = B(1, 9 + 4) / B(1, 4) = 4 / 13
    assert change_chance([1.04, 1.02, 1.09], 12, confidence) == pytest.approx(4 / 13)
    assert change_chance([0.97], 12, confidence) == pytest.approx(2 / 13)  # 11 left after 1 agreeing
    # before any round the chance of a wrong ratio is uniform: P(at most k = 3 wrong of 23) = 4 / 24
    assert change_chance([], 23, confidence) == pytest.approx(1 / 6)


def test_with_more_rounds_than_needed_a_cell_may_have_k_ratios_on_the_wrong_side() -> None:
    # 10 rounds at 95%: the interval is the 2nd smallest to the 2nd largest ratio (k = 1). Slower: one wrong
    # ratio (0.98) and two agreeing, so the 7 left must all agree: B(2, 7 + 3) / B(2, 3) = 12 / 110
    assert change_chance([1.1, 0.98, 1.2], 10, 0.95) == pytest.approx(12 / 110)
    assert change_chance([1.1, 0.98, 0.99, 1.2], 10, 0.95) == 0.0  # two wrong either way


def test_a_latency_goes_on_while_its_ratios_agree_or_a_change_is_likely_enough() -> None:
    confidence = family_confidence(80)
    assert worth_another_round([0.97], 12, confidence)  # chance 2 / 13, but nothing speaks against a change yet
    assert not worth_another_round([0.97, 1.01], 12, confidence)  # k = 0: no change can show any more
    assert not worth_another_round([0.97] * 12, 12, confidence)  # no rounds left
    # k = 3 of 23: one wrong ratio of two, 21 left: P(BetaBinomial(21, 2, 2) <= 2) = 31 / 506 < FUTILITY
    assert change_chance([1.1, 0.9], 23, confidence) == pytest.approx(31 / 506)
    assert not worth_another_round([1.1, 0.9], 23, confidence)
    assert not worth_another_round([0.9, 1.1, 1.1, 1.1], 23, confidence)  # 0.18
    assert change_chance([0.9, 1.1, 1.1, 1.1, 1.1], 23, confidence) >= FUTILITY  # 0.25
    assert worth_another_round([0.9, 1.1, 1.1, 1.1, 1.1], 23, confidence)


def test_the_default_plan_tolerates_three_wrong_rounds() -> None:
    confidence = family_confidence(80)
    assert [rounds_tolerating(k, confidence) for k in range(5)] == [12, 16, 20, 23, 26]
    assert rounds_tolerating(0) == rounds_needed() == 6
    # 23 rounds at 99.94%: 2 * P(Binomial(23, 1/2) <= 3) = 2 * 2048 / 2**23 = 0.00049 <= 0.000625
    assert median_ci_indices(23, confidence) == (3, 19)
    with pytest.raises(ValueError):
        rounds_tolerating(-1)
