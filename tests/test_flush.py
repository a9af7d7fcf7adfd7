"""Cache flushes for cold samples: big enough, and read-only (no dirty lines left to write back while timed)."""

from __future__ import annotations

import time

import pytest
import torch

from harness.measure import evict
from harness.measure.flush import DEFAULT_CPU_FLUSH_BYTES, CpuCacheFlusher, cpu_flush_bytes, cpu_flusher


def test_cpu_flush_buffer_is_twice_the_last_level_cache_and_never_below_the_default() -> None:
    assert cpu_flush_bytes(256 * 2**20) == 512 * 2**20
    assert cpu_flush_bytes(8 * 2**20) == DEFAULT_CPU_FLUSH_BYTES
    assert cpu_flush_bytes(None) == DEFAULT_CPU_FLUSH_BYTES


def test_cpu_flush_reads_every_word_of_its_buffer_and_writes_none_of_them() -> None:
    flusher = CpuCacheFlusher(size_bytes=1 << 20)
    buffer = flusher._buffer
    assert buffer.numel() * buffer.element_size() >= 1 << 20
    before = buffer.clone()
    flusher.flush()
    flusher.flush()
    assert torch.equal(buffer, before)  # nothing written: no dirty lines for the timed step to write back
    assert int(flusher._sink) == buffer.numel()  # the sum of ones saw every word


@pytest.mark.parametrize("size_bytes", [1, 7, 8, 4097])
def test_cpu_flush_buffer_covers_odd_sizes(size_bytes: int) -> None:
    flusher = CpuCacheFlusher(size_bytes=size_bytes)
    assert flusher._buffer.numel() * 8 >= size_bytes


def test_evicting_a_tensor_leaves_its_values_and_counts_each_storage_once() -> None:
    library = evict.load()
    if library is None:
        pytest.skip("no C compiler here to build the eviction library")
    x = torch.arange(1 << 16, dtype=torch.float32)
    evictor = evict.CpuLineEvictor([x, x[100:], x.view(256, 256)], library)
    assert evictor.nbytes == x.numel() * 4
    evictor()
    assert torch.equal(x, torch.arange(1 << 16, dtype=torch.float32))


def test_an_evicted_array_is_read_slower_than_a_cached_one() -> None:
    library = evict.load()
    if library is None:
        pytest.skip("no C compiler here to build the eviction library")
    x = torch.ones(1 << 20)  # 4 MiB: fits any server CPU's last-level cache
    evictor = evict.CpuLineEvictor([x], library)
    warm, cold = [], []
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(30):  # the fastest of many reads: robust to a busy host
            x.sum()
            start = time.perf_counter()
            x.sum()
            warm.append(time.perf_counter() - start)
            evictor()
            start = time.perf_counter()
            x.sum()
            cold.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    assert min(cold) > 1.2 * min(warm)


def test_eviction_refuses_memory_that_is_not_on_the_cpu() -> None:
    with pytest.raises(ValueError, match="CPU memory"):
        evict._spans([torch.empty(4, device="meta")])


def test_without_a_c_compiler_cold_samples_fall_back_to_the_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    evict.load.cache_clear()
    try:
        flush, how = cpu_flusher([torch.ones(4)])
    finally:
        evict.load.cache_clear()
    assert isinstance(flush, CpuCacheFlusher) and how.startswith("read sweep of")
