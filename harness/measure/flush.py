"""Cache eviction between timing samples, for cold-cache numbers.

Each flusher owns a buffer at least twice the size of the cache it evicts and touches every byte
of it in ``flush()``, so that the next sample reads its weights and KV cache from DRAM / HBM
rather than from a cache the previous sample warmed. The timing loops call ``flush()`` outside
the timed region.
"""

from __future__ import annotations

import torch

from harness.hardware import last_level_cache_bytes

DEFAULT_CPU_FLUSH_BYTES = 64 * 2**20  # when /sys does not tell the last-level cache size
DEFAULT_GPU_L2_BYTES = 128 * 2**20  # when torch does not tell the L2 size (above any current GPU's L2)


def cpu_flush_bytes(llc_bytes: int | None) -> int:
    """Buffer size that evicts a last-level cache of ``llc_bytes``: 2x it, and never below 64 MiB."""
    return max(DEFAULT_CPU_FLUSH_BYTES, 2 * llc_bytes) if llc_bytes else DEFAULT_CPU_FLUSH_BYTES


class CpuCacheFlusher:
    """Reads and writes a buffer larger than the CPU's last-level cache."""

    def __init__(self, size_bytes: int | None = None) -> None:
        self.size_bytes = size_bytes if size_bytes is not None else cpu_flush_bytes(last_level_cache_bytes())
        self._buffer = torch.ones(self.size_bytes, dtype=torch.uint8)  # ones: every page touched now

    def flush(self) -> None:
        # A read-modify-write of every cache line; uint8 addition wraps, so repeated calls are safe.
        self._buffer.add_(1)

    def __call__(self) -> None:
        self.flush()


class CudaL2Flusher:
    """Zeroes a device buffer of at least twice the GPU's L2 cache on the current stream."""

    def __init__(self, device: str | torch.device = "cuda", size_bytes: int | None = None) -> None:
        self.device = torch.device(device)
        if size_bytes is None:
            props = torch.cuda.get_device_properties(self.device)
            l2_bytes = int(getattr(props, "L2_cache_size", 0)) or DEFAULT_GPU_L2_BYTES
            size_bytes = 2 * l2_bytes
        self.size_bytes = size_bytes
        self._buffer = torch.empty(self.size_bytes, dtype=torch.uint8, device=self.device)

    def flush(self) -> None:
        # Enqueued on the current stream, so it completes before the next kernel on that stream starts.
        self._buffer.zero_()

    def __call__(self) -> None:
        self.flush()
