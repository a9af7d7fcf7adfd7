"""CPU timing loop: known durations, calibration, GC handling, warm-up by time, flush excluded; CUDA loop on GPUs."""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Iterator

import pytest
import torch

from harness.measure import timing
from harness.measure.timing import bare_loop_median, calibrate_inner_reps, time_cpu, time_cpu_parts, time_cuda

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def no_op() -> None:
    pass


def test_time_cpu_samples_of_a_2ms_callable_are_close_to_2ms() -> None:
    samples = time_cpu(lambda: spin(0.002), warmup_s=0.01, min_time_s=0.03, min_samples=5, max_samples=50).seconds
    assert len(samples) >= 5
    assert 0.002 <= statistics.median(samples) < 0.0025


def test_calibration_repeats_a_very_fast_callable_many_times_per_sample() -> None:
    assert calibrate_inner_reps(lambda: None, target_s=1e-3) > 1


def test_time_cpu_per_sample_value_is_per_call_for_a_very_fast_callable() -> None:
    calls = 0

    def fast() -> None:
        nonlocal calls
        calls += 1

    timed = time_cpu(fast, warmup_s=0.0, min_time_s=0.0, min_samples=3, max_samples=3)
    assert len(timed.seconds) == 3
    assert timed.inner_reps > 100 and calls >= 3 * timed.inner_reps  # calibrated repetitions per sample
    assert max(timed.seconds) < 1e-4


def test_time_cpu_takes_the_inner_repetitions_it_is_given_instead_of_calibrating() -> None:
    calls = 0

    def fast() -> None:
        nonlocal calls
        calls += 1

    timed = time_cpu(fast, warmup_s=0.0, min_time_s=0.0, min_samples=3, max_samples=3, inner_reps=7)
    assert timed.inner_reps == 7
    assert calls == 1 + 3 * 7  # one warm-up call, then three samples of seven calls


def test_cold_cpu_samples_are_single_calls_and_say_so() -> None:
    timed = time_cpu(lambda: spin(0.001), warmup_s=0.0, min_time_s=0.0, min_samples=3, max_samples=3, flush=no_op)
    assert (timed.timer, timed.inner_reps, len(timed.seconds)) == ("perf_counter", 1, 3)


def test_time_cpu_parts_flushes_only_before_the_parts_it_is_told_to() -> None:
    events: list[str] = []
    parts = [lambda: events.append("a"), lambda: events.append("b"), lambda: events.append("c")]
    time_cpu_parts(
        parts,
        lambda: events.append("flush"),
        warmup_s=0.0,
        min_time_s=0.0,
        min_samples=1,
        max_samples=1,
        flush_before=[False, False, True],  # the first part is flushed before whatever the flag says
    )
    assert events[-5:] == ["flush", "a", "b", "flush", "c"]


def test_time_cpu_parts_flushes_before_every_part_and_sums_only_the_parts() -> None:
    events: list[str] = []

    def flush() -> None:
        events.append("flush")
        time.sleep(0.02)

    def part(name: str) -> Callable[[], None]:
        return lambda: (events.append(name), spin(0.001))

    timed = time_cpu_parts([part("a"), part("b")], flush, warmup_s=0.0, min_time_s=0.0, min_samples=2, max_samples=2)
    assert events[-8:] == ["flush", "a", "flush", "b", "flush", "a", "flush", "b"]
    assert all(0.002 <= sample < 0.02 for sample in timed.seconds)  # two 1 ms parts, not two 20 ms flushes


def test_time_cpu_stops_at_max_samples() -> None:
    timed = time_cpu(lambda: spin(0.001), warmup_s=0.0, min_time_s=10.0, min_samples=1, max_samples=4, flush=no_op)
    assert len(timed.seconds) == 4


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
    before = time.perf_counter()
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
    assert stamps[-1] - before >= 0.05


def test_time_cpu_calls_flush_before_each_sample_and_excludes_it_from_the_sample() -> None:
    flushes = 0

    def slow_flush() -> None:
        nonlocal flushes
        flushes += 1
        time.sleep(0.02)

    samples = time_cpu(
        lambda: spin(0.001), warmup_s=0.0, min_time_s=0.0, min_samples=4, max_samples=4, flush=slow_flush
    ).seconds
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


class FakeCuda:
    """Enough of torch.cuda, on the CPU, to run capture() and the event loops: streams, a graph whose
    capture or replay can be made to fail or to do nothing, and events."""

    def __init__(self) -> None:
        self.current: object = None
        self.capturing = False
        self.capture_error: Exception | None = None  # raised by capture_end
        self.stuck = False  # a failed capture that cannot be ended
        self.replay: Callable[[], object] | None = None  # what a replay does; None: nothing (an empty graph)
        self.replays = 0
        fake = self

        class Stream:
            def wait_stream(self, other: object) -> None:
                pass

            def synchronize(self) -> None:
                pass

        self.default = Stream()
        self.current = self.default

        class CUDAGraph:
            def capture_begin(self) -> None:
                fake.capturing = True

            def capture_end(self) -> None:
                fake.capturing = fake.stuck
                if fake.capture_error is not None:
                    raise fake.capture_error

            def replay(self) -> None:
                fake.replays += 1
                if fake.replay is not None:
                    fake.replay()

        @contextlib.contextmanager
        def stream(s: object) -> Iterator[None]:
            before, fake.current = fake.current, s
            try:
                yield
            finally:
                fake.current = before

        def set_stream(s: object) -> None:
            fake.current = s

        self.attributes: dict[str, object] = {
            "Stream": Stream,
            "CUDAGraph": CUDAGraph,
            "Event": FakeEvent,
            "stream": stream,
            "current_stream": lambda: fake.current,
            "set_stream": set_stream,
            "synchronize": no_op,
            "empty_cache": no_op,
            "is_current_stream_capturing": lambda: fake.capturing,
        }


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    fake = FakeCuda()
    for name, value in fake.attributes.items():
        monkeypatch.setattr(torch.cuda, name, value)
    monkeypatch.setattr(FakeEvent, "synchronisations", 0)
    return fake


def test_time_cuda_falls_back_to_eager_and_synchronises_once_per_batch_of_events(fake_cuda: FakeCuda) -> None:
    fake_cuda.capture_error = RuntimeError("operation not permitted when stream is capturing")
    timings = time_cuda(
        lambda: spin(0.001), warmup_s=0.0, min_time_s=0.0, min_samples=5, max_samples=5, flush=no_op, graph=True
    )
    assert not timings.graph_used and timings.graph_error is not None
    assert "operation not permitted" in timings.graph_error
    assert len(timings.device_s) == len(timings.host_s) == 5
    assert FakeEvent.synchronisations == 1
    assert 0.001 <= statistics.median(timings.device_s) < 0.003


def test_a_failed_capture_leaves_the_capture_stream_and_times_the_eager_step(fake_cuda: FakeCuda) -> None:
    def fails_in_capture() -> torch.Tensor:
        if fake_cuda.capturing:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        return torch.ones(3)

    fake_cuda.capture_error = RuntimeError("capture invalidated")
    captured = timing.capture(fails_in_capture, tolerance=1e-3)
    assert not captured.graph_used and captured.step is fails_in_capture
    assert captured.graph_error is not None and "operation not permitted" in captured.graph_error
    assert fake_cuda.current is fake_cuda.default and not fake_cuda.capturing


def test_a_capture_that_cannot_be_ended_is_an_error_not_a_fallback(fake_cuda: FakeCuda) -> None:
    fake_cuda.capture_error = RuntimeError("capture invalidated")
    fake_cuda.stuck = True
    with pytest.raises(timing.GraphCaptureStateError, match="capturing"):
        timing.capture(lambda: torch.ones(3), tolerance=1e-3)


def test_an_empty_captured_graph_is_refused_rather_than_timed(fake_cuda: FakeCuda) -> None:
    static = torch.zeros(4)
    fake_cuda.replay = None  # replays launch nothing: the kernels went to another device's stream
    with pytest.raises(RuntimeError, match="did not write its output"):
        timing.capture(lambda: static.copy_(torch.arange(4.0)), tolerance=1e-3)


def test_a_captured_graph_whose_output_equals_eager_is_timed_by_replay(fake_cuda: FakeCuda) -> None:
    static = torch.zeros(4)

    def step() -> torch.Tensor:
        return static.copy_(torch.arange(4.0))

    fake_cuda.replay = step
    captured = timing.capture(step, tolerance=1e-3)
    assert captured.graph_used and captured.timer == "cuda-graph+events"
    assert captured.output_matches is True and captured.output_difference == 0.0
    replays = fake_cuda.replays
    captured.step()
    assert fake_cuda.replays == replays + 1


def test_a_captured_graph_whose_output_differs_from_eager_says_by_how_much(fake_cuda: FakeCuda) -> None:
    static = torch.zeros(4)
    fake_cuda.replay = lambda: static.copy_(torch.arange(4.0) + 0.5)
    captured = timing.capture(lambda: static.copy_(torch.arange(4.0)), tolerance=1e-3)
    assert captured.graph_used and captured.output_matches is False
    assert captured.output_difference == pytest.approx(0.5)


def test_cuda_parts_sum_one_event_pair_per_part_with_a_flush_before_each(fake_cuda: FakeCuda) -> None:
    flushes = 0

    def flush() -> None:
        nonlocal flushes
        flushes += 1
        time.sleep(0.02)

    samples = timing.time_cuda_parts(
        [lambda: spin(0.001), lambda: spin(0.002)], flush, min_time_s=0.0, min_samples=3, max_samples=3
    )
    assert flushes == 6 and len(samples) == 3
    assert all(0.003 <= sample < 0.02 for sample in samples)  # 1 + 2 ms parts, not two 20 ms flushes
