"""Peak memory of a block of code (docs/design.md, "Peak memory").

Each tracker has a ``track()`` context manager and a ``result()`` read after the block:

- CUDA: the caching allocator's peak allocated and reserved bytes since a reset at entry, and the
  device memory NVML attributes to this process at exit.
- CPU: the peak resident set of this process during the block. On Linux the kernel's high-water
  mark (``VmHWM`` in /proc/self/status) is reset at entry by writing 5 to /proc/self/clear_refs
  and read at exit, which is exact. Beside it a background thread samples RSS about every
  millisecond and ``ru_maxrss`` (the lifetime maximum) is read, counting only when it rose during
  the block; where the reset is not allowed these are what remains, exact only in a fresh worker
  process whose biggest moment is the measured block, which is how the runner uses it.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psutil

from harness.hardware import nvml_call, nvml_session

RSS_SAMPLE_INTERVAL_S = 1e-3


@dataclass(frozen=True)
class MemoryPeak:
    """Peak memory of one tracked block, in bytes; None where the platform cannot tell."""

    peak_allocated_bytes: int | None  # CUDA: allocator peak allocated; CPU: peak RSS above RSS at entry
    peak_reserved_bytes: int | None  # CUDA: allocator peak reserved; CPU: None
    process_bytes: int | None  # CUDA: NVML's usage by this process at exit; CPU: absolute peak RSS


def baseline_rss_bytes() -> int:
    """This process's resident set now."""
    return int(psutil.Process().memory_info().rss)


def max_rss_bytes() -> int:
    """``ru_maxrss`` of this process in bytes: its lifetime peak resident set (KiB on Linux, bytes on macOS)."""
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(max_rss) if sys.platform == "darwin" else int(max_rss) * 1024


PROC_STATUS = "/proc/self/status"
PROC_CLEAR_REFS = "/proc/self/clear_refs"


def reset_rss_high_water_mark() -> bool:
    """Reset the kernel's peak-RSS counter of this process to its current RSS (Linux >= 4.0)."""
    try:
        with open(PROC_CLEAR_REFS, "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def rss_high_water_mark_bytes() -> int | None:
    """``VmHWM``: the peak resident set since start or since the last reset; None off Linux."""
    try:
        with open(PROC_STATUS) as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        return None
    return None


class CpuMemoryTracker:
    """Peak resident set of this process while ``track()`` is open."""

    def __init__(self, interval_s: float = RSS_SAMPLE_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.entry_rss_bytes: int | None = None  # this process's RSS when the last block began
        self._peak: MemoryPeak | None = None

    @contextmanager
    def track(self) -> Iterator[None]:
        process = psutil.Process()
        entry_rss = int(process.memory_info().rss)
        self.entry_rss_bytes = entry_rss
        entry_max_rss = max_rss_bytes()
        hwm_reset = reset_rss_high_water_mark()
        peak_box = [entry_rss]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak_box[0] = max(peak_box[0], int(process.memory_info().rss))
                stop.wait(self.interval_s)

        # The kernel's high-water mark is exact; the sampler (which competes with the measured code
        # for a core every millisecond) is only the fallback where it cannot be reset.
        sampler = None if hwm_reset else threading.Thread(target=sample, name="attnbench-rss-sampler", daemon=True)
        if sampler is not None:
            sampler.start()
        try:
            yield
        finally:
            stop.set()
            if sampler is not None:
                sampler.join()
            peak = max(peak_box[0], int(process.memory_info().rss))
            exit_max_rss = max_rss_bytes()
            if exit_max_rss > entry_max_rss:  # the lifetime peak rose, so it happened inside the block
                peak = max(peak, exit_max_rss)
            high_water = rss_high_water_mark_bytes() if hwm_reset else None
            if high_water is not None:
                peak = max(peak, high_water)
            self._peak = MemoryPeak(
                peak_allocated_bytes=max(0, peak - entry_rss),
                peak_reserved_bytes=None,
                process_bytes=peak,
            )

    def result(self) -> MemoryPeak:
        if self._peak is None:
            raise RuntimeError("CpuMemoryTracker.result() called before a track() block ended")
        return self._peak


class CudaMemoryTracker:
    """Allocator peak on one CUDA device while ``track()`` is open, and NVML's view of this process."""

    def __init__(self, device: str = "cuda") -> None:
        self.device = device
        self._peak: MemoryPeak | None = None

    @contextmanager
    def track(self) -> Iterator[None]:
        import torch

        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        try:
            yield
        finally:
            torch.cuda.synchronize(self.device)
            self._peak = MemoryPeak(
                peak_allocated_bytes=int(torch.cuda.max_memory_allocated(self.device)),
                peak_reserved_bytes=int(torch.cuda.max_memory_reserved(self.device)),
                process_bytes=nvml_process_bytes(self.device),
            )

    def result(self) -> MemoryPeak:
        if self._peak is None:
            raise RuntimeError("CudaMemoryTracker.result() called before a track() block ended")
        return self._peak


def nvml_process_bytes(device: str, pid: int | None = None) -> int | None:
    """Device memory NVML attributes to process ``pid`` (default: this one), or None if it cannot tell.

    None without NVML, when the process is not listed (e.g. in a container with its own PID
    namespace NVML sees host PIDs), or when the driver does not report per-process usage.
    """
    pid = os.getpid() if pid is None else pid
    with nvml_session(device) as session:
        if session is None:
            return None
        nv, handle = session
        processes: Any = nvml_call(nv, "nvmlDeviceGetComputeRunningProcesses", handle) or []
        used = [getattr(p, "usedGpuMemory", None) for p in processes if getattr(p, "pid", None) == pid]
        known = [int(u) for u in used if isinstance(u, int)]
        return sum(known) if known else None
