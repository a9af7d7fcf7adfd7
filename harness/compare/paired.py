"""Paired statistics for interleaved A/B runs: per-round ratios HEAD/BASE and the median ratio's interval.

In an interleaved comparison (``attnbench ab``) every round measures each cell once at BASE and once
at HEAD, back to back in fresh workers, in an order drawn at random per cell and round. The machine's
drift over minutes then moves both sides of a round alike, and the ratio of their medians cancels
it. Per cell and latency metric:

- ``ratios``: HEAD median / BASE median, one per round (each side's median over its own samples);
- the median ratio, and a distribution-free confidence interval of it from binomial order statistics
  (the same construction as harness/measure/stats.py, on the ratios; Conover 1999, §3.2);
- a change counts when the interval excludes 1 (significance) and the median ratio is beyond the
  threshold (effect size). Mann-Whitney U on the pooled raw samples is reported beside it but not
  required: the drift between rounds widens both sides' pooled samples alike, which hides from it a
  change every round's ratio shows.

One comparison decides many latencies at once (the default scenario: 20 cells x 4 latencies), and at
95% each a symmetric A/A comparison would still flag one of them in about every other run. ``attnbench
ab`` therefore asks each interval for ``1 - FAMILY_ALPHA / m`` over its ``m`` latency comparisons
(Bonferroni): at most a 5% chance that an unchanged revision shows any change. At 80 comparisons that
is 99.94%. 12 rounds reach it, but their interval is the smallest and largest ratio, so one odd round
(a neighbour's burst on a shared host) hides a change every other round shows; ``ab`` plans the
fewest rounds that tolerate TOLERATED_CONTRARY such rounds (:func:`rounds_tolerating`: 23 at 99.94%).
A cell stops early once no latency of it is worth another round (:func:`worth_another_round`): its
ratios lie on both sides of 1 and the chance that its interval excludes 1 at the last round, predicted
from the rounds so far (:func:`change_chance`), is below FUTILITY. An unchanged revision so costs a few
rounds per cell, a changed one all of them. Stopping only for futility keeps the error bound: a
change is never declared before the last round.

Every number here is a plain function of the rounds, so it can be recomputed from the two result files.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import betabinom

from harness.measure.stats import mann_whitney_p, median_ci, median_ci_indices

# The median ratio's interval: a change is significant when it excludes 1 at this level (for files
# that do not record their own: harness.results.schema.Pairing.confidence).
PAIRED_CONFIDENCE = 0.95
# The chance that an unchanged revision shows any latency change in one interleaved comparison.
FAMILY_ALPHA = 0.05
# Round ratios on the wrong side of 1 that a change may have and still count, in the rounds ``ab`` plans
# by default: one odd round (a neighbour's burst on a shared host) must not hide what the others show.
TOLERATED_CONTRARY = 3
# A cell of ``ab`` stops once, for every latency of it, the chance that a change shows by its last
# round (:func:`change_chance`, from its rounds so far) is below this.
FUTILITY = 0.2


@dataclass(frozen=True)
class PairedChange:
    """One metric of one cell across an interleaved comparison's rounds."""

    ratios: tuple[float, ...]  # HEAD median / BASE median per round
    median_ratio: float
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


def paired_change(
    base_medians: Sequence[float],
    head_medians: Sequence[float],
    base_samples: Sequence[float],
    head_samples: Sequence[float],
    confidence: float = PAIRED_CONFIDENCE,
) -> PairedChange:
    """The paired evidence for one cell and metric (module doc)."""
    ratios = round_ratios(base_medians, head_medians)
    low, high = median_ci(ratios, confidence)
    return PairedChange(
        ratios=tuple(ratios),
        median_ratio=statistics.median(ratios),
        ci_low=low,
        ci_high=high,
        covered=median_ci_indices(len(ratios), confidence) is not None,
        p_value=mann_whitney_p(base_samples, head_samples),
    )


def rounds_needed(confidence: float = PAIRED_CONFIDENCE) -> int:
    """The fewest rounds whose median-ratio interval reaches ``confidence`` (6 at 95%)."""
    return rounds_tolerating(0, confidence)


def family_confidence(tests: int, family_alpha: float = FAMILY_ALPHA) -> float:
    """Each interval's confidence so that ``tests`` of them together err with at most ``family_alpha``
    (Bonferroni), never below PAIRED_CONFIDENCE."""
    if tests < 1:
        raise ValueError(f"need at least one comparison, got {tests}")
    return max(PAIRED_CONFIDENCE, round(1 - family_alpha / tests, 12))


def rounds_tolerating(contrary: int, confidence: float = PAIRED_CONFIDENCE) -> int:
    """The fewest rounds whose median-ratio interval reaches ``confidence`` and still excludes 1 with
    ``contrary`` of the ratios on the wrong side of it."""
    if contrary < 0:
        raise ValueError(f"contrary must be >= 0, got {contrary}")
    n = 1
    while (indices := median_ci_indices(n, confidence)) is None or indices[0] < contrary:
        n += 1
    return n


def change_chance(ratios: Sequence[float], rounds: int, confidence: float) -> float:
    """The chance that ``rounds`` ratios, of which ``ratios`` are the first, end with an interval that
    excludes 1, predicted from those first ones; the larger of the two directions.

    The interval of ``rounds`` ratios runs from the (k+1)-th smallest to the (k+1)-th largest
    (harness/measure/stats.py), so it lies above 1 only if at most k ratios in all are <= 1 (and below
    1 only if at most k are >= 1). Each later ratio falls on the wrong side with an unknown chance,
    uniform before any round and updated by the ratios seen: the count of wrong ones among the rounds
    left is then Beta-binomial (a Bayesian predictive probability). 0 when the rounds left cannot
    bring the interval past 1 whatever they show, or when ``rounds`` never reach ``confidence``."""
    indices = median_ci_indices(rounds, confidence)
    if indices is None:
        return 0.0
    left = rounds - len(ratios)
    if left < 0:
        raise ValueError(f"{len(ratios)} ratios are more than the {rounds} rounds")
    k = indices[0]
    chances = []
    for contrary, agreeing in ((sum(r <= 1.0 for r in ratios), sum(r > 1.0 for r in ratios)),
                               (sum(r >= 1.0 for r in ratios), sum(r < 1.0 for r in ratios))):  # fmt: skip
        room = k - contrary
        chances.append(0.0 if room < 0 else float(betabinom.cdf(room, left, 1 + contrary, 1 + agreeing)))
    return max(chances)


def worth_another_round(ratios: Sequence[float], rounds: int, confidence: float) -> bool:
    """Whether one latency with these ratios so far gets another of its ``rounds``: while nothing yet
    speaks against a change (every ratio on one side of 1) and the rounds left could still show it, and
    after that while :func:`change_chance` is at least FUTILITY."""
    if len(ratios) >= rounds:
        return False
    chance = change_chance(ratios, rounds, confidence)
    one_sided = bool(ratios) and (all(r > 1.0 for r in ratios) or all(r < 1.0 for r in ratios))
    return chance > 0.0 and (one_sided or chance >= FUTILITY)
