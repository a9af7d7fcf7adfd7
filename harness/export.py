"""Export a result file to other tools' formats; today pytest-benchmark's saved-run JSON.

The pytest-benchmark file holds ``machine_info``, ``commit_info``, ``datetime``, ``version`` and a
``benchmarks`` list with one entry per ``ok`` cell, named ``decode[<variant>-b<batch>-ctx<context>-
<dtype>-<backend>]``. Its ``stats`` are computed from the cell's raw latency samples with
pytest-benchmark's own definitions, so an exported run reads like a native one in
``pytest-benchmark compare``: sample standard deviation; quartiles by Wikipedia's "computing
methods" 2 (even n: medians of the lower and upper halves) and 3 (odd n: weighted between
neighbours); Tukey fences at 1.5 IQR; ``outliers`` as ``"<beyond 1 stddev>;<beyond the fences>"``.
These quartiles differ from the linear-interpolation percentiles of harness/stats/order.py.
"""

from __future__ import annotations

import json
import math
import statistics
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.results.schema import CellResult, RunResult, Summary
from harness.results.store import write_text_atomic

FORMATS = ("pytest-benchmark",)
# Latency metrics that can be exported, and the benchmark-name prefix each gets.
EXPORT_METRICS: dict[str, str] = {
    "decode_latency_s": "decode",
    "decode_latency_cold_s": "decode_cold",
    "decode_latency_host_s": "decode_host",
    "attention_latency_s": "attention",
    "attention_latency_cold_s": "attention_cold",
}
_FALLBACK_PYTEST_BENCHMARK_VERSION = "5.0.0"


def _quartiles(data: Sequence[float]) -> tuple[float, float]:
    """pytest-benchmark's Q1 and Q3 of sorted ``data`` (module doc)."""
    n = len(data)
    if n == 1:
        return data[0], data[0]
    if n % 2 == 0:
        return statistics.median(data[: n // 2]), statistics.median(data[n // 2 :])
    m, r = divmod(n, 4)
    if r == 1:
        return 0.25 * data[m - 1] + 0.75 * data[m], 0.75 * data[3 * m] + 0.25 * data[3 * m + 1]
    return 0.75 * data[m] + 0.25 * data[m + 1], 0.25 * data[3 * m + 1] + 0.75 * data[3 * m + 2]


def benchmark_stats(samples: Sequence[float]) -> dict[str, Any]:
    """pytest-benchmark's ``stats`` object for raw per-step samples (seconds); each sample is one round."""
    if not samples:
        raise ValueError("need at least one sample")
    data = sorted(samples)
    n = len(data)
    mean = statistics.fmean(data)
    stddev = statistics.stdev(data) if n > 1 else 0.0
    q1, q3 = _quartiles(data)
    iqr = q3 - q1
    low_fence, high_fence = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    stddev_outliers = sum(1 for x in data if x < mean - stddev or x > mean + stddev)
    iqr_outliers = sum(1 for x in data if x < low_fence or x > high_fence)
    total = math.fsum(data)
    return {
        "min": data[0],
        "max": data[-1],
        "mean": mean,
        "stddev": stddev,
        "rounds": n,
        "median": statistics.median(data),
        "iqr": iqr,
        "q1": q1,
        "q3": q3,
        "iqr_outliers": iqr_outliers,
        "stddev_outliers": stddev_outliers,
        "outliers": f"{stddev_outliers};{iqr_outliers}",
        "ld15iqr": data[0] if n == 1 else data[bisect_left(data, low_fence)],
        "hd15iqr": data[0] if n == 1 else data[bisect_right(data, high_fence) - 1],
        "ops": n / total if total else 0.0,
        "total": total,
        "iterations": 1,
        "data": list(samples),
    }


def cell_param(cell: CellResult) -> str:
    """``H128-MQA-CLA2-b8-ctx2048-bfloat16-sdpa``: the cell's coordinates as one pytest-style id."""
    return f"{cell.variant}-b{cell.batch_size}-ctx{cell.context_len}-{cell.dtype}-{cell.backend}"


def _describe(value: Any) -> str:
    """A hardware description from an environment entry that may be a string, a dict or a list."""
    if value is None:
        return ""
    if isinstance(value, dict):
        for key in ("name", "brand", "brand_raw", "model"):
            if value.get(key):
                return str(value[key])
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, list):
        return ", ".join(filter(None, (_describe(v) for v in value)))
    return str(value)


def _first(env: dict[str, Any], *keys: str) -> Any:
    return next((env[k] for k in keys if env.get(k) not in (None, "", [], {})), None)


def machine_info(result: RunResult) -> dict[str, Any]:
    """pytest-benchmark's ``machine_info`` from the result's environment (harness/hardware.py fingerprint).

    The CPU is ``cpu_model``; on CUDA the GPU is ``device_name``. The target id, the device and the
    whole fingerprint ride along under ``attnbench_*`` keys, which pytest-benchmark ignores.
    """
    env = result.environment
    cpu = _describe(_first(env, "cpu_model", "cpu"))
    gpu = _describe(_first(env, "device_name", "gpu")) if result.device == "cuda" else ""
    python_version = str(_first(env, "python_version", "python") or "")
    return {
        "node": str(_first(env, "hostname", "node") or ""),
        "processor": cpu,
        "machine": str(_first(env, "machine") or ""),
        "python_compiler": "",
        "python_implementation": "CPython",
        "python_implementation_version": python_version,
        "python_version": python_version,
        "python_build": [],
        "release": str(_first(env, "release") or ""),
        "system": str(_first(env, "os", "system") or ""),
        "cpu": {"brand_raw": cpu, "count": _first(env, "logical_cores")},
        "gpu": gpu,
        "attnbench_target": result.target,
        "attnbench_device": result.device,
        "attnbench_environment": env,
    }


def commit_info(result: RunResult) -> dict[str, Any]:
    """pytest-benchmark's ``commit_info`` from the result's git record."""
    return {
        "id": result.git.commit or "unversioned",
        "time": None,
        "author_time": None,
        "dirty": bool(result.git.dirty),
        "project": "attnbench",
        "branch": result.git.branch or "(unknown)",
    }


def _benchmark(result: RunResult, cell: CellResult, metric: str, summary: Summary) -> dict[str, Any]:
    prefix = EXPORT_METRICS[metric]
    param = cell_param(cell)
    name = f"{prefix}[{param}]"
    assert cell.metrics is not None
    return {
        "group": f"{result.scenario.name} {prefix}",
        "name": name,
        "fullname": f"{result.scenario.source}::{name}",
        "params": {
            "variant": cell.variant,
            "batch_size": cell.batch_size,
            "context_len": cell.context_len,
            "dtype": cell.dtype,
            "backend": cell.backend,
        },
        "param": param,
        "extra_info": {
            "target": result.target,
            "metric": metric,
            "backend_used": cell.backend_used,
            "bytes_per_step": cell.metrics.bytes_per_step,
            "bandwidth_gbps": cell.metrics.bandwidth_gbps,
            "tokens_per_s": cell.metrics.tokens_per_s,
            "peak_memory_bytes": cell.metrics.peak_memory_bytes,
            "kv_cache_bytes": cell.metrics.kv_cache_bytes,
            "ci_low": summary.ci_low,
            "ci_high": summary.ci_high,
        },
        "options": {"timer": f"attnbench ({result.device})", "min_rounds": len(summary.samples)},
        "stats": benchmark_stats(summary.samples),
    }


def _pytest_benchmark_version() -> str:
    try:
        return metadata.version("pytest-benchmark")
    except metadata.PackageNotFoundError:
        return _FALLBACK_PYTEST_BENCHMARK_VERSION


def to_pytest_benchmark(result: RunResult, metric: str = "decode_latency_s") -> dict[str, Any]:
    """The result as a pytest-benchmark saved run: one benchmark per ``ok`` cell that has ``metric``."""
    if metric not in EXPORT_METRICS:
        raise UserError(f"{metric!r} cannot be exported; use one of {', '.join(EXPORT_METRICS)}", source="--metric")
    benchmarks = []
    for cell in result.cells:
        summary = getattr(cell.metrics, metric) if cell.status == "ok" and cell.metrics else None
        if summary is not None:
            benchmarks.append(_benchmark(result, cell, metric, summary))
    return {
        "machine_info": machine_info(result),
        "commit_info": commit_info(result),
        "benchmarks": benchmarks,
        "datetime": result.finished_utc or result.started_utc,
        "version": _pytest_benchmark_version(),
    }


def export_result(
    result: RunResult,
    path: Path,
    fmt: str = "pytest-benchmark",
    metric: str = "decode_latency_s",
    source: str | None = None,
) -> int:
    """Write ``result`` (read from ``source``) to ``path`` as ``fmt``, atomically; returns the benchmark count."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}", source="--format")
    document = to_pytest_benchmark(result, metric)
    if not document["benchmarks"]:
        raise UserError(f"has no ok cell with {metric} samples to export", source=source)
    write_text_atomic(path, json.dumps(document, indent=4) + "\n")
    return len(document["benchmarks"])
