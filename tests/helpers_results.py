"""Synthetic result objects for tests: plausible RunResult/CellResult values without running anything.

Defaults describe a small decoder on a 2-core CPU target; every keyword overrides one field. Samples
are drawn from a seeded lognormal, the usual shape of timing noise, so two draws with the same median
and sigma simulate two runs of the same code on the same machine.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from harness.results.schema import (
    CellMetrics,
    CellResult,
    Check,
    GitInfo,
    HostLoad,
    MaxBatch,
    RunResult,
    ScenarioRef,
    Stability,
    Summary,
)
from harness.results.summary import summarize

DEFAULT_TARGET = "cpu-test-2c"
DEFAULT_SCENARIO = "decode-small"
# The shape of harness/hardware.py's fingerprint for a CPU target.
DEFAULT_ENVIRONMENT: dict[str, Any] = {
    "target": "cpu-test-2c",
    "device": "cpu",
    "device_name": "Test CPU 2-core",
    "cpu_model": "Test CPU 2-core",
    "logical_cores": 2,
    "python_version": "3.11.9",
    "torch_version": "2.13.0",
    "os": "Linux-6.1-x86_64",
}


def lognormal_samples(median_s: float, sigma: float = 0.03, n: int = 20, seed: int = 0) -> list[float]:
    """``n`` samples whose distribution has median ``median_s`` and log-space spread ``sigma`` (0.03 ~ 3%)."""
    rng = np.random.default_rng(seed)
    return [float(x) for x in median_s * np.exp(rng.normal(0.0, sigma, size=n))]


def make_summary(samples: list[float]) -> Summary:
    return summarize(samples)


def make_metrics(
    *,
    decode_samples: list[float] | None = None,
    attention_samples: list[float] | None = None,
    decode_cold_samples: list[float] | None = None,
    peak_memory_bytes: int | None = 300_000_000,
    kv_cache_bytes: int | None = 16_777_216,
    max_batch_measured: int | None = 64,
    bandwidth_gbps: float | None = 20.0,
) -> CellMetrics:
    decode = summarize(decode_samples if decode_samples is not None else lognormal_samples(0.010))
    return CellMetrics(
        decode_latency_s=decode,
        decode_latency_cold_s=summarize(decode_cold_samples) if decode_cold_samples else None,
        attention_latency_s=summarize(attention_samples) if attention_samples else None,
        bytes_per_step=200_000_000,
        attention_bytes_per_step=16_000_000,
        flops_per_step=400_000_000,
        bandwidth_basis="warm",
        bandwidth_gbps=bandwidth_gbps,
        tokens_per_s=8 / decode.median,
        peak_memory_bytes=peak_memory_bytes,
        kv_cache_bytes=kv_cache_bytes,
        kv_cache_bytes_expected=kv_cache_bytes or 16_777_216,
        max_batch=(
            None
            if max_batch_measured is None
            else MaxBatch(
                budget_bytes=2**31, predicted=max_batch_measured, measured=max_batch_measured, error_fraction=0.0
            )
        ),
    )


def make_cell(
    variant: str = "H128-MQA",
    batch_size: int = 8,
    context_len: int = 2048,
    dtype: str = "bfloat16",
    backend: str = "sdpa",
    *,
    status: Literal["ok", "oom", "error", "timeout"] = "ok",
    metrics: CellMetrics | None = None,
    **metric_fields: Any,
) -> CellResult:
    """One cell; ``metric_fields`` go to :func:`make_metrics` unless ``metrics`` is given."""
    cell_metrics = None
    if status == "ok":
        cell_metrics = metrics if metrics is not None else make_metrics(**metric_fields)
    return CellResult(
        variant=variant,
        batch_size=batch_size,
        context_len=context_len,
        dtype=dtype,
        backend=backend,
        backend_used=backend,
        head_dim=128,
        n_heads=8,
        n_kv_heads=1,
        n_kv_layers=4,
        kv_layers=[0, 1, 2, 3],
        params_total=50_000_000,
        kv_bytes_per_token=2048,
        status=status,
        error=None if status == "ok" else f"{status} while building the cell",
        elapsed_s=1.5,
        metrics=cell_metrics,
    )


def make_run(
    cells: list[CellResult],
    *,
    target: str = DEFAULT_TARGET,
    scenario: str = DEFAULT_SCENARIO,
    commit: str = "0123456789abcdef0123456789abcdef01234567",
    started_utc: str = "2026-01-05T10:00:00Z",
    environment: dict[str, Any] | None = None,
    device: Literal["cpu", "cuda"] = "cpu",
) -> RunResult:
    """A whole result file around ``cells``."""
    return RunResult(
        target=target,
        environment=environment if environment is not None else {**DEFAULT_ENVIRONMENT, "target": target},
        git=GitInfo(commit=commit, short=commit[:7], dirty=False, branch="main"),
        scenario=ScenarioRef(
            name=scenario,
            source=f"scenarios/{scenario}.toml",
            sha256="0" * 64,
            model={"d_model": 1024, "n_layers": 4},
            measure={"min_samples": 20},
        ),
        device=device,
        quick=False,
        started_utc=started_utc,
        finished_utc=started_utc,
        peak_bandwidth_gbps=40.0,
        cells=cells,
    )


def with_evidence(result: RunResult) -> RunResult:
    """``result`` as the current code writes it: every measured cell with a passed self-check, a stable
    stability assessment and the host's load (golden files written before these fields lack them)."""
    check = Check(name="bandwidth_within_peak", passed=True, detail="within the measured peak")
    load = HostLoad(wall_s=1.0, other_cpu_s=0.0, steal_s=0.0, cores=2)
    cells = [
        cell.model_copy(update={"checks": [check], "stability": Stability(unstable=False), "host_load": [load]})
        if cell.status == "ok" and cell.metrics is not None
        else cell
        for cell in result.cells
    ]
    return result.model_copy(update={"cells": cells})
