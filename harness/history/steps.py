"""Steps in a metric's history: a change of level that persists over later commits, not one odd point.

The model, after asv's step detection (``asv/step_detect.py``, which follows Friedrich et al.,
"Complexity Penalized M-Estimation: Fast Computation", J. Comput. Graph. Stat. 17(1), 2008): the
series is piecewise constant plus noise, and the fit of ``k`` segments minimises the weighted absolute
deviation ``sum_i w_i |y_i - mu_r|`` (each level ``mu_r`` the weighted median of its segment: robust
to an outlier, as a mean is not). The number of segments is chosen by a Schwarz-type criterion
(Yao, "Estimating the number of change-points via Schwarz criterion", Stat. Probab. Lett. 6, 1988),
in the form asv derives for Laplace noise:

    k* = argmin_k  BETA * k * ln(m) / m  +  ln(floor + D_k)

with ``m`` points, ``D_k`` the best k-segment fit's weighted deviation and ``floor`` a small fraction
of the series' scale, so that a perfect fit does not win by ``ln 0``. The weights are the inverse of
each point's relative interval width (a precise point counts more), normalised to their median, as
asv weights by its confidence intervals.

Here the series are short (one point per commit that has a result), so the k-segment fits are exact
(dynamic programming over every split, O(k m^2) after an O(m^2) table of segment costs) rather than
asv's approximation for long series. A fitted boundary is reported as a step only when the segments
on both sides hold at least ``MIN_SEGMENT`` commits (the change persisted, and what came before was
not a single point either) and their levels differ by more than ``MIN_CHANGE``; a change in the last
``MIN_SEGMENT - 1`` commits is reported as *unconfirmed*.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Weight of the number of segments against the fit; larger finds fewer steps. Chosen on simulated
# series of 3% log-normal noise (200 seeds each): 20 commits without a change show a step in 1% of
# them, 20 commits whose last 4 are 10% slower show it at the right commit in 73%, 12 commits with a
# 20% change in the middle in 99.5%, and a single point 50% off makes a step in 1%.
BETA = 2.5
# A perfect fit's deviation is 0; this fraction of the series' median level times its total weight is
# the least deviation the criterion sees (asv fixes a similar floor).
FLOOR_FRACTION = 1e-3
# Commits a segment must hold on each side of a step: a change seen at one commit only is an outlier.
MIN_SEGMENT = 2
# The smallest relative change of level reported as a step (compare's default latency gate).
MIN_CHANGE = 0.05


@dataclass(frozen=True)
class Step:
    """A change of level between two segments of the series."""

    before: int  # index of the last point of the earlier segment
    after: int  # index of the first point of the later segment
    level_before: float
    level_after: float
    confirmed: bool  # the later segment holds MIN_SEGMENT points or more

    @property
    def ratio(self) -> float:
        return self.level_after / self.level_before if self.level_before else math.inf


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The smallest value at which the cumulative weight reaches half the total."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2.0)])


def segment_costs(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``cost[i, j]``: the weighted absolute deviation of ``y[i:j]`` from its weighted median (j > i)."""
    m = len(y)
    cost = np.full((m + 1, m + 1), np.inf)
    for i in range(m):
        for j in range(i + 1, m + 1):
            part, weights = y[i:j], w[i:j]
            cost[i, j] = float(np.sum(weights * np.abs(part - weighted_median(part, weights))))
    return cost


def best_partitions(cost: np.ndarray) -> list[tuple[float, list[int]]]:
    """For each k = 1..m: the least total cost of splitting the series into k segments, and the segments'
    right ends (exclusive)."""
    m = cost.shape[0] - 1
    total = cost[0].copy()  # total[j]: best cost of y[:j] in k segments; k = 1 here
    back: list[np.ndarray] = [np.zeros(m + 1, dtype=int)]
    out = [(float(total[m]), [m])]
    for k in range(2, m + 1):
        candidates = total[:, None] + cost  # [i, j]: y[:i] in k-1 segments, then y[i:j]
        candidates[: k - 1, :] = np.inf  # k-1 segments need k-1 points
        choice = np.argmin(candidates, axis=0)
        total = candidates[choice, np.arange(m + 1)]
        back.append(choice)
        ends, j = [m], m
        for level in range(k - 1, 0, -1):
            j = int(back[level][j])
            ends.append(j)
        out.append((float(total[m]), sorted(ends)))
    return out


def fit_segments(values: Sequence[float], weights: Sequence[float] | None = None) -> list[tuple[int, int, float]]:
    """The series as segments ``(start, end exclusive, level)`` with the number of segments chosen by the
    criterion of the module doc."""
    y = np.asarray(values, dtype=float)
    m = len(y)
    if m == 0:
        return []
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=float)
    w = w / float(np.median(w))
    if m < 2 * MIN_SEGMENT:  # no step can be confirmed: one level
        return [(0, m, weighted_median(y, w))]
    floor = FLOOR_FRACTION * abs(float(np.median(y))) * float(np.sum(w)) or FLOOR_FRACTION
    partitions = best_partitions(segment_costs(y, w))
    scores = [BETA * k * math.log(m) / m + math.log(floor + fit) for k, (fit, _) in enumerate(partitions, start=1)]
    _, ends = partitions[int(np.argmin(scores))]
    segments, start = [], 0
    for end in ends:
        segments.append((start, end, weighted_median(y[start:end], w[start:end])))
        start = end
    return segments


def detect_steps(values: Sequence[float], weights: Sequence[float] | None = None) -> list[Step]:
    """Steps of the series (module doc): between fitted segments of at least MIN_SEGMENT points whose
    levels differ by more than MIN_CHANGE; a last segment shorter than that makes an unconfirmed step."""
    segments = fit_segments(values, weights)
    kept = [s for s in segments if s[1] - s[0] >= MIN_SEGMENT]
    last = segments[-1] if segments else None
    steps: list[Step] = []
    for earlier, later in itertools.pairwise(kept):
        if _changed(earlier[2], later[2]):
            steps.append(Step(earlier[1] - 1, later[0], earlier[2], later[2], confirmed=True))
    if last is None or not kept or last[1] - last[0] >= MIN_SEGMENT or last[0] <= kept[-1][0]:
        return steps
    if _changed(kept[-1][2], last[2]):  # seen at the last commit(s) only: not yet known to persist
        steps.append(Step(kept[-1][1] - 1, last[0], kept[-1][2], last[2], confirmed=False))
    return steps


def _changed(before: float, after: float) -> bool:
    if before == 0:
        return after != 0
    return abs(after / before - 1.0) > MIN_CHANGE
