"""The target's peak memory bandwidth, measured by a read probe and a copy probe, cached per target.

Achieved bandwidth is reported as a fraction of this peak (docs/design.md, "What is measured").
Both probes stream buffers far larger than the last-level cache (CPU) or L2 (GPU), so they read
DRAM / HBM. Bytes are counted as STREAM does: a read of N bytes moves N, a copy of N bytes moves
2N (read + write; write-allocate traffic is not counted). GB/s means 1e9 bytes per second. The
peak is the best of a few repeats: it is a ceiling, so the fastest repeat is the one least
disturbed by other work.

Each probe first runs for at least ``WARMUP_S`` (clocks ramp up, pages and TLBs warm), so that
a cold first repeat cannot decide the peak.

The result is cached in ``<cache dir>/<target>/peak.json`` (cache dir ``$ATTNBENCH_CACHE_DIR``,
else ``$XDG_CACHE_HOME/attnbench``, else ``~/.cache/attnbench``) and reused while the
fingerprint fields in :data:`PEAK_CACHE_KEYS` are unchanged. A GPU peak below
``VENDOR_FLOOR`` of the vendor's figure is reported with a warning and not cached: a healthy
HBM copy reaches 85-95% of it, so such a probe met a busy, throttled or misconfigured device, and
caching it would inflate every later fraction. CPUs have no vendor figure to hold the probe to;
there the kernel's accounting is: a CPU probe during which other processes and the hypervisor
(steal) took more than ``CONTENDED_CORES`` of a core on average (harness/measure/hostload.py, the
same rule that makes a cell unstable) is reported with a warning and not cached either.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from harness.hardware import fingerprint, is_cuda, last_level_cache_bytes
from harness.measure.hostload import HostLoadMeter
from harness.results.schema import HostLoad
from harness.results.stability import CONTENDED_CORES
from harness.results.store import write_text_atomic

CPU_MIN_BUFFER_BYTES = 256 * 2**20
CPU_LLC_MULTIPLE = 8
CPU_MEMORY_FRACTION = 0.25  # both CPU buffers together take at most this share of available memory
CUDA_BUFFER_BYTES = 2**30
CPU_REPEATS = 10
READ_PROBE_ROW = 4096  # row length of the matrix view the matrix-vector read probe streams
CUDA_REPEATS = 10
WARMUP_S = 0.2  # each probe runs at least this long before its timed repeats
VENDOR_FLOOR = 0.8  # a measured GPU peak below this share of the vendor's figure is not trusted

# Bumped whenever the probes change, so that peaks cached by an older probe are measured anew.
PROBE_VERSION = 3
# Fingerprint fields whose change invalidates a cached peak.
PEAK_CACHE_KEYS = (
    "target",
    "device_name",
    "cpu_model",
    "logical_cores",
    "memory_total_bytes",
    "torch_version",
    "gpu_memory_total_bytes",
    "driver_version",
    "max_memory_clock_mhz",
    "memory_bus_width_bits",
)


class PeakBandwidth(BaseModel):
    """Measured peak bandwidth of one target, GB/s (1e9 bytes/s)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    read_gbps: float  # read probe: bytes read / best time
    copy_gbps: float  # copy probe: (bytes read + bytes written) / best time
    vendor_gbps: float | None  # vendor's theoretical figure (GPUs, from NVML), see harness.hardware
    buffer_bytes: int  # size of one probe buffer
    method: str  # how it was measured, in words
    warning: str | None = None  # why this peak is not trusted (and was not cached), when it is not
    host_other_cores: float | None = None  # CPU probe: cores other work took meanwhile (None: unknown)

    @property
    def measured_gbps(self) -> float:
        """The higher of the two probes: the peak that achieved bandwidth is a fraction of."""
        return max(self.read_gbps, self.copy_gbps)


def default_cache_dir() -> Path:
    if os.environ.get("ATTNBENCH_CACHE_DIR"):
        return Path(os.environ["ATTNBENCH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "attnbench"


# ---------------------------------------------------------------------------------------------
# CPU


def cpu_probe_bytes(llc_bytes: int | None, available_bytes: int | None) -> int:
    """One CPU probe buffer: max(256 MiB, 8x the LLC), bounded by a share of available memory."""
    size = max(CPU_MIN_BUFFER_BYTES, CPU_LLC_MULTIPLE * (llc_bytes or 0))
    if available_bytes:
        size = min(size, int(available_bytes * CPU_MEMORY_FRACTION / 2))
    return max(size // 4096 * 4096, 4096)


@contextlib.contextmanager
def _all_cores() -> Iterator[None]:
    """Let torch use every core this process may run on, for the duration of the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(_available_cores())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _available_cores() -> int:
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _warm_up(fn: Callable[[], object], sync: Callable[[], None] | None = None) -> None:
    """Call ``fn`` (then ``sync``) until ``WARMUP_S`` have passed, at least twice."""
    start = time.perf_counter()
    calls = 0
    while calls < 2 or time.perf_counter() - start < WARMUP_S:
        fn()
        if sync is not None:
            sync()
        calls += 1


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    _warm_up(fn)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _read_probes(src: torch.Tensor) -> dict[str, Callable[[], object]]:
    """Two ways to stream ``src`` once: a sum reduction, and a matrix-vector product over it viewed
    as a [rows, 4096] matrix (the access pattern of decode attention and of weight reads)."""
    matrix = src.view(-1, READ_PROBE_ROW)  # [n / 4096, 4096]
    vector = torch.ones(READ_PROBE_ROW, dtype=src.dtype, device=src.device)
    return {"sum": src.sum, "mv": lambda: torch.mv(matrix, vector)}


def measure_peak_cpu(buffer_bytes: int | None = None, repeats: int = CPU_REPEATS) -> PeakBandwidth:
    """Read probes (float32 sum and matrix-vector product, the faster counts) and a copy probe
    (``copy_``) over two buffers far beyond the LLC."""
    if buffer_bytes is None:
        import psutil

        buffer_bytes = cpu_probe_bytes(last_level_cache_bytes(), int(psutil.virtual_memory().available))
    n = buffer_bytes // 4 // READ_PROBE_ROW * READ_PROBE_ROW  # float32 elements, whole rows
    with _all_cores():
        src = torch.ones(n, dtype=torch.float32)  # ones, not empty: every page is touched before timing
        dst = torch.zeros(n, dtype=torch.float32)
        dst.copy_(src)  # first touch of the copy path out of the timed region
        with HostLoadMeter() as load:
            read_s = min(_best_seconds(probe, repeats) for probe in _read_probes(src).values())
            copy_s = _best_seconds(lambda: dst.copy_(src), repeats)
        threads = torch.get_num_threads()
    nbytes = n * 4
    return PeakBandwidth(
        read_gbps=nbytes / read_s / 1e9,
        copy_gbps=2 * nbytes / copy_s / 1e9,
        vendor_gbps=None,
        buffer_bytes=nbytes,
        method=(
            f"cpu: torch float32 sum and mv, the faster (read), and copy_ (read+write counted) "
            f"over {nbytes}-byte buffers, perf_counter, best of {repeats}, {threads} threads"
        ),
        host_other_cores=probe_other_cores(load),
    )


# ---------------------------------------------------------------------------------------------
# CUDA


def measure_peak_cuda(
    device: str = "cuda",
    vendor_gbps: float | None = None,
    buffer_bytes: int = CUDA_BUFFER_BYTES,
    repeats: int = CUDA_REPEATS,
) -> PeakBandwidth:
    """Device-to-device copy and a sum reduction over a >= 1 GiB buffer, timed with CUDA events."""
    dev = torch.device(device)
    free_bytes, _ = torch.cuda.mem_get_info(dev)
    n = min(buffer_bytes, int(free_bytes * 0.4)) // 4  # float32 elements; two buffers, with headroom
    n = n // READ_PROBE_ROW * READ_PROBE_ROW  # whole rows for the matrix-vector probe
    with torch.cuda.device(dev):
        read_s, copy_s = _cuda_probe_seconds(dev, n, repeats)
    torch.cuda.empty_cache()  # the probe's buffers are gone; hand their memory back
    nbytes = n * 4
    return PeakBandwidth(
        read_gbps=nbytes / read_s / 1e9,
        copy_gbps=2 * nbytes / copy_s / 1e9,
        vendor_gbps=vendor_gbps,
        buffer_bytes=nbytes,
        method=(
            f"cuda: float32 sum and mv, the faster (read), and device-to-device copy_ (read+write counted) "
            f"over {nbytes}-byte buffers, CUDA events, best of {repeats}"
        ),
    )


def _cuda_probe_seconds(dev: torch.device, n: int, repeats: int) -> tuple[float, float]:
    """Best read (sum or mv) and copy seconds over two float32 buffers of ``n`` elements (whole rows) on ``dev``."""
    src = torch.ones(n, dtype=torch.float32, device=dev)
    dst = torch.empty_like(src)
    read_s = min(_best_event_seconds(probe, repeats) for probe in _read_probes(src).values())
    copy_s = _best_event_seconds(lambda: dst.copy_(src), repeats)
    return read_s, copy_s


def _best_event_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Best of ``repeats`` event-timed calls after ``WARMUP_S`` of warm-up; one synchronisation at read-out."""
    _warm_up(fn, torch.cuda.synchronize)
    pairs = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        pairs.append((start, end))
    pairs[-1][1].synchronize()
    return min(start.elapsed_time(end) for start, end in pairs) / 1e3  # milliseconds -> seconds


# ---------------------------------------------------------------------------------------------
# Cache


def measure_peak(device: str, env: dict[str, Any]) -> PeakBandwidth:
    """Run the probe for ``device``; ``env`` is its fingerprint (for the vendor figure)."""
    if is_cuda(device):
        return measure_peak_cuda(device, vendor_gbps=env.get("vendor_peak_bandwidth_gbps"))
    return measure_peak_cpu()


def peak_cache_path(target: str, cache_dir: Path) -> Path:
    return cache_dir / target / "peak.json"


def load_or_measure_peak(
    target: str,
    device: str,
    cache_dir: Path | None = None,
    *,
    env: dict[str, Any] | None = None,
    force: bool = False,
    measure: Callable[[str, dict[str, Any]], PeakBandwidth] = measure_peak,
) -> PeakBandwidth:
    """The cached peak of ``target`` when its fingerprint still matches; otherwise measure and cache it.

    ``env`` is the fingerprint of ``device`` (computed when not given); ``force`` measures anew.
    """
    env = fingerprint(device) if env is None else env
    path = peak_cache_path(target, default_cache_dir() if cache_dir is None else cache_dir)
    key = {name: env.get(name) for name in PEAK_CACHE_KEYS} | {"probe_version": PROBE_VERSION}
    if not force:
        cached = _read_cached(path, key)
        if cached is not None:
            return cached
    peak = measure(device, env)
    warning = vendor_warning(peak) or contention_warning(peak)
    if warning is not None:
        return peak.model_copy(update={"warning": warning})
    record = {
        "fingerprint": key,
        "peak": peak.model_dump(),
        "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_text_atomic(path, json.dumps(record, indent=1) + "\n")
    return peak


def vendor_warning(peak: PeakBandwidth) -> str | None:
    """Why a measured peak is too far below the vendor's figure to be trusted; None when it is not."""
    if peak.vendor_gbps is None or peak.measured_gbps >= VENDOR_FLOOR * peak.vendor_gbps:
        return None
    return (
        f"measured peak {peak.measured_gbps:.0f} GB/s is below {VENDOR_FLOOR:.0%} of the vendor's "
        f"{peak.vendor_gbps:.0f} GB/s (a busy, throttled or misconfigured device?); not cached, and every "
        "bandwidth fraction of this run divides by it"
    )


def probe_other_cores(meter: HostLoadMeter) -> float | None:
    """Cores other work took while a peak probe ran under ``meter`` (None where it could not be read)."""
    return None if meter.result is None else HostLoad.model_validate(meter.result).other_cores


def host_was_busy(other_cores: float | None) -> bool:
    """Whether a peak probe's host was too busy for its peak to be cached (the stability rule's threshold)."""
    return other_cores is not None and other_cores > CONTENDED_CORES


def contention_warning(peak: PeakBandwidth) -> str | None:
    """Why a CPU peak measured while the host was busy is not trusted; None when it was quiet (or unknown)."""
    if not host_was_busy(peak.host_other_cores):
        return None
    assert peak.host_other_cores is not None
    return (
        f"other work took {peak.host_other_cores:.2f} cores while the probe ran (more than {CONTENDED_CORES:g}); "
        f"measured {peak.measured_gbps:.1f} GB/s, not cached, and every bandwidth fraction of this run divides by "
        "it: `attnbench hw --probe --save` on a quiet host"
    )


def _read_cached(path: Path, key: dict[str, Any]) -> PeakBandwidth | None:
    """The peak stored at ``path`` if it was measured under the same fingerprint; None otherwise."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or record.get("fingerprint") != key:
            return None
        return PeakBandwidth.model_validate(record["peak"])
    except (OSError, ValueError, KeyError, TypeError, ValidationError):
        return None
