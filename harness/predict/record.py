"""Each measured cell's prediction and its error, recorded in the result as the runner saves it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.accounting import fixed_workspace_bytes
from harness.backend_support import kernel_memory
from harness.predict.features import cell_features
from harness.predict.predictor import TargetModel, target_model, with_errors
from harness.results.schema import CellResult
from harness.scenario import Cell, LoadedScenario


class CellPredictor:
    """Predicts a scenario's cells on every target a run writes to, from ``results_dir/<target>/calibration.json``
    or vendor figures; a target with neither gets no prediction. Each target's model is read once."""

    def __init__(self, results_dir: Path, loaded: LoadedScenario):
        self.results_dir = results_dir
        self.loaded = loaded
        self._models: dict[str, TargetModel | None] = {}

    def model(self, target: str) -> TargetModel | None:
        if target not in self._models:
            self._models[target] = target_model(self.results_dir, target)
        return self._models[target]

    def annotate(self, target: str, environment: dict[str, Any], cell: Cell, result: CellResult) -> CellResult:
        """``result`` with its ``prediction`` (and the error against what it measured) where the target has a
        model and the cell was measured; unchanged otherwise."""
        model = self.model(target)
        metrics = result.metrics
        if model is None or result.status != "ok" or metrics is None:
            return result
        scenario = self.loaded.scenario
        workspace = fixed_workspace_bytes(environment)  # the run's own, from its fingerprint
        device = "cuda" if environment.get("device") == "cuda" else "cpu"
        kernel = kernel_memory(result.backend_used or cell.backend, device)
        features = cell_features(
            scenario.model, cell.variant, cell.dtype, cell.batch_size, cell.context_len, workspace, kernel
        )
        predicted = model.predict(features, cell.dtype, result.backend_used, scenario.measure.memory_budget)
        max_batch = metrics.max_batch
        measured_max = max_batch.measured if max_batch is not None else None
        prediction = with_errors(
            predicted,
            metrics.decode_latency_s.median if metrics.decode_latency_s else None,
            metrics.attention_latency_s.median if metrics.attention_latency_s else None,
            measured_max,
        )
        if max_batch is None:
            prediction = prediction.model_copy(update={"max_batch": None})
        return result.model_copy(update={"prediction": prediction})
