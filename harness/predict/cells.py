"""Predictions for every cell of a scenario, without measuring (``attnbench plan --predict``, ``explore``)."""

from __future__ import annotations

from typing import Any

from harness.backend_support import kernel_memory
from harness.predict.features import cell_features
from harness.predict.predictor import TargetModel
from harness.scenario import Cell, LoadedScenario, expand_cells


def predict_cell(loaded: LoadedScenario, cell: Cell, model: TargetModel) -> dict[str, Any]:
    """One cell's coordinates with its predicted latencies, bandwidths, peak memory, max batch and bound."""
    scenario = loaded.scenario
    kernel = kernel_memory(cell.backend, None)
    features = cell_features(
        scenario.model, cell.variant, cell.dtype, cell.batch_size, cell.context_len, model.workspace_bytes, kernel
    )
    backend = None if cell.backend == "auto" else cell.backend
    prediction = model.predict(features, cell.dtype, backend, scenario.measure.memory_budget)
    decode = model.latency_model("decode", cell.dtype, backend)
    decode_s, attention_s = prediction.decode_latency_s, prediction.attention_latency_s
    return {
        "variant": cell.variant.name,
        "batch_size": cell.batch_size,
        "context_len": cell.context_len,
        "dtype": cell.dtype,
        "backend": cell.backend,
        "source": prediction.source,
        "decode_latency_s": decode_s,
        "attention_latency_s": attention_s,
        "bandwidth_gbps": features.bytes_per_step / decode_s / 1e9 if decode_s else None,
        "attention_bandwidth_gbps": features.attention_bytes_per_step / attention_s / 1e9 if attention_s else None,
        "tokens_per_s": cell.batch_size / decode_s if decode_s else None,
        "bound": decode.bound(features.bytes_per_step, features.flops_per_step) if decode is not None else None,
        "peak_memory_bytes": prediction.peak_memory_bytes,
        "max_batch": prediction.max_batch,
    }


def predict_scenario(loaded: LoadedScenario, model: TargetModel) -> list[dict[str, Any]]:
    return [predict_cell(loaded, cell, model) for cell in expand_cells(loaded.scenario, loaded.variants)]
