"""What one rank of a tensor-parallel decode measurement runs, in a process of its own.

Every rank of a group (harness/run/ranks.py starts them together) joins a ``torch.distributed``
process group through a file store the parent made: gloo on CPU, NCCL on CUDA with rank r on
``cuda:<first + r>``. It builds its shard of the cell's model (harness/model/tp.py), allocates and fills
its own cache, runs one decode step, then times decode steps in lockstep with the other ranks: the
same number of steps on every rank, a barrier before each, so a sample's time is comparable across
ranks and the parent takes the slowest rank's. Returns the rank's cache bytes, its peak memory
(weights, cache and one step: see :func:`measure_rank`) and its samples.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from harness import accounting
from harness.measure.cell_worker import enter_device
from harness.measure.memory import CpuMemoryTracker, CudaMemoryTracker, baseline_rss_bytes
from harness.measure.protocol import NotEnoughDevices, RankRequest, Timing
from harness.measure.timing import gc_disabled
from harness.model.attention import prepare_backend
from harness.model.tp import shard_decoder

WARMUP_STEPS = 3  # untimed steps before the first sample, on every rank alike


def rank_device(device: str, rank: int) -> str:
    """``cuda:<N + rank>`` for a CUDA device ``cuda`` or ``cuda:N``; ``cpu`` stays ``cpu``."""
    if not device.startswith("cuda"):
        return device
    first = int(device.partition(":")[2] or 0)
    return f"cuda:{first + rank}"


@contextmanager
def process_group(request: RankRequest) -> Iterator[dist.ProcessGroup | None]:
    """This rank's membership of the group (None for a group of one), left when the block ends."""
    tp, rank = request.tp, request.rank
    if tp == 1:
        yield None
        return
    backend = "nccl" if request.device.startswith("cuda") else "gloo"
    store = dist.FileStore(request.store_path, tp)
    timeout = timedelta(seconds=request.timeout_s)
    dist.init_process_group(backend, store=store, rank=rank, world_size=tp, timeout=timeout)
    # Left only after the block succeeds: a rank that fails keeps its connections until it has reported
    # and exits, so its peers fail in their collectives after it, and the group's first failure is its.
    yield dist.group.WORLD
    dist.destroy_process_group()


def _agree_max(value: float, group: dist.ProcessGroup | None, device: str) -> float:
    """The largest ``value`` over the group's ranks (every rank gets it)."""
    if group is None:
        return value
    box = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX, group=group)
    return float(box.item())


def lockstep_samples(
    step: Callable[[], object],
    group: dist.ProcessGroup | None,
    device: str,
    timing: Timing,
    sync: Callable[[], None],
) -> list[float]:
    """Seconds per step, one step per sample, on every rank the same number of samples: enough for the slowest
    rank's first step to fill ``min_time_s``, within ``min_samples`` .. ``max_samples``; a barrier before each."""
    for _ in range(WARMUP_STEPS):
        step()
    sync()
    start = time.perf_counter()
    step()
    sync()
    probe_s = _agree_max(time.perf_counter() - start, group, device)
    count = min(max(math.ceil(timing.min_time_s / max(probe_s, 1e-9)), timing.min_samples), timing.max_samples)
    seconds = []
    with gc_disabled():
        for _ in range(count):
            if group is not None:
                dist.barrier(group=group)
            start = time.perf_counter()
            step()
            sync()
            seconds.append(time.perf_counter() - start)
    return seconds


def measure_rank(request: RankRequest) -> dict[str, Any]:
    """Rank ``request.rank`` of ``request.tp``: build, fill, step, time; see the module doc.

    ``peak_memory_bytes`` covers the shard's weights, its cache and one decode step: on CUDA the
    allocator's peak (its first use is this rank's build), on CPU the peak resident set above this
    process's baseline once it joined the group, before building. The build draws the unsharded
    weights one tensor at a time; the peak is tracked from the end of the build, so such a passing
    tensor is not counted.
    """
    tp, rank = request.tp, request.rank
    device = rank_device(request.device, rank)
    cuda = device.startswith("cuda")
    if cuda and int(device.partition(":")[2]) >= torch.cuda.device_count():
        raise NotEnoughDevices(f"tp {tp} needs {tp} CUDA devices from {request.device}; {device} is not visible")
    enter_device(device)
    if not cuda and request.threads_per_rank:
        torch.set_num_threads(request.threads_per_rank)
    model, variant = request.model, request.variant
    batch_size, context_len, backend = request.batch_size, request.context_len, request.backend
    prepare_backend(backend)
    with process_group(dataclasses.replace(request, device=device)) as group, torch.inference_mode():
        baseline = baseline_rss_bytes()  # joined the group: its buffers are not the model's
        decoder = shard_decoder(
            model, variant, tp=tp, rank=rank, group=group, dtype=request.dtype, device=device,
            backend=backend, seed=request.seed,
        )  # fmt: skip
        tracker = CudaMemoryTracker(device) if cuda else CpuMemoryTracker()
        with tracker.track():
            cache = decoder.allocate_cache(batch_size, accounting.cache_len(context_len))
            filler = torch.Generator(device).manual_seed(request.seed + rank)
            decoder.fill_cache_synthetic(cache, context_len, filler)
            generator = torch.Generator(device).manual_seed(request.seed)  # the same tokens on every rank
            tokens = torch.randint(0, model.vocab_size, (batch_size, 1), device=device, generator=generator)
            decoder.decode_step(tokens, cache, context_len)
            if cuda:
                torch.cuda.synchronize(device)
        peak = tracker.result()

        def step() -> object:
            return decoder.decode_step(tokens, cache, context_len)

        def sync() -> None:
            if cuda:
                torch.cuda.synchronize(device)

        seconds = lockstep_samples(step, group, device, request.needs_timing(), sync)
    if cuda:
        peak_bytes = peak.peak_allocated_bytes
    else:
        peak_bytes = None if peak.process_bytes is None else peak.process_bytes - baseline
    return {
        "rank": rank,
        "comm_backend": None if group is None else ("nccl" if cuda else "gloo"),
        "kv_cache_bytes": cache.nbytes,
        "peak_memory_bytes": peak_bytes,
        "seconds": seconds,
    }
