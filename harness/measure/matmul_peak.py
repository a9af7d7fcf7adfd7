"""The target's peak matrix-multiply rate, measured per dtype by a square matmul probe, cached per target.

A step's FLOP/s is reported as a fraction of this peak, beside its bandwidth as a fraction of the peak
bandwidth (harness/measure/bandwidth.py): together they say whether a step is memory- or compute-bound
(Williams et al. 2009, "Roofline: An Insightful Visual Performance Model for Multicore Architectures").
The probe times ``torch.mm`` of two square ``n × n`` matrices, 2 n³ FLOPs each (one multiply and one add
per inner-product term), after ``WARMUP_S`` of warm-up; the peak is the best of a few repeats, as for
bandwidth. On CUDA it is timed with events; float32 runs as PyTorch's default leaves it (no TF32 unless
enabled), as the cells' float32 matmuls do.

Cached in ``<cache dir>/<target>/matmul_peak.json`` beside the bandwidth peak, under the same fingerprint
fields, and measured anew when they change or the probe does. As for the bandwidth peak, a CPU probe during
which other work took more than ``CONTENDED_CORES`` of a core is used for its run only, with a warning, and
not cached: a peak measured on a busy host would understate every later run's (measured: 17 GFLOP/s float32
cached while three test suites ran, against 60 on the quiet host).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from harness.hardware import fingerprint, is_cuda
from harness.measure.bandwidth import (
    PEAK_CACHE_KEYS,
    _best_event_seconds,
    _best_seconds,
    default_cache_dir,
    host_was_busy,
    probe_other_cores,
)
from harness.measure.hostload import HostLoadMeter
from harness.measure.protocol import PeakRequest
from harness.results.stability import CONTENDED_CORES
from harness.results.store import write_text_atomic

# Matrix sides: large enough that one product is far above timer resolution and a GEMM kernel runs at its
# steady rate, small enough that the CPU probe takes a few seconds.
CPU_SIDE = 1024
CUDA_SIDE = 8192
CPU_DTYPES = ("float32", "bfloat16")
CUDA_DTYPES = ("float32", "bfloat16", "float16")
REPEATS = 5
# Bumped whenever the probe changes, so that peaks cached by an older probe are measured anew.
PROBE_VERSION = 1


class PeakMatmul(BaseModel):
    """Measured peak matmul rate of one target per dtype, in TFLOP/s (1e12 FLOP/s)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tflops: dict[str, float]  # dtype -> 2 n³ / best seconds / 1e12
    side: int  # n of the n × n matrices
    method: str  # how it was measured, in words
    host_other_cores: float | None = None  # CPU probe: cores other work took meanwhile (None: unknown)
    warning: str | None = None  # why this peak was not cached (a busy host)


def matmul_flops(side: int) -> int:
    """FLOPs of one product of two side × side matrices: 2 · side³."""
    return 2 * side**3


def measure_matmul_peak(device: str, repeats: int = REPEATS, side: int | None = None) -> PeakMatmul:
    """The best rate of ``torch.mm`` on ``device`` for each dtype the target's cells use."""
    cuda = is_cuda(device)
    side = side or (CUDA_SIDE if cuda else CPU_SIDE)
    tflops = {}
    with HostLoadMeter() as meter:
        for name in CUDA_DTYPES if cuda else CPU_DTYPES:
            dtype = getattr(torch, name)
            a = torch.randn(side, side, device=device).to(dtype)
            b = torch.randn(side, side, device=device).to(dtype)
            out = torch.empty(side, side, device=device, dtype=dtype)

            def product(a: torch.Tensor = a, b: torch.Tensor = b, out: torch.Tensor = out) -> object:
                return torch.mm(a, b, out=out)

            seconds = _best_event_seconds(product, repeats) if cuda else _best_seconds(product, repeats)
            tflops[name] = matmul_flops(side) / seconds / 1e12
    if cuda:
        torch.cuda.empty_cache()
    other = None if cuda else probe_other_cores(meter)
    timer = "CUDA events" if cuda else f"perf_counter, {torch.get_num_threads()} threads"
    return PeakMatmul(
        tflops=tflops,
        side=side,
        method=f"torch.mm of two {side}x{side} matrices per dtype, 2·n³ FLOPs, best of {repeats}, {timer}",
        host_other_cores=other,
    )


def contention_warning(peak: PeakMatmul) -> str | None:
    """Why a CPU peak measured while the host was busy is not cached; None when it was quiet (or unknown)."""
    if not host_was_busy(peak.host_other_cores):
        return None
    assert peak.host_other_cores is not None
    return (
        f"other work took {peak.host_other_cores:.2f} cores while the matmul probe ran (more than "
        f"{CONTENDED_CORES:g}); its peak is this run's only and not cached"
    )


def matmul_cache_path(target: str, cache_dir: Path) -> Path:
    return cache_dir / target / "matmul_peak.json"


def load_or_measure_matmul_peak(
    target: str,
    device: str,
    cache_dir: Path | None = None,
    *,
    env: dict[str, Any] | None = None,
    measure: Callable[[str], PeakMatmul] = measure_matmul_peak,
) -> PeakMatmul:
    """The cached matmul peak of ``target`` when its fingerprint still matches; otherwise measure it, and cache it
    unless the host was busy meanwhile."""
    env = fingerprint(device) if env is None else env
    path = matmul_cache_path(target, default_cache_dir() if cache_dir is None else cache_dir)
    key = {name: env.get(name) for name in PEAK_CACHE_KEYS} | {"probe_version": PROBE_VERSION}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(record, dict) and record.get("fingerprint") == key:
            return PeakMatmul.model_validate(record["peak"])
    except (OSError, ValueError, KeyError, TypeError, ValidationError):
        pass
    peak = measure(device)
    warning = contention_warning(peak)
    if warning is not None:
        return peak.model_copy(update={"warning": warning})
    record = {"fingerprint": key, "peak": peak.model_dump(), "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ")}
    write_text_atomic(path, json.dumps(record, indent=1) + "\n")
    return peak


def probe_matmul(request: PeakRequest) -> dict[str, Any]:
    """Worker entry: the target's matmul peak (cached per target), as plain data."""
    device = request.device
    if is_cuda(device):
        torch.cuda.set_device(torch.device(device))
    peak = load_or_measure_matmul_peak(request.target, device, env=dict(request.environment))
    return peak.model_dump()
