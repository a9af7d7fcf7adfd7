"""Cache eviction between timing samples, for cold-cache numbers.

Each flusher owns a buffer at least twice the size of the cache it evicts and reads every byte of
it in ``flush()``, so that the next sample reads its weights and KV cache from DRAM / HBM rather than
from a cache the previous sample warmed. The timing loops call ``flush()`` outside the timed region.

The sweep only reads. A sweep that writes (zeroing or incrementing the buffer) leaves the caches
full of dirty lines, and writing them back to memory happens while the next, timed step evicts
them: the flush's own traffic would be counted in the step.

On CPUs :func:`cpu_flusher` prefers flushing exactly the step's own tensors line by line
(:mod:`harness.measure.evict`), which costs in proportion to what the step reads rather than to the
last-level cache, and falls back to the sweep where that cannot be built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from harness.hardware import last_level_cache_bytes
from harness.measure import evict

DEFAULT_CPU_FLUSH_BYTES = 64 * 2**20  # when /sys does not tell the last-level cache size
DEFAULT_GPU_L2_BYTES = 128 * 2**20  # when torch does not tell the L2 size (above any current GPU's L2)


def cpu_flush_bytes(llc_bytes: int | None) -> int:
    """Buffer size that evicts a last-level cache of ``llc_bytes``: 2x it, and never below 64 MiB."""
    return max(DEFAULT_CPU_FLUSH_BYTES, 2 * llc_bytes) if llc_bytes else DEFAULT_CPU_FLUSH_BYTES


def _words(size_bytes: int, device: torch.device) -> torch.Tensor:
    """A buffer of at least ``size_bytes`` as 8-byte words, every page written once now (not in a flush)."""
    return torch.ones((size_bytes + 7) // 8, dtype=torch.int64, device=device)


class CpuCacheFlusher:
    """Reads a buffer larger than the CPU's last-level cache (a sum over it: one pass, nothing written back)."""

    def __init__(self, size_bytes: int | None = None) -> None:
        self.size_bytes = size_bytes if size_bytes is not None else cpu_flush_bytes(last_level_cache_bytes())
        self._buffer = _words(self.size_bytes, torch.device("cpu"))
        self._sink = torch.zeros((), dtype=torch.int64)

    def flush(self) -> None:
        torch.sum(self._buffer, dim=0, out=self._sink)

    def __call__(self) -> None:
        self.flush()


class CudaL2Flusher:
    """Reads a device buffer of at least twice the GPU's L2 cache on the current stream (a sum over it)."""

    def __init__(self, device: str | torch.device = "cuda", size_bytes: int | None = None) -> None:
        self.device = torch.device(device)
        if size_bytes is None:
            props = torch.cuda.get_device_properties(self.device)
            l2_bytes = int(getattr(props, "L2_cache_size", 0)) or DEFAULT_GPU_L2_BYTES
            size_bytes = 2 * l2_bytes
        self.size_bytes = size_bytes
        self._buffer = _words(self.size_bytes, self.device)
        self._sink = torch.zeros((), dtype=torch.int64, device=self.device)

    def flush(self) -> None:
        # Enqueued on the current stream, so it completes before the next kernel on that stream starts.
        torch.sum(self._buffer, dim=0, out=self._sink)

    def __call__(self) -> None:
        self.flush()


def cpu_flusher(tensors: Iterable[torch.Tensor]) -> tuple[Callable[[], None], str]:
    """A flush that leaves ``tensors`` (what the timed step reads) uncached, and how it does it.

    Line-by-line eviction of exactly those tensors where the eviction library builds here, else a
    read sweep of twice the last-level cache.
    """
    library = evict.load()
    if library is not None:
        evictor = evict.CpuLineEvictor(tensors, library)
        return evictor, f"cache-line flush of the step's {evictor.nbytes} bytes"
    sweep = CpuCacheFlusher()
    return sweep, f"read sweep of {sweep.size_bytes} bytes"
