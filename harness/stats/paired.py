"""Paired statistics for interleaved A/B runs: per-round ratios HEAD/BASE, their typical ratio and its interval.

In an interleaved comparison (``attnbench ab``) every round measures each cell once at BASE and once
at HEAD, back to back in fresh workers, in an order drawn at random per cell and round. The machine's
drift over minutes then moves both sides of a round alike, and the ratio of their medians cancels
it. Per cell and latency metric:

- ``ratios``: HEAD median / BASE median, one per round (each side's median over its own samples);
- the ratio: the Hodges-Lehmann estimate, ``exp`` of the median of the pairwise means
  ``(l_i + l_j) / 2`` (i <= j, the "Walsh averages") of the log ratios ``l``;
- its interval from the Wilcoxon signed-rank test (Hollander, Wolfe & Chicken, "Nonparametric
  Statistical Methods", 3rd ed. 2014, §3.3): the (c+1)-th smallest to the (c+1)-th largest Walsh
  average, ``c`` the largest count with ``2 * P(T <= c) <= 1 - confidence`` for the signed-rank
  statistic T of n rounds (:func:`signed_rank_bound`, exact). It excludes 1 exactly when the test
  rejects "no change".
- a change counts when the interval excludes 1 (significance) and the ratio is beyond the threshold
  (effect size). Mann-Whitney U on the pooled raw samples is reported beside it but not required:
  the drift between rounds widens both sides' pooled samples alike, which hides from it a change every
  round's ratio shows.

Why the signed-rank test: the order of the two sides is drawn at random in every round, so without a
change a log ratio is as likely to be ``+x`` as ``-x`` whatever the machine does. That symmetry is all
the test assumes, so its error rate holds exactly on any noise. Unlike a sign test (the median's
interval from binomial order statistics), it weighs how far each ratio lies from 1: a ratio barely on
the wrong side of 1 costs a change little, one far on the wrong side much.

One comparison decides many latencies at once (the default scenario: 20 cells x 4 latencies), and at
95% each a symmetric A/A comparison would still flag one of them in about every other run. ``attnbench
ab`` therefore asks each interval for ``1 - FAMILY_ALPHA / m`` over its ``m`` latency comparisons
(Bonferroni): at most a 2% chance that an unchanged revision shows any change (so that in 20 A/A
comparisons two or more false alarms have a chance of 6%, not the 26% of 5%). At 80 comparisons
that is 99.975%. 13 rounds reach it, but their interval is the smallest and largest ratio, so one odd round
(a neighbour's burst on a shared host) hides a change every other round shows; ``ab`` plans the
fewest rounds whose interval still excludes 1 with TOLERATED_CONTRARY ratios on the wrong side, however
far (:func:`rounds_tolerating`: 29 at 99.975%). A cell stops early once no latency of it is worth
another round (:func:`worth_another_round`): its ratios lie on both sides of 1 and the chance that its
interval excludes 1 at the last round, predicted from the rounds so far (:func:`change_chance`), is
below FUTILITY. An unchanged revision so costs a few rounds per cell, a changed one all of them.
Stopping only for futility keeps the error bound: a change is never declared before the last round.

Every number here is a plain function of the rounds, so it can be recomputed from the two result files.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from harness.stats.order import mann_whitney_p

# The ratio's interval: a change is significant when it excludes 1 at this level (for files that do
# not record their own: harness.results.schema.Pairing.confidence).
PAIRED_CONFIDENCE = 0.95
# The chance that an unchanged revision shows any latency change in one interleaved comparison.
FAMILY_ALPHA = 0.02
# Round ratios on the wrong side of 1, however far, that a change may have and still count in the
# rounds ``ab`` plans by default: an odd round (a neighbour's burst on a shared host) must not hide
# what the others show.
TOLERATED_CONTRARY = 2
# A cell of ``ab`` stops once, for every latency of it, the chance that a change shows by its last
# round (:func:`change_chance`, from its rounds so far) is below this.
FUTILITY = 0.3
# Draws of the rounds left from which :func:`change_chance` predicts (a fixed seed: the same ratios
# always give the same chance).
PREDICTIVE_DRAWS = 2000
PREDICTIVE_SEED = 20261130


@dataclass(frozen=True)
class PairedChange:
    """One metric of one cell across an interleaved comparison's rounds."""

    ratios: tuple[float, ...]  # HEAD median / BASE median per round
    ratio: float  # the Hodges-Lehmann estimate of the ratio (module doc)
    ci_low: float
    ci_high: float
    covered: bool  # the interval reaches the confidence asked (too few rounds: it is [min, max], below it)
    p_value: float  # Mann-Whitney U on the pooled raw samples

    @property
    def significant(self) -> bool:
        """The interval excludes 1 and reaches the confidence asked."""
        return self.covered and (self.ci_low > 1.0 or self.ci_high < 1.0)


def round_ratios(base_medians: Sequence[float], head_medians: Sequence[float]) -> list[float]:
    """HEAD / BASE per round; the rounds must be the same in number and order."""
    if len(base_medians) != len(head_medians):
        raise ValueError(f"{len(base_medians)} BASE rounds against {len(head_medians)} HEAD rounds")
    if not base_medians:
        raise ValueError("need at least one round")
    if any(b <= 0 for b in base_medians):
        raise ValueError("BASE medians must be positive")
    return [h / b for b, h in zip(base_medians, head_medians, strict=True)]


@functools.cache
def _signed_rank_counts(n: int) -> tuple[int, ...]:
    """How many of the 2**n sign patterns of ranks 1..n give each sum of positive ranks 0..n(n+1)/2."""
    counts = [1]
    for rank in range(1, n + 1):  # rank ``rank`` is either positive (shifts the sum by it) or not
        grown = counts + [0] * rank
        for total, ways in enumerate(counts):
            grown[total + rank] += ways
        counts = grown
    return tuple(counts)


def signed_rank_bound(n: int, confidence: float = PAIRED_CONFIDENCE) -> int | None:
    """The largest c with ``2 * P(T <= c) <= 1 - confidence`` for the Wilcoxon signed-rank statistic T
    of ``n`` rounds without a change (each sign pattern of the ranks equally likely); exact integer
    arithmetic. None when no c qualifies: too few rounds for the confidence."""
    if n < 1:
        raise ValueError("need at least one round")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    alpha = 1 - Fraction(str(confidence))
    best: int | None = None
    cumulative = 0
    for total, ways in enumerate(_signed_rank_counts(n)):
        cumulative += ways
        if Fraction(2 * cumulative, 2**n) > alpha:
            break
        best = total
    return best


def walsh_averages(values: Sequence[float]) -> list[float]:
    """Every pairwise mean ``(v_i + v_j) / 2`` with i <= j (each value with itself too), sorted."""
    return sorted((values[i] + values[j]) / 2 for i in range(len(values)) for j in range(i, len(values)))


def ratio_interval(ratios: Sequence[float], confidence: float = PAIRED_CONFIDENCE) -> tuple[float, float, float, bool]:
    """The Hodges-Lehmann ratio, its signed-rank interval (module doc), and whether the interval reaches
    ``confidence`` (with too few rounds it is [min, max] of the ratios, below it)."""
    if not ratios or any(r <= 0 for r in ratios):
        raise ValueError("need at least one ratio, all positive")
    averages = walsh_averages([math.log(r) for r in ratios])
    bound = signed_rank_bound(len(ratios), confidence)
    low, high = (0, len(averages) - 1) if bound is None else (bound, len(averages) - 1 - bound)
    middle = len(averages) // 2
    estimate = averages[middle] if len(averages) % 2 else (averages[middle - 1] + averages[middle]) / 2
    return math.exp(estimate), math.exp(averages[low]), math.exp(averages[high]), bound is not None


def paired_change(
    base_medians: Sequence[float],
    head_medians: Sequence[float],
    base_samples: Sequence[float],
    head_samples: Sequence[float],
    confidence: float = PAIRED_CONFIDENCE,
) -> PairedChange:
    """The paired evidence for one cell and metric (module doc)."""
    ratios = round_ratios(base_medians, head_medians)
    ratio, low, high, covered = ratio_interval(ratios, confidence)
    return PairedChange(
        ratios=tuple(ratios),
        ratio=ratio,
        ci_low=low,
        ci_high=high,
        covered=covered,
        p_value=mann_whitney_p(base_samples, head_samples),
    )


def rounds_needed(confidence: float = PAIRED_CONFIDENCE) -> int:
    """The fewest rounds whose interval reaches ``confidence`` (6 at 95%)."""
    return rounds_tolerating(0, confidence)


def family_confidence(tests: int, family_alpha: float = FAMILY_ALPHA) -> float:
    """Each interval's confidence so that ``tests`` of them together err with at most ``family_alpha``
    (Bonferroni), never below PAIRED_CONFIDENCE."""
    if tests < 1:
        raise ValueError(f"need at least one comparison, got {tests}")
    return max(PAIRED_CONFIDENCE, round(1 - family_alpha / tests, 12))


def rounds_tolerating(contrary: int, confidence: float = PAIRED_CONFIDENCE) -> int:
    """The fewest rounds n whose interval reaches ``confidence`` and still excludes 1 with ``contrary``
    of the ratios on the wrong side of 1, however far: with those the largest in size, the Walsh
    averages on the wrong side number ``contrary * n - contrary * (contrary - 1) / 2`` (the sum of
    their ranks), which the bound must reach."""
    if contrary < 0:
        raise ValueError(f"contrary must be >= 0, got {contrary}")
    n = max(1, contrary)
    while (bound := signed_rank_bound(n, confidence)) is None or bound < contrary * n - contrary * (contrary - 1) // 2:
        n += 1
    return n


def _exclusions(logs: np.ndarray, bound: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of log ratios: does its interval lie above 1, below 1? (At most ``bound`` Walsh averages
    on the wrong side: the sum of the ranks of |l| of the values on that side, for values without ties.)"""
    ranks = np.argsort(np.argsort(np.abs(logs), axis=-1), axis=-1) + 1
    return (ranks * (logs <= 0)).sum(-1) <= bound, (ranks * (logs >= 0)).sum(-1) <= bound


def change_chance(ratios: Sequence[float], rounds: int, confidence: float) -> float:
    """The chance that ``rounds`` ratios, of which ``ratios`` are the first, end with an interval that
    excludes 1, predicted from those first ones; the larger of the two directions.

    The log ratios are taken as normal with unknown mean and spread, under the usual uninformative
    prior (Jeffreys'); given the first ones, the rounds left are drawn PREDICTIVE_DRAWS times from what
    they predict (a spread, then a mean, then the rounds), and each draw's interval is decided as
    :func:`ratio_interval` would. Exact where nothing is left to predict: 0 when ``rounds`` never reach
    ``confidence`` or the ratios so far already rule out both directions (a ratio's rank only grows as
    ratios are added), 0 or 1 with no rounds left; 1 with a single ratio (no spread to predict from)."""
    bound = signed_rank_bound(rounds, confidence)
    if bound is None:
        return 0.0
    if len(ratios) > rounds:
        raise ValueError(f"{len(ratios)} ratios are more than the {rounds} rounds")
    logs = np.log(np.asarray(ratios, dtype=float))
    n, left = len(logs), rounds - len(logs)
    # A ratio's rank among more ratios can only grow: a side already past the bound stays past it.
    possible = [bool(side[0]) for side in _exclusions(logs[None, :], bound)] if n else [True, True]
    if not any(possible) or left == 0:
        return float(any(possible))
    if n < 2:
        return 1.0
    rng = np.random.default_rng(PREDICTIVE_SEED)
    spread2 = (n - 1) * np.var(logs, ddof=1) / rng.chisquare(n - 1, PREDICTIVE_DRAWS)
    mean = logs.mean() + np.sqrt(spread2 / n) * rng.standard_normal(PREDICTIVE_DRAWS)
    drawn = mean[:, None] + np.sqrt(spread2)[:, None] * rng.standard_normal((PREDICTIVE_DRAWS, left))
    above, below = _exclusions(np.concatenate([np.broadcast_to(logs, (PREDICTIVE_DRAWS, n)), drawn], axis=1), bound)
    return float(max(above.mean() if possible[0] else 0.0, below.mean() if possible[1] else 0.0))


def worth_another_round(ratios: Sequence[float], rounds: int, confidence: float, futility: float = FUTILITY) -> bool:
    """Whether one latency with these ratios so far gets another of its ``rounds``: while nothing yet
    speaks against a change (every ratio on one side of 1), and after that while :func:`change_chance`
    is at least ``futility``."""
    if len(ratios) >= rounds or signed_rank_bound(rounds, confidence) is None:
        return False
    one_sided = bool(ratios) and (all(r > 1.0 for r in ratios) or all(r < 1.0 for r in ratios))
    return one_sided or change_chance(ratios, rounds, confidence) >= futility
