"""The fastest correct attention backend for one decoder, cache and position, chosen by measuring.

Every backend that runs on the decoder's device times ``decoder.core_attention`` (all L layers over
the cache, as the "attention" metric does) in a short window, timed the way a cell reports it (on
CUDA: device time of CUDA-graph replays, so launch overhead does not decide), and its last layer's
output is checked against the eager reference on the same inputs, with a tolerance by dtype. The
fastest backend that agrees wins; the others keep their median latency, or the reason they were
rejected.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from harness.model.attention import available_backends
from harness.model.decoder import Decoder, KVCache

# Largest |candidate - eager| allowed, absolute and relative, per dtype. float32 on CUDA is looser
# because TF32 matmuls may be on.
TOLERANCE: dict[torch.dtype, float] = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 3e-3}
CUDA_FLOAT32_TOLERANCE = 2e-3
# Timing window per candidate: a share of the budget, split between warm-up and timed samples.
WARMUP_SHARE = 0.25
MIN_SAMPLES = 3
MAX_SAMPLES = 50

# (function to time, seconds for that candidate) -> median seconds per call
Timer = Callable[[Callable[[], object], float], float]


@dataclass(frozen=True)
class AutoChoice:
    """The backend ``auto`` resolves to, and the evidence."""

    backend: str
    latencies_s: dict[str, float]  # median core-attention latency per agreeing candidate
    rejected: dict[str, str]  # candidate -> why it was not eligible (error or disagreement with eager)


def choose_backend(
    decoder: Decoder,
    cache: KVCache,
    pos: int,
    *,
    time_budget_s: float = 0.3,
    candidates: tuple[str, ...] | None = None,
    timer: Timer | None = None,
    seed: int = 0,
) -> AutoChoice:
    """Time every backend available on the decoder's device and return the fastest that agrees with eager.

    ``pos`` is the decode position (the query attends over cache positions 0 .. pos). ``candidates``
    defaults to every backend available on the device; ones not available there are rejected.
    ``decoder.backend`` is restored afterwards. Raises RuntimeError when no candidate qualifies.
    """
    device_type = decoder.device.type
    names = available_backends(device_type) if candidates is None else candidates
    available = tuple(name for name in available_backends(device_type) if decoder.supports(name) is None)
    time_one = timer if timer is not None else _default_timer(device_type)
    per_candidate_s = time_budget_s / max(1, len(names))
    q = _query(decoder, cache, seed, pos)
    expected = decoder.reference_attention(q, cache, pos)
    tolerance = output_tolerance(decoder.dtype, device_type)
    latencies_s: dict[str, float] = {}
    rejected: dict[str, str] = {}
    original = decoder.backend
    try:
        for name in names:
            if name not in available:
                rejected[name] = decoder.supports(name) or f"not available on {device_type}"
                continue
            decoder.backend = name
            try:
                out = decoder.core_attention(q, cache, pos)
                difference = (out.float() - expected.float()).abs()
                allowed = tolerance * (1.0 + expected.float().abs())
                if not bool(torch.isfinite(out).all()) or bool((difference > allowed).any()):
                    rejected[name] = f"disagrees with eager: max |difference| {difference.max().item():.3g}"
                    continue
                latencies_s[name] = time_one(lambda: decoder.core_attention(q, cache, pos), per_candidate_s)
            except Exception as exc:  # a backend may fail in many ways (compile errors, unsupported shapes)
                rejected[name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        decoder.backend = original
    if not latencies_s:
        raise RuntimeError(f"no attention backend qualified on {device_type}: {rejected}")
    return AutoChoice(backend=min(latencies_s, key=latencies_s.__getitem__), latencies_s=latencies_s, rejected=rejected)


def _query(decoder: Decoder, cache: KVCache, seed: int, pos: int) -> Tensor:
    """A standard-normal query (:meth:`Decoder.core_query_shape`) in the decoder's dtype, on its device, for the
    new positions pos .. the cache's end (a decode step's q_len, a prefill's whole prompt)."""
    generator = torch.Generator(device=decoder.device).manual_seed(seed)
    shape = decoder.core_query_shape(cache.batch_size, cache.cache_len - pos)
    return torch.randn(shape, generator=generator, device=decoder.device).to(decoder.dtype)


def output_tolerance(dtype: torch.dtype, device_type: str) -> float:
    """Largest relative difference from the eager reference a result of this dtype may show (see TOLERANCE)."""
    if dtype == torch.float32 and device_type == "cuda":
        return CUDA_FLOAT32_TOLERANCE
    return TOLERANCE.get(dtype, TOLERANCE[torch.bfloat16])


def _default_timer(device_type: str) -> Timer:
    """Median seconds per call from the harness's timing loops, in a window of the given length."""
    from harness.measure.timing import time_cpu, time_cuda

    def time_window(fn: Callable[[], object], window_s: float) -> float:
        warmup_s, min_time_s = WARMUP_SHARE * window_s, (1 - WARMUP_SHARE) * window_s
        if device_type == "cuda":  # graph replay, as the cell is reported (eager when capture fails there too)
            timings = time_cuda(
                fn,
                warmup_s=warmup_s,
                min_time_s=min_time_s,
                min_samples=MIN_SAMPLES,
                max_samples=MAX_SAMPLES,
                graph=True,
                host=False,
            )
            return statistics.median(timings.device_s)
        samples = time_cpu(
            fn, warmup_s=warmup_s, min_time_s=min_time_s, min_samples=MIN_SAMPLES, max_samples=MAX_SAMPLES
        )
        return statistics.median(samples.seconds)

    return time_window
