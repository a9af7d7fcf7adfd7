"""Timing loops: raw per-step samples in seconds (docs/design.md, "Timing").

CPU: ``time.perf_counter`` around a calibrated number of calls, so that a sample lasts far
longer than the timer's resolution; GC off while timing. CUDA: CUDA events around each
CUDA-graph replay (or a batch of replays), one synchronisation per batch of samples at read-out,
plus a host-inclusive eager time beside it. Both warm up by time, not by count, and both can
flush caches between samples (outside the timed region, one step per sample) for cold numbers.

Neither summarises: statistics over the samples live elsewhere.
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# A sample lasts at least this long and at least 1000x the measured timer resolution.
MIN_SAMPLE_S = 1e-3
RESOLUTION_FACTOR = 1000
MAX_INNER_REPS = 10**7
CUDA_EVENTS_PER_BATCH = 1000  # samples queued between two read-outs
CUDA_GRAPH_WARMUP_STEPS = 3  # side-stream iterations before capture, as the PyTorch CUDA-graph docs ask


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
    if warmup_s < 0 or min_time_s < 0:
        raise ValueError(f"warmup_s and min_time_s must be >= 0, got {warmup_s} and {min_time_s}")
    if not 1 <= min_samples <= max_samples:
        raise ValueError(f"need 1 <= min_samples <= max_samples, got {min_samples} and {max_samples}")


def _done(n_samples: int, timed_s: float, min_time_s: float, min_samples: int, max_samples: int) -> bool:
    """Stop when both ``min_time_s`` of timed work and ``min_samples`` are in, or at ``max_samples``."""
    return n_samples >= max_samples or (n_samples >= min_samples and timed_s >= min_time_s)


def _warm_up(fn: Callable[[], object], warmup_s: float, sync: Callable[[], None] | None = None) -> None:
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
    fn: Callable[[], object],
    *,
    warmup_s: float,
    min_time_s: float,
    min_samples: int,
    max_samples: int,
    flush: Callable[[], None] | None = None,
) -> list[float]:
    """Per-call times of ``fn`` in seconds, one per sample.

    Without ``flush``, a sample times a calibrated number of back-to-back calls (at least 1 ms
    and 1000x the timer's resolution) and records elapsed / calls. With ``flush``, each sample
    times one call, made right after ``flush()``, which is not timed.
    """
    _check_limits(warmup_s, min_time_s, min_samples, max_samples)
    with gc_disabled():
        _warm_up(fn, warmup_s)
        target_s = max(MIN_SAMPLE_S, RESOLUTION_FACTOR * perf_counter_resolution_s())
        inner = 1 if flush is not None else calibrate_inner_reps(fn, target_s)
        samples: list[float] = []
        timed_s = 0.0
        while not _done(len(samples), timed_s, min_time_s, min_samples, max_samples):
            if flush is not None:
                flush()
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            elapsed = time.perf_counter() - start
            samples.append(elapsed / inner)
            timed_s += elapsed
        return samples


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


@dataclass(frozen=True)
class CudaTimings:
    """Raw CUDA timing samples of one step, in seconds."""

    device_s: list[float]  # CUDA-event time per step (graph replay when graph_used)
    host_s: list[float]  # perf_counter around one eager call plus torch.cuda.synchronize; empty with host=False
    graph_used: bool
    graph_error: str | None = None  # why capture failed, when a graph was asked for and not used
    inner_reps: int = 1  # steps between one event pair (1 when flushing)


def time_cuda(
    fn: Callable[[], object],
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

    ``fn`` runs on the current stream and must be capturable for ``graph=True`` (static inputs);
    when capture fails the device time is taken from eager calls and ``graph_error`` says why.
    ``host=False`` skips the host-inclusive samples where a caller has no use for them.
    """
    import torch

    _check_limits(warmup_s, min_time_s, min_samples, max_samples)
    with gc_disabled():
        _warm_up(fn, warmup_s, torch.cuda.synchronize)
        step: Callable[[], object] = fn
        captured, graph_error = _capture(fn) if graph else (None, None)
        if captured is not None:
            step = captured.replay
        inner = 1 if flush is not None else _cuda_inner_reps(step)
        device_s = _device_samples(step, inner, flush, min_time_s, min_samples, max_samples)
        host_s = _host_samples(fn, flush, min_time_s, min_samples, max_samples) if host else []
    return CudaTimings(
        device_s=device_s,
        host_s=host_s,
        graph_used=captured is not None,
        graph_error=graph_error,
        inner_reps=inner,
    )


def _capture(fn: Callable[[], object]) -> tuple[torch.cuda.CUDAGraph | None, str | None]:
    """Capture one call of ``fn`` into a CUDA graph: warm-up on a side stream, then capture.

    Returns ``(graph, None)``, or ``(None, reason)`` when capture fails.
    """
    import torch

    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(CUDA_GRAPH_WARMUP_STEPS):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph):
            fn()
        cuda_graph.replay()  # the first replay uploads the graph; keep it out of the samples
        torch.cuda.synchronize()
    except Exception as exc:  # capture raises many kinds of errors (RuntimeError, AssertionError, ...)
        with contextlib.suppress(Exception):
            torch.cuda.synchronize()
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0]
    return cuda_graph, None


def _cuda_inner_reps(step: Callable[[], object], probe_steps: int = 10) -> int:
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
    step: Callable[[], object],
    inner: int,
    flush: Callable[[], None] | None,
    min_time_s: float,
    min_samples: int,
    max_samples: int,
) -> list[float]:
    """Queue a batch of event pairs around ``inner`` steps each; one synchronisation per batch."""
    import torch

    samples: list[float] = []
    timed_s = 0.0
    batch = min(min_samples, CUDA_EVENTS_PER_BATCH)
    while True:
        pairs = []
        for _ in range(batch):
            if flush is not None:
                flush()  # between the previous end event and this start event: not timed
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                step()
            end.record()
            pairs.append((start, end))
        pairs[-1][1].synchronize()  # the one synchronisation for this batch: events complete in order
        for start, end in pairs:
            elapsed = start.elapsed_time(end) / 1e3
            samples.append(elapsed / inner)
            timed_s += elapsed
        if _done(len(samples), timed_s, min_time_s, min_samples, max_samples):
            return samples
        per_sample_s = timed_s / len(samples)
        wanted = math.ceil(max(min_time_s - timed_s, 0.0) / per_sample_s) if per_sample_s > 0 else batch
        batch = max(1, min(max(wanted, min_samples - len(samples)), max_samples - len(samples), CUDA_EVENTS_PER_BATCH))


def _host_samples(
    fn: Callable[[], object],
    flush: Callable[[], None] | None,
    min_time_s: float,
    min_samples: int,
    max_samples: int,
) -> list[float]:
    """Wall time of one eager call until the device is done, from an idle device."""
    import torch

    samples: list[float] = []
    timed_s = 0.0
    while not _done(len(samples), timed_s, min_time_s, min_samples, max_samples):
        if flush is not None:
            flush()
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        samples.append(elapsed)
        timed_s += elapsed
    return samples
