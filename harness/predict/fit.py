"""Robust least-squares fits of the cost model's effective figures to measured cells.

Latency is fitted in log space (the residual of a cell is log(predicted / measured), so a 10% miss
weighs the same on a 50 µs kernel as on a 50 ms step) with scipy's ``soft_l1`` loss, a smooth Huber
loss: residuals beyond ``LOSS_SCALE`` count linearly rather than squared, so one slow or disturbed cell
cannot pull the fit (scipy.optimize.least_squares; Triggs et al. 2000, "Bundle adjustment", §4.1).
The figures are fitted as logarithms too, which keeps them positive. Both ways of combining memory and
compute time are fitted and the one with the lower robust cost is kept: they have as many parameters.

Memory is linear in its two unknowns (fixed bytes, per-sequence factor) and fitted the same way on the
relative error of each peak.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from harness.predict.costmodel import Combine, LatencyModel, MemoryModel

LOSS_SCALE = 0.05  # residuals (log ratio) beyond about 5% weigh linearly, not squared
MIN_POINTS = 5  # a latency fit has 4 unknowns: fewer points than this leave it undetermined
COMBINES: tuple[Combine, ...] = ("max", "sum")


@dataclass(frozen=True)
class LatencyPoint:
    """One measured latency and the accounting it is predicted from."""

    bytes_moved: float
    flops: float
    n_layers: int
    latency_s: float


def _unpack(params: np.ndarray, combine: Combine) -> LatencyModel:
    bandwidth, rate, layer, step = np.exp(params)
    return LatencyModel(
        bandwidth_gbps=float(bandwidth),
        tflops=float(rate),
        layer_overhead_s=float(layer),
        step_overhead_s=float(step),
        combine=combine,
    )


def _predicted(params: np.ndarray, combine: Combine, b: np.ndarray, f: np.ndarray, n: np.ndarray) -> np.ndarray:
    bandwidth, rate, layer, step = np.exp(params)
    memory_s, compute_s = b / (bandwidth * 1e9), f / (rate * 1e12)
    core = np.maximum(memory_s, compute_s) if combine == "max" else memory_s + compute_s
    return core + n * layer + step


def fit_latency(points: Sequence[LatencyPoint]) -> LatencyModel:
    """The effective figures that best predict ``points`` (robust, log space); ValueError with too few points."""
    if len(points) < MIN_POINTS:
        raise ValueError(f"{len(points)} measured latencies; a fit needs at least {MIN_POINTS}")
    b = np.array([p.bytes_moved for p in points], dtype=float)
    f = np.array([p.flops for p in points], dtype=float)
    n = np.array([p.n_layers for p in points], dtype=float)
    t = np.array([p.latency_s for p in points], dtype=float)
    typical = float(np.median(t))
    # starts: every step at the median bandwidth (or the median FLOP rate), overheads a few % of a step
    bandwidth0, rate0 = float(np.median(b / t)) / 1e9, float(np.median(f / t)) / 1e12
    starts = [
        np.log([bandwidth0 * scale_b, rate0 * scale_f, 0.01 * typical / float(np.median(n)), 0.01 * typical])
        for scale_b, scale_f in ((1.0, 4.0), (4.0, 1.0), (2.0, 2.0))
    ]
    best: tuple[float, LatencyModel] | None = None
    for combine in COMBINES:
        for start in starts:
            fitted = least_squares(
                lambda params, c=combine: np.log(_predicted(params, c, b, f, n) / t),
                start,
                loss="soft_l1",
                f_scale=LOSS_SCALE,
            )
            if best is None or fitted.cost < best[0]:
                best = (float(fitted.cost), _unpack(fitted.x, combine))
    assert best is not None
    return best[1]


@dataclass(frozen=True)
class MemoryPoint:
    """One measured peak: the cell's fixed bytes, bytes per sequence and batch size, by the accounting."""

    static_bytes: int
    bytes_per_sequence: int
    batch_size: int
    peak_bytes: int


def fit_memory(points: Sequence[MemoryPoint]) -> MemoryModel:
    """Fixed bytes and per-sequence factor that best predict the peaks (robust, relative error)."""
    if len(points) < 2:
        raise ValueError(f"{len(points)} measured peaks; a fit needs at least 2")
    static = np.array([p.static_bytes for p in points], dtype=float)
    per_batch = np.array([p.bytes_per_sequence * p.batch_size for p in points], dtype=float)
    peak = np.array([p.peak_bytes for p in points], dtype=float)
    scale = float(np.median(peak))  # fixed bytes fitted in units of a typical peak, to keep the problem scaled

    def residual(params: np.ndarray) -> np.ndarray:
        fixed, factor = params
        return (static + fixed * scale + factor * per_batch) / peak - 1

    fitted = least_squares(residual, np.array([0.0, 1.0]), loss="soft_l1", f_scale=0.01)
    fixed, factor = fitted.x
    return MemoryModel(fixed_bytes=float(fixed * scale), sequence_factor=max(float(factor), 1e-6))


def abs_error_quantiles(errors: Sequence[float]) -> tuple[float, float]:
    """Median and 90th percentile of |error| (nearest rank, as the report states them)."""
    magnitudes = sorted(abs(e) for e in errors)
    if not magnitudes:
        return math.nan, math.nan
    p90 = magnitudes[min(len(magnitudes) - 1, math.ceil(0.9 * len(magnitudes)) - 1)]
    return statistics.median(magnitudes), p90
