"""Paired statistics of interleaved rounds: exact ratios, the signed-rank interval, the decision inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from harness.stats.paired import (
    FUTILITY,
    change_chance,
    family_confidence,
    paired_change,
    ratio_interval,
    round_ratios,
    rounds_needed,
    rounds_tolerating,
    signed_rank_bound,
    walsh_averages,
    worth_another_round,
)


def test_round_ratios_are_head_over_base_round_by_round() -> None:
    assert round_ratios([2.0, 4.0, 5.0], [3.0, 4.0, 4.0]) == [1.5, 1.0, 0.8]


def test_round_ratios_need_as_many_rounds_on_each_side() -> None:
    with pytest.raises(ValueError, match="2 BASE rounds against 3 HEAD rounds"):
        round_ratios([1.0, 1.0], [1.0, 1.0, 1.0])


def test_six_rounds_are_the_fewest_whose_interval_reaches_95_percent() -> None:
    assert rounds_needed() == 6
    assert rounds_needed(0.9) == 5


def test_signed_rank_bounds_match_the_exact_null_distribution() -> None:
    # n = 7: P(T <= 2) = 3/128 (sums 0, 1, 2), so 2 * 3/128 = 4.7% <= 5%; P(T <= 3) = 5/128 is too much
    assert signed_rank_bound(7) == 2
    assert signed_rank_bound(6) == 0  # 2/64 = 3.1%; 2 * 2/64 = 6.3% is too much
    assert signed_rank_bound(5) is None  # 2/32 = 6.3% even at T = 0
    confidence = family_confidence(80)  # 99.975%
    assert [signed_rank_bound(n, confidence) for n in (12, 13, 23, 29)] == [None, 0, 25, 57]


@pytest.mark.parametrize(("n", "bound"), [(13, 0), (23, 25), (29, 57), (36, 109)])
def test_the_bound_is_where_scipys_exact_signed_rank_test_starts_to_reject(n: int, bound: int) -> None:
    confidence = family_confidence(80)

    def p_value(wrong_rank_sum: int) -> float:  # log ratios 1..n, the ranks summing to it negative
        wrong, left = set(), wrong_rank_sum
        for rank in range(n, 0, -1):
            if rank <= left:
                wrong.add(rank)
                left -= rank
        return float(stats.wilcoxon([-r if r in wrong else r for r in range(1, n + 1)], method="exact").pvalue)

    assert p_value(bound) <= 1 - confidence < p_value(bound + 1)


def test_walsh_averages_are_every_pairwise_mean_sorted() -> None:
    assert walsh_averages([3.0, 1.0, 2.0]) == [1.0, 1.5, 2.0, 2.0, 2.5, 3.0]


def test_seven_rounds_give_the_third_smallest_and_largest_pairwise_mean() -> None:
    # log ratios 0.01 .. 0.07: pairwise means 0.01, 0.015, 0.02 (twice) ... ; c = 2 at 95%
    ratio, low, high, covered = ratio_interval([math.exp(0.01 * k) for k in range(1, 8)])
    assert (math.log(low), math.log(ratio), math.log(high)) == (
        pytest.approx(0.02), pytest.approx(0.04), pytest.approx(0.06)
    )  # fmt: skip
    assert covered


def test_a_slowdown_in_every_round_gives_an_interval_above_one() -> None:
    base = [1.0] * 6
    head = [1.1 * math.exp(d) for d in (-0.03, -0.02, -0.01, 0.01, 0.02, 0.03)]  # symmetric about 1.1
    change = paired_change(base, head, [1.0] * 12, [1.1] * 12)
    assert change.ratio == pytest.approx(1.1)  # the centre of symmetric log ratios
    assert (change.ci_low, change.ci_high) == (pytest.approx(head[0]), pytest.approx(head[-1]))  # c = 0: min, max
    assert change.covered and change.significant


def test_a_far_ratio_on_the_wrong_side_weighs_more_than_a_near_one() -> None:
    # ten rounds at 95% (c = 8): nine 3% slower; one wrong ratio near 1 still leaves the interval above 1,
    # the same ratio far off does not (a sign test would count both alike)
    near = [1.03] * 9 + [0.999]
    far = [1.03] * 9 + [0.9]
    assert paired_change([1.0] * 10, near, [1.0], [1.0]).significant
    assert not paired_change([1.0] * 10, far, [1.0], [1.0]).significant


def test_the_interval_excludes_1_exactly_when_scipys_exact_test_rejects() -> None:
    rng = np.random.default_rng(7)
    decided = set()
    for n, confidence in [(6, 0.95), (9, 0.95), (15, 0.95), (15, family_confidence(80)), (29, family_confidence(80))]:
        for _ in range(40):
            logs = rng.normal(0.05, 0.1, n)
            _, low, high, covered = ratio_interval(list(np.exp(logs)), confidence)
            p = stats.wilcoxon(logs, method="exact").pvalue
            assert covered and (low > 1 or high < 1) == (p <= 1 - confidence)
            decided.add(bool(p <= 1 - confidence))
    assert decided == {True, False}  # both verdicts were checked


def test_too_few_rounds_never_count_as_significant() -> None:
    change = paired_change([1.0] * 3, [1.2] * 3, [1.0] * 30, [1.2] * 30)
    assert change.ci_low > 1 and not change.covered and not change.significant


def test_the_family_of_a_default_comparison_needs_thirteen_rounds() -> None:
    # 20 cells x 4 latencies: 1 - 0.02/80 = 0.99975; 2 / 2**12 = 0.00049 is too much, 2 / 2**13 = 0.00024 is not
    assert family_confidence(80) == pytest.approx(0.99975)
    assert rounds_needed(family_confidence(80)) == 13
    assert family_confidence(80, 0.05) == pytest.approx(0.999375)
    assert family_confidence(1) == 0.98
    assert family_confidence(1, 0.2) == 0.95  # never below the single interval's level


def test_the_default_plan_tolerates_two_wrong_rounds_however_far() -> None:
    confidence = family_confidence(80)
    # k wrong ratios holding the k largest ranks of n sum to k n - k (k - 1) / 2, which the bound must reach
    assert [rounds_tolerating(k, confidence) for k in range(4)] == [13, 23, 29, 36]
    assert rounds_tolerating(0) == rounds_needed() == 6
    wrong_largest = [1.1] * 27 + [0.5, 0.4]  # the two wrong ratios the farthest from 1
    assert paired_change([1.0] * 29, wrong_largest, [1.0], [1.0], confidence).significant
    assert not paired_change([1.0] * 28, wrong_largest[1:], [1.0], [1.0], confidence).significant
    with pytest.raises(ValueError):
        rounds_tolerating(-1)


def test_the_chance_of_a_change_is_exact_where_nothing_is_left_to_predict() -> None:
    confidence = family_confidence(80)  # 13 rounds: c = 0, every ratio must agree
    assert change_chance([1.04, 0.99], 13, confidence) == 0.0  # one on each side: both directions lost
    assert change_chance([1.0], 13, confidence) == 0.0  # a ratio of exactly 1 lies on both sides
    assert change_chance([1.1, 1.2], 12, confidence) == 0.0  # 12 rounds never reach the confidence
    assert change_chance([1.1] * 13, 13, confidence) == 1.0  # done, and every ratio above 1
    assert change_chance([1.1] * 12 + [0.9], 13, confidence) == 0.0  # done, one below
    assert change_chance([1.1], 29, confidence) == 1.0  # one ratio: no spread to predict from


def test_the_predicted_chance_follows_the_evidence_and_repeats() -> None:
    confidence = family_confidence(80)
    unchanged = [1.02, 0.97, 1.01, 0.99]
    slower = [1.1, 1.12, 0.98, 1.09, 1.11]
    assert change_chance(unchanged, 29, confidence) < FUTILITY < change_chance(slower, 29, confidence)
    assert change_chance(slower, 29, confidence) == change_chance(slower, 29, confidence)  # a fixed seed
    # the same evidence with fewer rounds left to gather more predicts less
    assert change_chance([1.06, 1.04, 0.99], 23, confidence) < change_chance([1.06, 1.04, 0.99], 36, confidence)


def test_a_latency_goes_on_while_its_ratios_agree_or_a_change_is_likely_enough() -> None:
    confidence = family_confidence(80)
    assert worth_another_round([0.97], 13, confidence)  # nothing speaks against a change yet
    assert worth_another_round([0.97, 0.99, 0.95], 29, confidence)
    assert not worth_another_round([0.97, 1.01], 13, confidence)  # c = 0: no change can show any more
    assert not worth_another_round([0.97] * 13, 13, confidence)  # no rounds left
    assert not worth_another_round([1.02, 0.97, 1.01, 0.99], 29, confidence)  # chance 0.07
    assert worth_another_round([1.1, 0.99, 1.1, 1.05, 1.02], 29, confidence)  # chance 0.68
    assert not worth_another_round([1.1, 1.1], 12, confidence)  # 12 rounds never reach 99.975%
