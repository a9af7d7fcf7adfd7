"""What runs inside a worker process: measuring one cell, probing one batch size, probing the peak.

Each function takes and returns plain dicts (they cross a process boundary). The parent,
harness/runner.py, decides what to run; these functions only measure. Definitions of every
figure are in docs/design.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from harness import accounting
from harness.hardware import is_cuda
from harness.measure.bandwidth import load_or_measure_peak
from harness.measure.flush import CpuCacheFlusher, CudaL2Flusher
from harness.measure.memory import CpuMemoryTracker, CudaMemoryTracker, MemoryPeak
from harness.measure.telemetry import NvmlSampler
from harness.measure.timing import time_cpu, time_cuda
from harness.model import build_decoder
from harness.model.attention import prepare_backend, resolve_backend
from harness.model.decoder import Decoder, KVCache
from harness.results.schema import Telemetry
from harness.scenario.schema import ModelSpec
from harness.variants import Variant

# Seconds of steady decoding over which NVML's energy counter is read on CUDA.
ENERGY_WINDOW_S = 1.0


def variant_payload(variant: Variant) -> dict[str, Any]:
    return variant.to_payload()


def _variant(payload: dict[str, Any]) -> Variant:
    return Variant.from_payload(payload["variant"])


def _sync(device: str) -> None:
    if is_cuda(device):
        torch.cuda.synchronize(device)


def _tracker(device: str) -> CpuMemoryTracker | CudaMemoryTracker:
    return CudaMemoryTracker(device) if is_cuda(device) else CpuMemoryTracker()


def _build_and_step(
    payload: dict[str, Any], backend: str, fill: bool
) -> tuple[Decoder, KVCache, torch.Tensor, MemoryPeak]:
    """Build the model and its cache, run one decode step; the memory peak of all of it.

    ``fill=False`` (memory probes) leaves weights and cache zeroed: the same bytes, written faster.
    """
    device, dtype = payload["device"], payload["dtype"]
    model = ModelSpec(**payload["model"])
    variant = _variant(payload)
    batch_size, context_len = payload["batch_size"], payload["context_len"]
    prepare_backend(backend)  # a kernel build or library load is not the cell's memory
    tracker = _tracker(device)
    with tracker.track():
        decoder = build_decoder(
            model, variant, dtype=dtype, device=device, backend=backend, seed=payload["seed"], random_weights=fill
        )
        cache = decoder.allocate_cache(batch_size, accounting.cache_len(context_len))
        if fill:
            generator = torch.Generator(device=device).manual_seed(payload["seed"])
            decoder.fill_cache_synthetic(cache, context_len, generator)
        tokens = torch.randint(0, model.vocab_size, (batch_size, 1), device=device)
        decoder.decode_step(tokens, cache, context_len)
        _sync(device)
    return decoder, cache, tokens, tracker.result()


def _time(fn: Callable[[], object], device: str, timing: dict[str, Any], cold: bool) -> dict[str, Any]:
    """Warm (and cold) samples of ``fn``; on CUDA device time by graph replay and host time beside it."""
    if is_cuda(device):
        warm = time_cuda(fn, **timing)
        out: dict[str, Any] = {"warm": warm.device_s, "host": warm.host_s}
        out["timer"] = "cuda-graph+events" if warm.graph_used else f"cuda-events ({warm.graph_error})"
        if cold:
            out["cold"] = time_cuda(fn, flush=CudaL2Flusher(device), host=False, **timing).device_s
        return out
    out = {"warm": time_cpu(fn, **timing), "timer": "perf_counter"}
    if cold:
        out["cold"] = time_cpu(fn, flush=CpuCacheFlusher(), **timing)
    return out


def _energy(step: Callable[[], object], device: str, batch_size: int) -> Telemetry | None:
    """NVML telemetry over a steady decode loop of known length (CUDA only)."""
    if not is_cuda(device):
        return None
    steps = 0
    with NvmlSampler(device) as sampler:
        start = time.perf_counter()
        while time.perf_counter() - start < ENERGY_WINDOW_S:
            for _ in range(10):
                step()
            torch.cuda.synchronize(device)
            steps += 10
    return sampler.result(tokens=steps * batch_size)


def measure_cell(payload: dict[str, Any]) -> dict[str, Any]:
    """Build one cell's model, measure its memory, then time its decode step and core attention.

    Returns the measured part of CellMetrics (as a dict), ``backend_used``, and under ``samples``
    the raw latency samples per metric (the parent pools them across rounds and summarises).
    With ``payload["repeat"]`` (a later measurement round) only the timing is done, with the
    backend the first round used.
    """
    device, metrics, repeat = payload["device"], set(payload["metrics"]), payload.get("repeat", False)
    device_type = "cuda" if is_cuda(device) else "cpu"
    asked = payload["backend"]
    start_backend = resolve_backend(asked, device_type, _variant(payload))  # "auto" starts from the default, then tunes
    torch.manual_seed(payload["seed"])
    out: dict[str, Any] = {}
    samples: dict[str, list[float]] = {}
    with torch.inference_mode():
        decoder, cache, tokens, memory = _build_and_step(payload, start_backend, fill=True)
        out["kv_cache_bytes"] = cache.nbytes
        if "memory" in metrics and not repeat:
            out["peak_memory_bytes"] = memory.peak_allocated_bytes
            out["peak_reserved_bytes"] = memory.peak_reserved_bytes
            out["nvml_process_bytes"] = memory.process_bytes if is_cuda(device) else None
        context_len, batch_size = payload["context_len"], payload["batch_size"]
        if asked == "auto" and not repeat:
            from harness.measure.autotune import choose_backend

            choice = choose_backend(decoder, cache, context_len)
            decoder.backend = choice.backend
            out["auto_latencies_s"] = choice.latencies_s
        out["backend_used"] = decoder.backend

        timing = payload["timing"]
        cold = payload["cold"]

        def step() -> object:
            return decoder.decode_step(tokens, cache, context_len)

        if "decode" in metrics:
            timed = _time(step, device, timing, cold)
            samples["decode_latency_s"] = timed["warm"]
            samples["decode_latency_cold_s"] = timed.get("cold", [])
            samples["decode_latency_host_s"] = timed.get("host", [])
            out["timer"] = timed["timer"]
            if not repeat:
                telemetry = _energy(step, device, batch_size)
                out["telemetry"] = telemetry.model_dump() if telemetry is not None else None
        if "attention" in metrics:
            q = torch.randn(decoder.core_query_shape(batch_size), device=device, dtype=decoder.dtype)

            def attention() -> object:
                return decoder.core_attention(q, cache, context_len)

            timed = _time(attention, device, timing, cold)
            samples["attention_latency_s"] = timed["warm"]
            samples["attention_latency_cold_s"] = timed.get("cold", [])
            out.setdefault("timer", timed["timer"])
    out["samples"] = {metric: values for metric, values in samples.items() if values}
    return out


def probe_batch(payload: dict[str, Any]) -> dict[str, Any]:
    """Does this batch size fit the budget? Build the model and cache, run one decode step.

    On CUDA the allocator is capped at the budget (so going over raises out-of-memory) and the
    allocator's peak is compared with it; on CPU the peak resident set above this worker's
    baseline is. The cache is left zeroed: zeroing already touches every page, and values do
    not change memory use; the weights are zeroed rather than drawn at random, for the same reason.
    """
    device, budget = payload["device"], payload["budget_bytes"]
    if is_cuda(device):
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), device)
    device_type = "cuda" if is_cuda(device) else "cpu"
    with torch.inference_mode():
        backend = resolve_backend(payload["backend"], device_type, _variant(payload))
        _, _, _, memory = _build_and_step(payload, backend, fill=False)
    peak = memory.peak_allocated_bytes
    return {"batch_size": payload["batch_size"], "peak_bytes": peak, "fits": peak <= budget}


def probe_peak(payload: dict[str, Any]) -> dict[str, Any]:
    """The target's peak bandwidth (cached per target); see harness/measure/bandwidth.py."""
    peak = load_or_measure_peak(payload["target"], payload["device"], env=payload["environment"])
    return peak.model_dump()
