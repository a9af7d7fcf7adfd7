"""Regression thresholds per metric, parsed from ``METRIC:VALUE`` strings such as ``median:5%``."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from harness.errors import UserError

Verdict = Literal["regression", "improvement", "~"]

DEFAULT_ALPHA = 0.01
# Latency metrics, compared whenever both sides carry samples for them (cold ones are optional).
LATENCY_METRICS = ("decode_latency_s", "attention_latency_s", "decode_latency_cold_s", "attention_latency_cold_s")
# Metrics without samples, and whether a larger value is worse.
SCALAR_METRICS: dict[str, bool] = {
    "peak_memory_bytes": True,
    "kv_cache_bytes": True,
    "max_batch": False,  # the measured max batch under the memory budget
    "bandwidth_gbps": False,
}
MEDIAN = "median"  # threshold key for every latency metric
DEFAULT_FAIL_ON = ("median:5%", "peak_memory_bytes:1%", "max_batch:0", "kv_cache_bytes:0", "bandwidth_gbps:5%")
# Interleaved runs (attnbench ab) pair every round of BASE with one of HEAD taken moments apart, which
# cancels the machine's drift: smaller changes are told from noise, so the latency gates are lower.
PAIRED_FAIL_ON = ("median:2%", "peak_memory_bytes:1%", "max_batch:0", "kv_cache_bytes:0", "bandwidth_gbps:2%")
FAIL_ON_FLAG = "--fail-on"


@dataclass(frozen=True)
class Threshold:
    """How large a change must be to count: a fraction of BASE, or an absolute amount in metric units."""

    amount: float
    relative: bool
    spec: str  # as written, e.g. "median:5%"

    def exceeded_by(self, base: float, head: float) -> bool:
        """Whether ``|head - base|`` is strictly larger than the threshold."""
        delta = abs(head - base)
        if not self.relative:
            return delta > self.amount
        if base == 0:
            return delta > 0
        return delta / abs(base) > self.amount


def parse_threshold(spec: str) -> tuple[str, Threshold]:
    """``"median:5%"`` -> ``("median", Threshold(0.05, relative=True))``; UserError naming the flag if bad."""
    known = (MEDIAN, *LATENCY_METRICS, *SCALAR_METRICS)
    metric, sep, value = spec.strip().partition(":")
    metric, value = metric.strip(), value.strip()
    if not sep or not metric or not value:
        raise UserError(f"{spec!r} is not METRIC:VALUE (e.g. median:5%, max_batch:0)", source=FAIL_ON_FLAG)
    if metric not in known:
        raise UserError(f"{spec!r}: unknown metric {metric!r}; use one of {', '.join(known)}", source=FAIL_ON_FLAG)
    relative = value.endswith("%")
    try:
        amount = float(value.removesuffix("%"))
    except ValueError:
        raise UserError(f"{spec!r}: {value!r} is not a number or a percentage", source=FAIL_ON_FLAG) from None
    if not math.isfinite(amount) or amount < 0:
        raise UserError(f"{spec!r}: the threshold must be a finite number >= 0", source=FAIL_ON_FLAG)
    return metric, Threshold(amount / 100 if relative else amount, relative, f"{metric}:{value}")


def parse_thresholds(specs: Iterable[str] = (), defaults: Iterable[str] = DEFAULT_FAIL_ON) -> dict[str, Threshold]:
    """The ``defaults`` with each given spec replacing the one for its metric.

    A spec may hold several comma-separated entries (``"median:3%,max_batch:0"``).
    """
    thresholds = dict(parse_threshold(spec) for spec in defaults)
    for spec in specs:
        for part in spec.split(","):
            metric, threshold = parse_threshold(part)
            thresholds[metric] = threshold
    return thresholds


def threshold_for(metric: str, thresholds: dict[str, Threshold]) -> Threshold:
    return thresholds.get(metric) or thresholds[MEDIAN]
