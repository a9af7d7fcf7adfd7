"""Warm-up until steady and windows sized by the noise (harness/measure/window.py), on a fake clock:
each call of the step advances it by the duration a schedule says, so every case is exact."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from harness.measure import window
from harness.measure.timing import time_cpu
from harness.measure.window import Window, ci_half_width, warm_up_until_steady, window_medians_steady


class FakeClock:
    """``perf_counter`` that moves only when a step runs: by the next duration of ``durations``."""

    def __init__(self, durations: Iterator[float]) -> None:
        self.now = 0.0
        self.durations = durations
        self.calls = 0

    def perf_counter(self) -> float:
        return self.now

    def step(self) -> None:
        self.calls += 1
        self.now += next(self.durations)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[Iterator[float]], FakeClock]:
    def install(durations: Iterator[float]) -> FakeClock:
        fake = FakeClock(durations)
        monkeypatch.setattr(time, "perf_counter", fake.perf_counter)
        return fake

    return install


def steady(seconds: float) -> Iterator[float]:
    while True:
        yield seconds


def alternating(a: float, b: float, every: int) -> Iterator[float]:
    """``every`` calls of ``a``, then ``every`` of ``b``, and so on: window medians that never settle."""
    while True:
        yield from [a] * every
        yield from [b] * every


def settling(start_s: float, final_s: float, decay: float) -> Iterator[float]:
    """Calls that get faster geometrically, from ``start_s`` towards ``final_s``: a step warming up."""
    excess = start_s - final_s
    while True:
        yield final_s + excess
        excess *= decay


def test_warm_up_goes_on_past_its_minimum_while_the_step_is_still_getting_faster(clock) -> None:
    fake = clock(settling(0.003, 0.001, decay=0.9))
    warm = warm_up_until_steady(fake.step, min_s=0.01, max_s=5.0, tolerance=0.02)
    assert warm.steady is True
    # the last windows' calls are within a few percent of the final time, the first ones were 3x it
    assert 0.001 + 0.002 * 0.9 ** (fake.calls - 3) < 0.001 * 1.05
    assert warm.seconds > 0.01 and warm.windows > window.STEADY_WINDOWS


def test_warm_up_of_a_steady_step_ends_after_three_windows_once_its_minimum_has_passed(clock) -> None:
    fake = clock(steady(0.002))
    warm = warm_up_until_steady(fake.step, min_s=0.0, max_s=5.0, tolerance=0.02)
    assert warm.steady is True
    assert warm.windows == window.STEADY_WINDOWS
    longer = clock(steady(0.002))
    assert warm_up_until_steady(longer.step, min_s=0.2, max_s=5.0, tolerance=0.02).seconds >= 0.2


def test_warm_up_of_a_step_that_never_settles_stops_at_its_cap_and_says_so(clock) -> None:
    fake = clock(alternating(0.001, 0.002, every=10))
    warm = warm_up_until_steady(fake.step, min_s=0.0, max_s=0.5, tolerance=0.02)
    assert warm.steady is False
    assert 0.5 <= warm.seconds < 0.5 + 0.05


def test_window_medians_are_steady_only_when_the_last_three_lie_within_the_tolerance() -> None:
    assert window_medians_steady([5.0, 1.00, 1.01, 1.015], 0.02)
    assert not window_medians_steady([1.00, 1.01, 1.03], 0.02)
    assert not window_medians_steady([1.0, 1.0], 0.02)


def test_ci_half_width_is_the_larger_side_of_the_medians_interval_over_the_median() -> None:
    # n = 9: the 95% interval of the median is [x(2), x(8)] (1-based, Conover 1999 §3.2)
    samples = [1.0, 1.8, 1.9, 1.95, 2.0, 2.02, 2.05, 2.3, 3.0]
    assert ci_half_width(samples) == pytest.approx(max(2.0 - 1.8, 2.3 - 2.0) / 2.0)


def test_a_window_with_a_target_stops_once_the_interval_is_narrow_enough_or_at_its_caps() -> None:
    tight = [1.0 + 0.001 * (i % 3) for i in range(20)]
    wide = [1.0 + 0.2 * (i % 3) for i in range(20)]
    aiming = Window(min_time_s=0.1, min_samples=5, max_samples=100, target=0.02, max_time_s=1.0)
    assert aiming.done(tight, timed_s=0.2)
    assert not aiming.done(wide, timed_s=0.2)  # interval too wide: go on
    assert aiming.done(wide, timed_s=1.0)  # ... until max_time_s
    assert not aiming.done(tight, timed_s=0.05)  # min_time_s first
    assert not aiming.done(tight[:4], timed_s=0.2)  # and min_samples
    assert Window(0.1, 5, 20, 0.02, 1.0).done(wide, timed_s=0.2)  # max_samples caps it
    assert Window(0.1, 5, 100).done(wide, timed_s=0.2)  # no target: min_time_s and min_samples suffice


def test_a_window_refuses_caps_below_its_minimums() -> None:
    with pytest.raises(ValueError, match="max_time_s"):
        Window(min_time_s=1.0, min_samples=5, max_samples=10, target=0.02, max_time_s=0.5)
    with pytest.raises(ValueError, match="target"):
        Window(min_time_s=1.0, min_samples=5, max_samples=10, target=0.0)


def with_outliers(normal_s: float, outlier_s: float, every: int) -> Iterator[float]:
    """``every - 1`` calls of ``normal_s``, then one of ``outlier_s``, and so on."""
    while True:
        yield from [normal_s] * (every - 1)
        yield outlier_s


def test_time_cpu_samples_past_min_time_until_outliers_no_longer_move_the_median(clock) -> None:
    fixed = time_cpu(
        clock(with_outliers(0.001, 0.003, every=4)).step,
        warmup_s=0.0,
        min_time_s=0.01,
        min_samples=5,
        max_samples=1000,
        inner_reps=1,
    )
    aimed = time_cpu(
        clock(with_outliers(0.001, 0.003, every=4)).step,
        warmup_s=0.0,
        warmup_max_s=1.0,
        min_time_s=0.01,
        target_ci=0.02,
        max_time_s=2.0,
        min_samples=5,
        max_samples=1000,
        inner_reps=1,
    )
    assert fixed.ci_half_width is not None and fixed.ci_half_width > 0.02  # five or six samples: [min, max]
    assert len(aimed.seconds) > len(fixed.seconds)
    assert aimed.ci_half_width == 0.0  # enough samples that the interval lies among the 1 ms calls
    assert aimed.warmup_steady is True and aimed.warmup_s is not None
    assert fixed.warmup_steady is None  # a fixed warm-up assesses nothing


def test_time_cpu_stops_at_max_time_when_the_target_cannot_be_reached(clock) -> None:
    wild = clock(alternating(0.001, 0.01, every=1))
    samples = time_cpu(
        wild.step,
        warmup_s=0.0,
        warmup_max_s=0.1,
        min_time_s=0.01,
        target_ci=0.001,
        max_time_s=0.5,
        min_samples=5,
        max_samples=10_000,
        inner_reps=1,
    )
    assert 0.5 <= sum(samples.seconds) < 0.52
    assert samples.ci_half_width is not None and samples.ci_half_width > 0.001
