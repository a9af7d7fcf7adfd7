"""Timing loops: raw per-step samples in seconds (docs/design.md, "Timing").

CPU: ``time.perf_counter`` around a calibrated number of calls, so that a sample lasts far
longer than the timer's resolution; GC off while timing. CUDA: the step is captured once as a
CUDA graph (:func:`capture`, which checks the graph against the eager step), then CUDA events
around each replay (or a batch of replays), one synchronisation per batch of samples at read-out,
plus a host-inclusive eager time beside it. Both warm up by time, not by count.

Warm samples time ``inner_reps`` back-to-back calls and record their mean; cold samples time
single calls, each right after a cache flush that is not timed. A cold sample may also be a sum of
*parts* (one flush before each part): core attention's layers, so that no layer reads another
layer's data from a cache the previous layer warmed. On CUDA those parts run back to back in one
captured sequence with the flushes inside, less the flushes timed alone
(:func:`time_cuda_cold_sequence`): a graph and an event pair per layer would put the host's launch
of each next graph inside its pair. Every sample set says how it was taken
(:class:`Samples`), so that statistics are only compared between like sets.

Nothing here summarises: statistics over the samples live elsewhere.
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.measure.window import (
    STEADY_TOLERANCE,
    WarmUp,
    Window,
    ci_half_width,
    least_reached,
    warm_up_until_steady,
)

if TYPE_CHECKING:
    import torch

# A sample lasts at least this long and at least 1000x the measured timer resolution.
MIN_SAMPLE_S = 1e-3
RESOLUTION_FACTOR = 1000
MAX_INNER_REPS = 10**7
CUDA_EVENTS_PER_BATCH = 1000  # samples queued between two read-outs
# Device-side spin (torch.cuda._sleep cycles, about 0.5 ms at 2 GHz) before each cold-sequence sample: longer
# than the host takes to enqueue the sample's events and two graph replays.
COLD_SPIN_CYCLES = 1_000_000
CUDA_GRAPH_WARMUP_STEPS = 3  # side-stream iterations before capture, as the PyTorch CUDA-graph docs ask

Step = Callable[[], object]


@dataclass(frozen=True)
class Samples:
    """One set of timing samples, in seconds per call, and how they were taken."""

    seconds: list[float]
    timer: str  # "perf_counter", "cuda-graph+events" (replays) or "cuda-events" (eager calls)
    inner_reps: int  # calls per sample; a sample is their mean (1 for cold samples)
    graph_used: bool | None = None  # CUDA only
    graph_error: str | None = None  # CUDA: why no graph, when one was asked for
    flush: str | None = None  # cold samples: how caches were emptied before each
    warmup_s: float | None = None  # how long the warm-up before them ran
    warmup_steady: bool | None = None  # whether the step time had stopped moving by then (window.py)
    ci_half_width: float | None = None  # the median's 95% interval, larger side, relative to the median


def perf_counter_resolution_s(reads: int = 2000) -> float:
    """The smallest non-zero step between two consecutive ``perf_counter`` reads, measured."""
    smallest = math.inf
    previous = time.perf_counter()
    for _ in range(reads):
        now = time.perf_counter()
        if now > previous:
            smallest = min(smallest, now - previous)
        previous = now
    return smallest if math.isfinite(smallest) else time.get_clock_info("perf_counter").resolution


def calibrate_inner_reps(fn: Callable[[], object], target_s: float) -> int:
    """The number of back-to-back calls of ``fn`` that together take at least ``target_s``."""
    reps = 1
    while True:
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= target_s or reps >= MAX_INNER_REPS:
            return reps
        # Aim 20% past the target from the rate just seen; grow at least 2x, at most 100x per round.
        wanted = math.ceil(reps * 1.2 * target_s / elapsed) if elapsed > 0 else reps * 100
        reps = min(MAX_INNER_REPS, max(2 * reps, min(wanted, 100 * reps)))


@contextlib.contextmanager
def gc_disabled() -> Iterator[None]:
    """Collect once, then keep the garbage collector off; restore its state on exit, also on error."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _check_limits(warmup_s: float, min_time_s: float, min_samples: int, max_samples: int) -> None:
    if warmup_s < 0:
        raise ValueError(f"warmup_s must be >= 0, got {warmup_s}")
    Window(min_time_s, min_samples, max_samples)  # raises on the window's own limits


def warm_up(fn: Callable[[], object], warmup_s: float, sync: Callable[[], None] | None = None) -> None:
    """Call ``fn`` (at least once) until ``warmup_s`` of wall time has passed."""
    start = time.perf_counter()
    while True:
        fn()
        if sync is not None:
            sync()
        if time.perf_counter() - start >= warmup_s:
            return


# ---------------------------------------------------------------------------------------------
# CPU


def time_cpu(
    fn: Step,
    *,
    warmup_s: float,
    min_time_s: float,
    min_samples: int,
    max_samples: int,
    flush: Callable[[], None] | None = None,
    inner_reps: int | None = None,
    warmup_max_s: float | None = None,
    target_ci: float | None = None,
    max_time_s: float | None = None,
) -> Samples:
    """Per-call times of ``fn`` in seconds, one per sample.

    Without ``flush``, a sample times ``inner_reps`` back-to-back calls (by default calibrated so
    that a sample lasts at least 1 ms and 1000x the timer's resolution; pass the count an earlier
    round calibrated to keep rounds alike) and records elapsed / calls. With ``flush``, each sample
    times one call, made right after ``flush()``, which is not timed.

    With ``warmup_max_s`` the warm-up lasts at least ``warmup_s`` and then until the step time is
    steady, at most ``warmup_max_s``; with ``target_ci`` sampling goes on past ``min_time_s`` until the
    median's 95% interval is within ``target_ci`` of it, at most ``max_time_s`` of timed work
    (harness/measure/window.py). Without them: a fixed warm-up and window, as before.
    """
    if flush is not None:
        return time_cpu_parts(
            [fn], flush, warmup_s=warmup_s, min_time_s=min_time_s, min_samples=min_samples, max_samples=max_samples
        )
    _check_limits(warmup_s, min_time_s, min_samples, max_samples)
    window = Window(min_time_s, min_samples, max_samples, target_ci, max_time_s)
    with gc_disabled():
        warm = warm_up_until(fn, warmup_s, warmup_max_s, target_ci)
        if inner_reps is None:
            inner_reps = calibrate_inner_reps(fn, max(MIN_SAMPLE_S, RESOLUTION_FACTOR * perf_counter_resolution_s()))
        samples: list[float] = []
        timed_s = 0.0
        while not window.done(samples, timed_s):
            start = time.perf_counter()
            for _ in range(inner_reps):
                fn()
            elapsed = time.perf_counter() - start
            samples.append(elapsed / inner_reps)
            timed_s += elapsed
        return Samples(
            samples,
            "perf_counter",
            inner_reps,
            warmup_s=warm.seconds,
            warmup_steady=warm.steady,
            ci_half_width=ci_half_width(samples),
        )


def warm_up_until(
    fn: Callable[[], object],
    warmup_s: float,
    warmup_max_s: float | None,
    tolerance: float | None,
    sync: Callable[[], None] | None = None,
) -> WarmUp:
    """A fixed warm-up of ``warmup_s`` (no ``warmup_max_s``), or one until steady between ``warmup_s`` and
    ``warmup_max_s`` (window medians within ``tolerance``, by default ``STEADY_TOLERANCE``)."""
    if warmup_max_s is None:
        start = time.perf_counter()
        warm_up(fn, warmup_s, sync)
        return WarmUp(time.perf_counter() - start, steady=None, windows=0)
    return warm_up_until_steady(
        fn,
        min_s=warmup_s,
        max_s=max(warmup_s, warmup_max_s),
        tolerance=STEADY_TOLERANCE if tolerance is None else tolerance,
        sync=sync,
    )


def flush_flags(parts: Sequence[Step], flush_before: Sequence[bool] | None) -> list[bool]:
    """Which parts a flush precedes: all by default; the first part always (a cold sample starts cold)."""
    flags = [True] * len(parts) if flush_before is None else list(flush_before)
    if len(flags) != len(parts):
        raise ValueError(f"{len(flags)} flush flags for {len(parts)} parts")
    if flags:
        flags[0] = True
    return flags


def time_cpu_parts(
    parts: Sequence[Step],
    flush: Callable[[], None],
    *,
    warmup_s: float,
    min_time_s: float,
    min_samples: int,
    max_samples: int,
    flush_before: Sequence[bool] | None = None,
) -> Samples:
    """Cold samples: each the sum over ``parts`` of one call each, timed alone, with ``flush()`` (not
    timed) before the first part and before every part ``flush_before`` marks (default: every part)."""
    _check_limits(warmup_s, min_time_s, min_samples, max_samples)
    flags = flush_flags(parts, flush_before)
    with gc_disabled():
        warm_up(lambda: [part() for part in parts], warmup_s)
        samples: list[float] = []
        timed_s = 0.0
        while not least_reached(len(samples), timed_s, min_time_s, min_samples, max_samples):
            total = 0.0
            for part, flush_first in zip(parts, flags, strict=True):
                if flush_first:
                    flush()
                start = time.perf_counter()
                part()
                total += time.perf_counter() - start
            samples.append(total)
            timed_s += total
        return Samples(samples, "perf_counter", 1)


def bare_loop_median(fn: Callable[[], object], n: int, *, sync: Callable[[], None] | None = None) -> float:
    """Median of ``n`` single calls of ``fn`` (then ``sync``, e.g. torch.cuda.synchronize), no frills.

    The reference against which the runner's own overhead is measured.
    """
    times: list[float] = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------
# CUDA


class GraphCaptureStateError(RuntimeError):
    """A failed capture left this process's CUDA state unusable (still capturing, or on the capture
    stream): nothing more can be timed here; the cell must be measured again in a fresh worker."""


@dataclass
class Captured:
    """A step ready to time on CUDA: a graph replay, or the eager call when capture failed."""

    step: Step  # what the timing loops call
    graph_used: bool
    graph_error: str | None = None  # why capture failed
    # max |graph output - eager output|, and the largest allowed (tolerance · (1 + |eager|)); None
    # when no graph was captured or the step returns no tensor
    output_difference: float | None = None
    output_allowed: float | None = None
    graph: torch.cuda.CUDAGraph | None = None  # keeps the graph (and its memory pool) alive

    @property
    def output_matches(self) -> bool | None:
        if self.output_difference is None or self.output_allowed is None:
            return None
        return self.output_difference <= self.output_allowed

    @property
    def timer(self) -> str:
        return "cuda-graph+events" if self.graph_used else "cuda-events"


def capture(fn: Step, *, graph: bool = True, tolerance: float = 0.0) -> Captured:
    """Capture one call of ``fn`` into a CUDA graph and check the graph against the eager call.

    ``fn`` runs on the current stream with static inputs and returns a tensor (or nothing). The eager
    output is kept; the graph is warmed up on a side stream, captured, its output poisoned with NaN
    and replayed once: an output left unwritten means the graph captured nothing (e.g. kernels went
    to another device's stream), which raises RuntimeError rather than yielding a ~1 µs "latency".
    A written output is compared with the eager one (``output_difference`` against ``tolerance``,
    relative to the output's magnitude). When capture itself fails, the eager call is timed and
    ``graph_error`` says why; every CUDA setting capture changed is restored first, and
    :class:`GraphCaptureStateError` is raised if that cannot be done.
    """
    import torch

    if not graph:
        return Captured(step=fn, graph_used=False)
    reference = fn()
    expected = reference.detach().clone() if isinstance(reference, torch.Tensor) else None
    torch.cuda.synchronize()
    previous = torch.cuda.current_stream()
    cuda_graph = torch.cuda.CUDAGraph()
    try:
        output = _capture_on_side_stream(fn, cuda_graph, previous)
    except Exception as exc:  # capture raises many kinds of errors (RuntimeError, AssertionError, ...)
        _restore_after_failed_capture(previous)
        return Captured(step=fn, graph_used=False, graph_error=f"{type(exc).__name__}: {exc}".splitlines()[0])
    captured = Captured(step=cuda_graph.replay, graph_used=True, graph=cuda_graph)
    if expected is not None and isinstance(output, torch.Tensor):
        output.fill_(float("nan"))
        cuda_graph.replay()
        torch.cuda.synchronize()
        if bool(torch.isnan(output).all()) and not bool(torch.isnan(expected).all()):
            raise RuntimeError(
                "the captured CUDA graph did not write its output (an empty graph: were its kernels launched "
                "on another device's stream?); refusing to time it"
            )
        if output.numel():  # the element worst off against what it was allowed
            difference = (output.float() - expected.float()).abs().nan_to_num(nan=math.inf).flatten()
            allowed = (tolerance * (1.0 + expected.float().abs())).flatten()
            worst = int((difference - allowed).argmax())
            captured.output_difference = float(difference[worst])
            captured.output_allowed = float(allowed[worst])
    return captured


def _capture_on_side_stream(fn: Step, cuda_graph: torch.cuda.CUDAGraph, previous: torch.cuda.Stream) -> object:
    """Warm ``fn`` up on a side stream, then capture one call; the side stream is left in every case."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(previous)
    with torch.cuda.stream(side):
        for _ in range(CUDA_GRAPH_WARMUP_STEPS):
            fn()
        side.synchronize()
        cuda_graph.capture_begin()
        try:
            output = fn()
        except BaseException:
            with contextlib.suppress(Exception):  # end the capture; the step's own error is the one to report
                cuda_graph.capture_end()
            raise
        cuda_graph.capture_end()  # raises if the capture was invalidated
    previous.wait_stream(side)
    cuda_graph.replay()  # the first replay uploads the graph; keep it out of the samples
    torch.cuda.synchronize()
    return output


def _restore_after_failed_capture(previous: torch.cuda.Stream) -> None:
    """Back on the stream timing started from, not capturing, the failed graph's memory released."""
    import torch

    with contextlib.suppress(Exception):
        torch.cuda.set_stream(previous)
    with contextlib.suppress(Exception):
        torch.cuda.synchronize()
    with contextlib.suppress(Exception):
        torch.cuda.empty_cache()
    capturing = True
    with contextlib.suppress(Exception):
        capturing = bool(torch.cuda.is_current_stream_capturing())
    if capturing or torch.cuda.current_stream() != previous:
        raise GraphCaptureStateError("a failed CUDA graph capture left this process capturing or on the capture stream")


def time_cuda_steps(
    step: Step,
    *,
    min_time_s: float,
    min_samples: int,
    max_samples: int,
    flush: Callable[[], None] | None = None,
    inner_reps: int | None = None,
) -> tuple[list[float], int]:
    """Device seconds per call of ``step`` (events around ``inner_reps`` calls), and the count used.

    With ``flush`` every sample is one call right after the flush (inner_reps 1). Without it,
    ``inner_reps`` defaults to enough calls for a sample of at least ``MIN_SAMPLE_S``.
    """
    _check_limits(0.0, min_time_s, min_samples, max_samples)
    inner = 1 if flush is not None else inner_reps or _cuda_inner_reps(step)
    with gc_disabled():
        samples = _device_samples([step], inner, flush, min_time_s, min_samples, max_samples, [True])
    return samples, inner


def time_cuda_parts(
    parts: Sequence[Step],
    flush: Callable[[], None],
    *,
    min_time_s: float,
    min_samples: int,
    max_samples: int,
    flush_before: Sequence[bool] | None = None,
) -> list[float]:
    """Cold device samples: each the sum over ``parts`` of one call each between its own events, with
    ``flush()`` (not timed) before the first part and before every part ``flush_before`` marks."""
    _check_limits(0.0, min_time_s, min_samples, max_samples)
    with gc_disabled():
        return _device_samples(parts, 1, flush, min_time_s, min_samples, max_samples, flush_flags(parts, flush_before))


def cold_sequence(parts: Sequence[Step], flush: Callable[[], None], flags: Sequence[bool]) -> tuple[Step, Step]:
    """The two steps :func:`time_cuda_cold_sequence` captures and times: every part in order with ``flush()``
    before each part ``flags`` marks (returning the last part's output), and the same flushes alone."""

    def sequence() -> object:
        out: object = None
        for part, flush_first in zip(parts, flags, strict=True):
            if flush_first:
                flush()
            out = part()
        return out

    def evictions() -> None:
        for flush_first in flags:
            if flush_first:
                flush()

    return sequence, evictions


def time_cuda_cold_sequence(
    sequence: Step, evictions: Step, *, min_time_s: float, min_samples: int, max_samples: int
) -> list[float]:
    """Cold device samples of parts run back to back in one captured sequence with the evictions inside.

    ``sequence`` runs the evictions and the parts in order (one graph replay: no host launch between two
    parts), ``evictions`` the same evictions alone. Each sample enqueues a device-side spin, then events
    around ``evictions`` and around ``sequence`` back to back: the host enqueues all of it while the device
    spins, so no host gap falls inside an event pair; a sample is t(sequence) - t(evictions), the parts'
    own time.
    """
    import torch

    _check_limits(0.0, min_time_s, min_samples, max_samples)
    spin = getattr(torch.cuda, "_sleep", None)
    samples: list[float] = []
    timed_s = 0.0
    batch = min(min_samples, CUDA_EVENTS_PER_BATCH)
    with gc_disabled():
        while True:
            pending = []
            for _ in range(batch):
                if spin is not None:
                    spin(COLD_SPIN_CYCLES)  # the device waits here while the host enqueues the sample
                marks = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
                marks[0].record()
                evictions()
                marks[1].record()
                sequence()
                marks[2].record()
                pending.append(marks)
            pending[-1][-1].synchronize()
            for first, middle, last in pending:
                whole_s = middle.elapsed_time(last) / 1e3
                samples.append(max(whole_s - first.elapsed_time(middle) / 1e3, 0.0))
                timed_s += whole_s
            if least_reached(len(samples), timed_s, min_time_s, min_samples, max_samples):
                return samples
            batch = _next_batch(len(samples), timed_s, batch, min_time_s, min_samples, max_samples)


@dataclass(frozen=True)
class CudaTimings:
    """Raw CUDA timing samples of one step, in seconds."""

    device_s: list[float]  # CUDA-event time per step (graph replay when graph_used)
    host_s: list[float]  # perf_counter around one eager call plus torch.cuda.synchronize; empty with host=False
    graph_used: bool
    graph_error: str | None = None  # why capture failed, when a graph was asked for and not used
    inner_reps: int = 1  # steps between one event pair (1 when flushing)

    @property
    def samples(self) -> Samples:
        timer = "cuda-graph+events" if self.graph_used else "cuda-events"
        return Samples(self.device_s, timer, self.inner_reps, self.graph_used, self.graph_error)


def time_cuda(
    fn: Step,
    *,
    warmup_s: float,
    min_time_s: float,
    min_samples: int,
    max_samples: int,
    flush: Callable[[], None] | None = None,
    graph: bool = True,
    host: bool = True,
) -> CudaTimings:
    """Device time (CUDA events, graph replay when possible) and host-inclusive time of ``fn``.

    :func:`capture`, then :func:`time_cuda_steps` on what it gives, then host samples of the eager
    call. ``host=False`` skips the host-inclusive samples where a caller has no use for them.
    """
    import torch

    _check_limits(warmup_s, min_time_s, min_samples, max_samples)
    with gc_disabled():
        warm_up(fn, warmup_s, torch.cuda.synchronize)
    captured = capture(fn, graph=graph)
    device_s, inner = time_cuda_steps(
        captured.step, min_time_s=min_time_s, min_samples=min_samples, max_samples=max_samples, flush=flush
    )
    host_s = host_samples(fn, min_time_s=min_time_s, min_samples=min_samples, max_samples=max_samples) if host else []
    return CudaTimings(device_s, host_s, captured.graph_used, captured.graph_error, inner)


def _cuda_inner_reps(step: Step, probe_steps: int = 10) -> int:
    """Steps per event pair so that one sample lasts at least ``MIN_SAMPLE_S`` of device time."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(probe_steps):
        step()
    end.record()
    end.synchronize()
    step_s = start.elapsed_time(end) / 1e3 / probe_steps  # elapsed_time is in milliseconds
    if step_s <= 0:
        return 1
    return max(1, min(MAX_INNER_REPS, math.ceil(MIN_SAMPLE_S / step_s)))


def _device_samples(
    parts: Sequence[Step],
    inner: int,
    flush: Callable[[], None] | None,
    min_time_s: float,
    min_samples: int,
    max_samples: int,
    flush_before: Sequence[bool],
) -> list[float]:
    """Queue event pairs around each part (``inner`` calls each); one synchronisation per batch of samples.

    A sample is the sum over parts of their event time divided by ``inner``; with ``flush``, a flush
    is enqueued before each part ``flush_before`` marks, between the previous end event and the next
    start event.
    """
    import torch

    samples: list[float] = []
    timed_s = 0.0
    batch = min(min_samples, CUDA_EVENTS_PER_BATCH)
    while True:
        pending: list[list[tuple[torch.cuda.Event, torch.cuda.Event]]] = []
        for _ in range(batch):
            pairs = []
            for part, flush_first in zip(parts, flush_before, strict=True):
                if flush is not None and flush_first:
                    flush()  # not timed: between the previous end event and this start event
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(inner):
                    part()
                end.record()
                pairs.append((start, end))
            pending.append(pairs)
        pending[-1][-1][1].synchronize()  # the one synchronisation for this batch: events complete in order
        for pairs in pending:
            elapsed = sum(start.elapsed_time(end) for start, end in pairs) / 1e3
            samples.append(elapsed / inner)
            timed_s += elapsed
        if least_reached(len(samples), timed_s, min_time_s, min_samples, max_samples):
            return samples
        batch = _next_batch(len(samples), timed_s, batch, min_time_s, min_samples, max_samples)


def _next_batch(
    n_samples: int, timed_s: float, batch: int, min_time_s: float, min_samples: int, max_samples: int
) -> int:
    """Samples to queue before the next read-out: enough for the time still wanted, within the limits."""
    per_sample_s = timed_s / n_samples
    wanted = math.ceil(max(min_time_s - timed_s, 0.0) / per_sample_s) if per_sample_s > 0 else batch
    return max(1, min(max(wanted, min_samples - n_samples), max_samples - n_samples, CUDA_EVENTS_PER_BATCH))


def host_samples(fn: Step, *, min_time_s: float, min_samples: int, max_samples: int) -> list[float]:
    """Wall time of one eager call until the device is done, from an idle device."""
    import torch

    samples: list[float] = []
    timed_s = 0.0
    with gc_disabled():
        while not least_reached(len(samples), timed_s, min_time_s, min_samples, max_samples):
            torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            samples.append(elapsed)
            timed_s += elapsed
    return samples
