"""CPU timing loop: known durations, calibration, GC handling, warm-up by time, flush excluded; CUDA loop on GPUs."""

from __future__ import annotations

import gc
import statistics
import time

import pytest
import torch

from harness.measure.timing import bare_loop_median, calibrate_inner_reps, time_cpu, time_cuda

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def no_op() -> None:
    pass


def test_time_cpu_samples_of_a_2ms_callable_are_close_to_2ms() -> None:
    samples = time_cpu(lambda: spin(0.002), warmup_s=0.01, min_time_s=0.03, min_samples=5, max_samples=50)
    assert len(samples) >= 5
    assert 0.002 <= statistics.median(samples) < 0.0025


def test_calibration_repeats_a_very_fast_callable_many_times_per_sample() -> None:
    assert calibrate_inner_reps(lambda: None, target_s=1e-3) > 1


def test_time_cpu_per_sample_value_is_per_call_for_a_very_fast_callable() -> None:
    calls = 0

    def fast() -> None:
        nonlocal calls
        calls += 1

    samples = time_cpu(fast, warmup_s=0.0, min_time_s=0.0, min_samples=3, max_samples=3)
    assert len(samples) == 3
    assert calls > 100  # calibrated inner repetitions, not one call per sample
    assert max(samples) < 1e-4


def test_time_cpu_stops_at_max_samples() -> None:
    samples = time_cpu(lambda: spin(0.001), warmup_s=0.0, min_time_s=10.0, min_samples=1, max_samples=4, flush=no_op)
    assert len(samples) == 4


def test_time_cpu_disables_gc_while_timing_and_restores_it_after() -> None:
    seen: list[bool] = []
    time_cpu(lambda: seen.append(gc.isenabled()), warmup_s=0.0, min_time_s=0.0, min_samples=1, max_samples=1)
    assert seen and not any(seen)
    assert gc.isenabled()


def test_time_cpu_restores_gc_after_an_exception() -> None:
    def fails() -> None:
        raise RuntimeError("step failed")

    with pytest.raises(RuntimeError, match="step failed"):
        time_cpu(fails, warmup_s=0.0, min_time_s=0.0, min_samples=1, max_samples=1)
    assert gc.isenabled()


def test_time_cpu_warms_up_for_warmup_s_before_the_first_sample() -> None:
    stamps: list[float] = []
    time_cpu(
        lambda: stamps.append(time.perf_counter()),
        warmup_s=0.05,
        min_time_s=0.0,
        min_samples=1,
        max_samples=1,
        flush=no_op,
    )
    # With a flush there is no calibration: every call but the last is warm-up, the last is the sample.
    assert len(stamps) > 2
    assert stamps[-1] - stamps[0] >= 0.05


def test_time_cpu_calls_flush_before_each_sample_and_excludes_it_from_the_sample() -> None:
    flushes = 0

    def slow_flush() -> None:
        nonlocal flushes
        flushes += 1
        time.sleep(0.02)

    samples = time_cpu(
        lambda: spin(0.001), warmup_s=0.0, min_time_s=0.0, min_samples=4, max_samples=4, flush=slow_flush
    )
    assert flushes == len(samples) == 4
    assert statistics.median(samples) < 0.003  # ~1 ms step, not the 20 ms flush


def test_time_cpu_rejects_min_samples_above_max_samples() -> None:
    with pytest.raises(ValueError, match="min_samples"):
        time_cpu(no_op, warmup_s=0.0, min_time_s=0.0, min_samples=5, max_samples=2)


def test_bare_loop_median_of_a_1ms_callable_is_about_1ms() -> None:
    assert 0.001 <= bare_loop_median(lambda: spin(0.001), 5) < 0.0015


@pytest.mark.cuda
@needs_cuda
def test_time_cuda_replays_a_graph_and_returns_device_and_host_samples() -> None:
    x = torch.randn(4096, 4096, device="cuda")
    y = torch.empty_like(x)
    timings = time_cuda(lambda: torch.mm(x, x, out=y), warmup_s=0.05, min_time_s=0.05, min_samples=10, max_samples=200)
    assert timings.graph_used, timings.graph_error
    assert len(timings.device_s) >= 10 and len(timings.host_s) >= 10
    assert 0 < statistics.median(timings.device_s) <= statistics.median(timings.host_s)


@pytest.mark.cuda
@needs_cuda
def test_time_cuda_with_flush_times_one_step_per_sample() -> None:
    from harness.measure.flush import CudaL2Flusher

    x = torch.randn(1024, 1024, device="cuda")
    y = torch.empty_like(x)
    timings = time_cuda(
        lambda: torch.mm(x, x, out=y),
        warmup_s=0.05,
        min_time_s=0.0,
        min_samples=10,
        max_samples=10,
        flush=CudaL2Flusher(),
    )
    assert timings.inner_reps == 1
    assert len(timings.device_s) == 10


class FakeEvent:
    """CPU stand-in for torch.cuda.Event: records perf_counter, counts synchronisations."""

    synchronisations = 0

    def __init__(self, enable_timing: bool = False) -> None:
        self.t = 0.0

    def record(self) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        FakeEvent.synchronisations += 1

    def elapsed_time(self, end: FakeEvent) -> float:
        return (end.t - self.t) * 1e3  # milliseconds, as CUDA events report


def test_time_cuda_falls_back_to_eager_and_synchronises_once_per_batch_of_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", no_op)
    monkeypatch.setattr(FakeEvent, "synchronisations", 0)
    timings = time_cuda(
        lambda: spin(0.001), warmup_s=0.0, min_time_s=0.0, min_samples=5, max_samples=5, flush=no_op, graph=True
    )
    assert not timings.graph_used and timings.graph_error  # no CUDA here: capture fails, eager is timed
    assert len(timings.device_s) == len(timings.host_s) == 5
    assert FakeEvent.synchronisations == 1
    assert 0.001 <= statistics.median(timings.device_s) < 0.003
