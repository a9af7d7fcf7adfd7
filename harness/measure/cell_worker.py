"""What runs inside a worker process: describing the machine, probing its peak, choosing ``auto``'s
backend, measuring one cell, probing one batch size.

Each function takes a typed request (harness/measure/protocol.py: the parent names it by its ``Entry``,
never imports it) and returns a plain dict (they cross a process boundary). The parent,
harness/run/runner.py, decides what to run; these functions only measure. Definitions of every
figure are in docs/design.md; the self-checks a measurement carries are in harness/measure/checks.py.

Every function first makes the request's device the current one: on ``cuda:N`` streams, events,
graphs and synchronisations would otherwise all go to GPU 0.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from harness import accounting, backends
from harness.hardware import detect_target, fingerprint, is_cuda
from harness.lengths import sequence_lengths
from harness.measure import checks, timing
from harness.measure.autotune import choose_backend, output_tolerance
from harness.measure.bandwidth import load_or_measure_peak
from harness.measure.flush import CudaL2Flusher, cpu_flusher
from harness.measure.hostload import HostLoadMeter
from harness.measure.memory import CpuMemoryTracker, CudaMemoryTracker, MemoryPeak
from harness.measure.output_check import output_check
from harness.measure.protocol import CellRequest, MachineRequest, PeakRequest
from harness.measure.reference import reference_loop
from harness.measure.telemetry import NvmlSampler, other_gpu_processes
from harness.model import build_decoder, sdpa
from harness.model.attention import causal_mask, prepare_backend, resolve_backend
from harness.model.decoder import Decoder, KVCache
from harness.results.schema import Telemetry

# Result field of each kind of sample set, per metric.
DECODE_FIELDS = {"warm": "decode_latency_s", "cold": "decode_latency_cold_s", "host": "decode_latency_host_s"}
ATTENTION_FIELDS = {"warm": "attention_latency_s", "cold": "attention_latency_cold_s"}
ENERGY_CHUNK_S = 0.05  # replays between two checks of the clock in that window


def enter_device(device: str) -> None:
    """Make ``device`` this process's current CUDA device (a no-op on CPU)."""
    if is_cuda(device):
        torch.cuda.set_device(torch.device(device))


def set_threads(request: CellRequest | MachineRequest) -> int | None:
    """On CPU, torch's intra-op threads as the scenario asks (``measure.threads``; absent: torch's own
    default); the count this worker then runs with. None on CUDA, where the host threads time nothing."""
    if is_cuda(request.device):
        return None
    if request.threads:
        torch.set_num_threads(int(request.threads))
    return torch.get_num_threads()


def _sync(device: str) -> None:
    if is_cuda(device):
        torch.cuda.synchronize(device)


def _tracker(device: str) -> CpuMemoryTracker | CudaMemoryTracker:
    return CudaMemoryTracker(device) if is_cuda(device) else CpuMemoryTracker()


def _build_and_step(
    request: CellRequest, backend: str, fill: bool
) -> tuple[Decoder, KVCache, torch.Tensor, MemoryPeak]:
    """Build the model and its cache, run one decode step; the memory peak of all of it.

    Weights and cache are synthetic (random values repeated along each tensor: timing does not depend
    on them); ``fill=False`` (memory probes) leaves them zeroed: the same bytes, written faster.
    """
    device, dtype = request.device, request.dtype
    model = request.model
    variant = request.variant
    batch_size, context_len = request.batch_size, request.context_len
    prepare_backend(backend)  # a kernel build or library load is not the cell's memory
    tracker = _tracker(device)
    with tracker.track():
        decoder = build_decoder(
            model,
            variant,
            dtype=dtype,
            device=device,
            backend=backend,
            seed=request.seed,
            weights="synthetic" if fill else "zeros",
        )
        lengths = sequence_lengths(variant.lengths, context_len, batch_size) if variant.lengths else None
        start, n_new = accounting.step_span(variant, context_len)  # a prefill: the whole prompt from position 0
        cache = decoder.allocate_cache(
            batch_size, accounting.cache_len(start, n_new), page_seed=request.seed, lengths=lengths
        )
        if fill:
            generator = torch.Generator(device=device).manual_seed(request.seed)
            decoder.fill_cache_synthetic(cache, start, generator)
        tokens = torch.randint(0, model.vocab_size, (batch_size, n_new), device=device)
        decoder.decode_step(tokens, cache, start)
        _sync(device)
    return decoder, cache, tokens, tracker.result()


def _concrete_backend(request: CellRequest) -> str:
    """The cell's backend; ``auto`` must have been resolved (:func:`choose_auto_backend`) before."""
    if request.backend == "auto":
        raise ValueError("backend 'auto' reaches a measurement unresolved; choose_auto_backend resolves it first")
    return resolve_backend(request.backend, "cuda" if is_cuda(request.device) else "cpu", request.variant)


def _samples(samples: timing.Samples) -> dict[str, Any]:
    return {
        "seconds": samples.seconds,
        "timer": samples.timer,
        "inner_reps": samples.inner_reps,
        "graph_used": samples.graph_used,
        "graph_error": samples.graph_error,
        "flush": samples.flush,
        "warmup_s": samples.warmup_s,
        "warmup_steady": samples.warmup_steady,
        "ci_half_width": samples.ci_half_width,
    }


def _reread_flags(cache: KVCache, n_layers: int) -> list[bool]:
    """Per layer of core attention: does it read a producer slot an earlier layer of the pass read?

    A cold pass flushes before such a layer, so that a CLA consumer reads its producer's cache from
    memory (as the traffic counts it) and not from the cache the producer's layer just warmed.
    """
    seen: set[int] = set()
    flags = []
    for layer in range(n_layers):
        slot = cache.index_of_layer(layer)
        flags.append(slot in seen)
        seen.add(slot)
    return flags


class _CellTimer:
    """Times one cell's functions the same way on every metric: warm, cold and (CUDA) host-inclusive.

    On CUDA every function is captured once as a graph, checked against its eager output, and the
    same capture serves warm and cold samples and the energy window.
    """

    def __init__(self, request: CellRequest, dtype: torch.dtype) -> None:
        self.device = request.device
        self.cuda = is_cuda(self.device)
        self.timing = request.needs_timing()
        self.cold = request.cold
        self.graphs = request.graphs
        self.inner_reps: Mapping[str, int] = request.inner_reps or {}
        self.tolerance = output_tolerance(dtype, "cuda" if self.cuda else "cpu")
        self.checks: list[dict[str, Any]] = []
        self.captured: dict[str, timing.Captured] = {}
        self._l2_flusher: CudaL2Flusher | None = None

    def fixed_window(self) -> dict[str, Any]:
        """The scenario's least timed window, without the noise target: what cold and CUDA samples take."""
        return {key: self.timing.window()[key] for key in ("min_time_s", "min_samples", "max_samples")}

    def flusher(self, reads: Sequence[torch.Tensor]) -> tuple[Callable[[], None], str]:
        """What empties the caches before a cold sample whose step reads ``reads``, and how it does."""
        if not self.cuda:
            return cpu_flusher(reads)
        if self._l2_flusher is None:
            self._l2_flusher = CudaL2Flusher(self.device)
        return self._l2_flusher, f"L2 read sweep of {self._l2_flusher.size_bytes} bytes"

    def time(
        self,
        metric: str,
        fn: Callable[[], object],
        parts: Sequence[Callable[[], object]],
        *,
        reads: Sequence[torch.Tensor],
        flush_before: Sequence[bool] | None = None,
        host: bool = False,
    ) -> dict[str, dict[str, Any]]:
        """Sample sets of ``fn`` by kind: ``warm`` always, ``cold`` (a pass over ``parts``, which together
        do what ``fn`` does, with the caches emptied of ``reads`` before the first part and each part
        ``flush_before`` marks) where the scenario asks for it, and on CUDA ``host`` (eager calls) with
        ``host``."""
        if self.cuda:
            return self._time_cuda(metric, fn, parts, reads, flush_before, host)
        out = {"warm": _samples(timing.time_cpu(fn, **self.timing.window(), inner_reps=self.inner_reps.get(metric)))}
        if self.cold:
            # single calls after a flush, in a process the warm samples just warmed: no warm-up, a fixed window
            flush, how = self.flusher(reads)
            cold = timing.time_cpu_parts(parts, flush, warmup_s=0.0, **self.fixed_window(), flush_before=flush_before)
            out["cold"] = _samples(dataclasses.replace(cold, flush=how))
        return out

    def _time_cuda(
        self,
        metric: str,
        fn: Callable[[], object],
        parts: Sequence[Callable[[], object]],
        reads: Sequence[torch.Tensor],
        flush_before: Sequence[bool] | None,
        host: bool,
    ) -> dict[str, dict[str, Any]]:
        window = self.fixed_window()
        with timing.gc_disabled():
            warm = timing.warm_up_until(
                fn,
                self.timing.warmup_s,
                self.timing.warmup_max_s,
                self.timing.target_ci,
                torch.cuda.synchronize,
            )
        captured = timing.capture(fn, graph=self.graphs, tolerance=self.tolerance)
        self.captured[metric] = captured
        warm_s, inner = timing.time_cuda_steps(captured.step, **window, inner_reps=self.inner_reps.get(metric))
        warm_samples = timing.Samples(
            warm_s, captured.timer, inner, captured.graph_used, captured.graph_error, None, warm.seconds, warm.steady
        )
        out = {"warm": _samples(warm_samples)}
        if host:
            out["host"] = _samples(timing.Samples(timing.host_samples(fn, **window), "perf_counter", 1))
        captures = [captured]
        if self.cold:
            cold_s, timed, how = self._cold_cuda(fn, parts, captured, reads, flush_before)
            captures += [c for c in timed if c is not captured]
            graph_used = all(c.graph_used for c in timed)
            error = next((c.graph_error for c in timed if c.graph_error), None)
            timer = "cuda-graph+events" if graph_used else "cuda-events"
            out["cold"] = _samples(timing.Samples(cold_s, timer, 1, graph_used, error, how))
        check = checks.graph_output(metric, captures)
        if check is not None:
            self.checks.append(check.model_dump())
        return out

    def _cold_cuda(
        self,
        fn: Callable[[], object],
        parts: Sequence[Callable[[], object]],
        captured: timing.Captured,
        reads: Sequence[torch.Tensor],
        flush_before: Sequence[bool] | None,
    ) -> tuple[list[float], list[timing.Captured], str]:
        """Cold samples on CUDA, the captures they timed, and how caches were emptied: the captured step
        after a flush; or, for several parts (core attention's layers), the parts back to back in one
        captured sequence with the flushes inside, less the same flushes captured and timed alone."""
        window = self.fixed_window()
        flush, how = self.flusher(reads)
        if list(parts) == [fn]:
            return timing.time_cuda_parts([captured.step], flush, **window), [captured], how
        flags = timing.flush_flags(parts, flush_before)
        sequence, evictions = timing.cold_sequence(parts, flush, flags)
        whole = timing.capture(sequence, graph=self.graphs, tolerance=self.tolerance)
        alone = timing.capture(evictions, graph=self.graphs)
        cold_s = timing.time_cuda_cold_sequence(whole.step, alone.step, **window)
        how += f"; {len(parts)} layers in one captured sequence, less its {sum(flags)} flushes timed alone"
        return cold_s, [whole, alone], how


def _energy(timer: _CellTimer, batch_size: int, window_s: float) -> Telemetry | None:
    """NVML's energy counter over ``window_s`` of replays of the captured decode step (CUDA only)."""
    captured = timer.captured.get("decode")
    if not timer.cuda or captured is None or window_s <= 0:
        return None
    step = captured.step
    start = time.perf_counter()
    step()
    torch.cuda.synchronize()
    chunk = max(1, int(ENERGY_CHUNK_S / max(time.perf_counter() - start, 1e-6)))
    steps = 0
    with NvmlSampler(timer.device) as sampler:
        start = time.perf_counter()
        while time.perf_counter() - start < window_s:
            for _ in range(chunk):
                step()
            torch.cuda.synchronize()
            steps += chunk
        elapsed = time.perf_counter() - start
    result = sampler.result(tokens=steps * batch_size)
    timer.checks.append(checks.energy_counter(sampler.energy_start_mj, sampler.energy_end_mj).model_dump())
    return result.model_copy(
        update={"energy_window_s": elapsed, "energy_timer": "cuda-graph" if captured.graph_used else "eager"}
    )


def _observe_sdpa(decoder: Decoder, cache: KVCache, q: torch.Tensor, pos: int) -> dict[str, Any]:
    """Which kernel the decode step's SDPA call ran (the first layer's), and its self-check: against the plan
    where the call's operands are the cache's own K and V; for MLA's absorbed query over its latent, that
    the latent was not repeated to every head."""
    seen = sdpa.observe(decoder.core_attention_layers(q, cache, pos)[0])
    out: dict[str, Any] = {"sdpa_kernel": seen.kernel, "sdpa_kv_copied": seen.kv_copied, "check": None}
    if decoder.variant.mla is not None:
        out["check"] = checks.mla_latent_read(seen, decoder.variant).model_dump()
    else:
        n_new = q.shape[2]
        visible = cache.layer(0).visible(pos, n_new)
        n_valid = visible.start_pos + n_new
        mask = causal_mask(visible.start_pos, n_new, q.device) if n_new > 1 and visible.start_pos > 0 else None
        planned = sdpa.plan(q, visible.k[:, :, :n_valid], visible.v[:, :, :n_valid], mask, n_new > 1 and mask is None)
        check = checks.sdpa_kernel(planned, seen, decoder.device.type, decoder.dtype, decoder.variant)
        out["check"] = check.model_dump()
    return out


def measure_cell(request: CellRequest) -> dict[str, Any]:
    """Build one cell's model, measure its memory, then time its decode step and core attention.

    Returns the measured part of CellMetrics (as a dict), ``backend_used``, the worker's self-checks
    under ``checks``, and under ``samples`` the raw sample sets per metric (each with how it was
    timed; the parent pools them across rounds and summarises). With ``request.repeat`` (a later
    measurement round) only the timing is done, with the first round's ``inner_reps``.
    """
    enter_device(request.device)
    threads = set_threads(request)
    device, metrics, repeat = request.device, set(request.metrics), request.repeat
    backend = _concrete_backend(request)
    torch.manual_seed(request.seed)
    out: dict[str, Any] = {"backend_used": backend, "threads": threads}
    samples: dict[str, dict[str, Any]] = {}
    with torch.inference_mode():
        decoder, cache, tokens, memory = _build_and_step(request, backend, fill=True)
        out["kv_cache_bytes"] = cache.nbytes
        if "memory" in metrics and not repeat:
            out["peak_memory_bytes"] = memory.peak_allocated_bytes
            out["peak_reserved_bytes"] = memory.peak_reserved_bytes
            out["nvml_process_bytes"] = memory.process_bytes if is_cuda(device) else None
        batch_size, variant = request.batch_size, decoder.variant
        context_len = accounting.step_span(variant, request.context_len)[0]  # where the step starts
        q = torch.randn(decoder.core_query_shape(batch_size, tokens.shape[1]), device=device, dtype=decoder.dtype)
        timer = _CellTimer(request, decoder.dtype)
        timer.graphs = timer.graphs and backends.get(backend).graph_capturable  # else timed eagerly, with events
        if not repeat:  # the backend's output on this very query and cache, against float64
            agrees = output_check(decoder, q, cache, context_len, timer.tolerance)
            timer.checks += [] if agrees is None else [agrees.model_dump()]
        if backend == "sdpa" and not repeat and variant.chunk is None:  # a packed step makes two calls a layer
            observed = _observe_sdpa(decoder, cache, q, context_len)
            check = observed.pop("check")
            if check is not None:
                timer.checks.append(check)
            out.update(observed)
        others_before = other_gpu_processes(device) if is_cuda(device) else None
        with NvmlSampler(device) as sampler, HostLoadMeter() as load:
            # the machine's noise floor, beside the cell (harness/measure/reference.py)
            reference = None if is_cuda(device) else reference_loop()
            if "decode" in metrics:

                def step() -> object:
                    return decoder.decode_step(tokens, cache, context_len)

                reads = [*decoder.parameters(), *cache.tensors(), tokens]
                for kind, timed in timer.time("decode", step, [step], reads=reads, host=True).items():
                    samples[DECODE_FIELDS[kind]] = timed
                out["timer"] = samples["decode_latency_s"]["timer"]
            if "attention" in metrics:

                def attention() -> object:
                    return decoder.core_attention(q, cache, context_len)

                layers = decoder.core_attention_layers(q, cache, context_len)
                flags = _reread_flags(cache, variant.n_layers)
                reads = [*cache.tensors(), q]
                for kind, timed in timer.time("attention", attention, layers, reads=reads, flush_before=flags).items():
                    samples[ATTENTION_FIELDS[kind]] = timed
        if is_cuda(device):
            telemetry = sampler.result(tokens=0)
            timer.checks.append(checks.throttling(telemetry.throttle_reasons).model_dump())
            others_after = other_gpu_processes(device)
            timer.checks.append(checks.gpu_not_shared(others_before, others_after).model_dump())
            if not repeat:
                energy = _energy(timer, batch_size, request.energy_window_s)
                if energy is not None:
                    telemetry = telemetry.model_copy(
                        update={
                            k: getattr(energy, k) for k in ("energy_per_token_j", "energy_window_s", "energy_timer")
                        }
                    )
                out["telemetry"] = telemetry.model_dump()
    out["samples"] = samples
    out["checks"] = timer.checks
    out["host_load"] = None if load.result is None else load.result | (reference or {})
    return out


def choose_auto_backend(request: CellRequest) -> dict[str, Any]:
    """Resolve backend ``auto`` for one cell: build it, time every backend, keep the fastest that agrees.

    Run in its own worker before the cell is measured, so that the cell's memory, timing and
    max-batch probes all use the backend it reports.
    """
    device = request.device
    enter_device(device)
    set_threads(request)
    start = resolve_backend("auto", "cuda" if is_cuda(device) else "cpu", request.variant)
    torch.manual_seed(request.seed)
    with torch.inference_mode():
        decoder, cache, _, _ = _build_and_step(request, start, fill=True)
        choice = choose_backend(decoder, cache, accounting.step_span(decoder.variant, request.context_len)[0])
    return {"backend": choice.backend, "latencies_s": choice.latencies_s, "rejected": choice.rejected}


def probe_batch(request: CellRequest) -> dict[str, Any]:
    """Does this batch size fit the budget? Build the model and cache, run one decode step.

    On CUDA the allocator is capped at the budget (so going over raises out-of-memory); the cap bounds
    what the allocator reserves, so the reserved peak (allocations rounded up to the allocator's
    blocks, cuBLAS's workspace among them) is what is compared with it and reported as ``peak_bytes``,
    with the allocated peak beside it. On CPU the peak resident set above this worker's baseline is.
    The cache is left zeroed: zeroing already touches every page, and values do not change memory
    use; the weights are zeroed rather than drawn at random, for the same reason.
    """
    device, budget = request.device, request.budget_bytes
    enter_device(device)
    if budget is None:
        raise ValueError("probe_batch needs the request's budget_bytes")
    set_threads(request)
    if is_cuda(device):
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), device)
    with torch.inference_mode():
        _, _, _, memory = _build_and_step(request, _concrete_backend(request), fill=False)
    allocated = memory.peak_allocated_bytes
    peak = memory.peak_reserved_bytes if is_cuda(device) and memory.peak_reserved_bytes is not None else allocated
    if peak is None:
        raise RuntimeError("this platform cannot tell the memory peak that a max-batch probe compares with the budget")
    return {
        "batch_size": request.batch_size,
        "peak_bytes": peak,
        "allocated_bytes": allocated,
        "fits": peak <= budget,
    }


def describe_machine(request: MachineRequest) -> dict[str, Any]:
    """The target id and fingerprint of the device, as a worker sees it (the parent never touches CUDA),
    with the torch threads the measuring workers take (``threads``, where the scenario sets them)."""
    device = request.device
    enter_device(device)
    set_threads(request)
    return {"target": detect_target(device), "environment": fingerprint(device)}


def probe_peak(request: PeakRequest) -> dict[str, Any]:
    """The target's peak bandwidth (cached per target); see harness/measure/bandwidth.py."""
    enter_device(request.device)
    peak = load_or_measure_peak(request.target, request.device, env=dict(request.environment))
    return peak.model_dump()
