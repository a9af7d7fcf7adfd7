"""Result files whose latencies and peaks follow a known cost model, for the calibration tests."""

from __future__ import annotations

from helpers_results import lognormal_samples, make_metrics, make_run

from harness import accounting
from harness.predict.costmodel import LatencyModel, MemoryModel
from harness.predict.features import cell_features
from harness.results.schema import CellResult, MaxBatch, RunResult
from harness.scenario import expand_cells, load_scenario

DECODE = LatencyModel(bandwidth_gbps=20.0, tflops=0.05, layer_overhead_s=2e-4, step_overhead_s=1e-3, combine="sum")
ATTENTION = LatencyModel(bandwidth_gbps=25.0, tflops=0.04, layer_overhead_s=1e-5, step_overhead_s=5e-5, combine="sum")
MEMORY = MemoryModel(fixed_bytes=20e6, sequence_factor=1.05)
BUDGET = 384 * 2**20


def modelled_run(
    scenario: str = "scenarios/default.toml",
    *,
    sigma: float = 0.01,
    slow: dict[tuple[str, int, int], float] | None = None,
    seed: int = 0,
    target: str = "cpu-test-2c",
) -> RunResult:
    """Every cell of ``scenario`` measured as DECODE/ATTENTION/MEMORY predict, with lognormal noise of
    ``sigma``; ``slow`` multiplies the decode latency of the named (variant, batch, context) cells."""
    loaded = load_scenario(scenario)
    model = loaded.scenario.model
    cells = []
    for index, cell in enumerate(expand_cells(loaded.scenario, loaded.variants)):
        v, dtype = cell.variant, cell.dtype
        f = cell_features(model, v, dtype, cell.batch_size, cell.context_len)
        factor = (slow or {}).get((v.name, cell.batch_size, cell.context_len), 1.0)
        decode = DECODE.latency_s(f.bytes_per_step, f.flops_per_step, f.n_layers) * factor
        attention = ATTENTION.latency_s(f.attention_bytes_per_step, f.attention_flops_per_step, f.n_layers)
        measured = MEMORY.max_batch(BUDGET, f.static_bytes, f.bytes_per_sequence)
        peak = round(MEMORY.peak_bytes(f.static_bytes, f.bytes_per_sequence, cell.batch_size))
        metrics = make_metrics(
            decode_samples=lognormal_samples(decode, sigma, seed=seed + index),
            attention_samples=lognormal_samples(attention, sigma, seed=seed + 1000 + index),
            peak_memory_bytes=peak,
        ).model_copy(
            update={
                "bytes_per_step": f.bytes_per_step,
                "attention_bytes_per_step": f.attention_bytes_per_step,
                "flops_per_step": f.flops_per_step,
                "max_batch": MaxBatch(
                    budget_bytes=BUDGET,
                    predicted=accounting.predicted_max_batch(model, v, dtype, cell.context_len, BUDGET),
                    measured=measured,
                    error_fraction=None,
                    probes=[
                        {
                            "batch_size": b,
                            "fits": b <= measured,
                            "status": "ok",
                            "peak_bytes": round(MEMORY.peak_bytes(f.static_bytes, f.bytes_per_sequence, b)),
                        }
                        for b in (measured, measured + 1)
                    ],
                ),
            }
        )
        cells.append(
            CellResult(
                variant=v.name,
                batch_size=cell.batch_size,
                context_len=cell.context_len,
                dtype=dtype,
                backend=cell.backend,
                backend_used=cell.backend,
                head_dim=v.head_dim,
                n_heads=v.n_heads,
                n_kv_heads=v.n_kv_heads,
                n_kv_layers=v.n_kv_layers,
                kv_layers=list(v.kv_layers),
                params_total=accounting.param_counts(model, v).total,
                kv_bytes_per_token=accounting.kv_bytes_per_token(v, dtype),
                status="ok",
                elapsed_s=1.0,
                metrics=metrics,
            )
        )
    run = make_run(cells, target=target, scenario=loaded.scenario.name)
    return run.model_copy(update={"scenario": run.scenario.model_copy(update={"model": model.model_dump()})})
