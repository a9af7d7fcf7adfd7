"""A target's cost model as one object, from its calibration or from vendor figures, and a cell's prediction."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError
from harness.predict.calibration import CALIBRATION_NAME, Calibration, load_calibration, predict_latency
from harness.predict.costmodel import LatencyModel, MemoryModel
from harness.predict.features import CellFeatures
from harness.predict.vendor import VendorFigures, default_workspace_bytes, vendor_figures
from harness.results.schema import TARGET_PATTERN, CellPrediction

# what a calibration-less GPU's memory is taken to be: the accounting alone (weights, cache, activations)
ACCOUNTING_MEMORY = MemoryModel(fixed_bytes=0.0, sequence_factor=1.0)


@dataclass(frozen=True)
class TargetModel:
    """The cost model of one target: fitted (``calibration``) or from a data sheet (``vendor``)."""

    target: str
    calibration: Calibration | None = None
    vendor: VendorFigures | None = None

    @property
    def source(self) -> str:
        return "calibration" if self.calibration is not None else "vendor"

    @property
    def workspace_bytes(self) -> int:
        """Fixed bytes beside weights the accounting adds for this target: cuBLAS's default on a GPU with vendor
        figures (a calibration's memory fit counts it the same way: harness/predict/features.py), none on a CPU."""
        return default_workspace_bytes(self.vendor) if self.vendor is not None else 0

    def latency_model(self, metric: str, dtype: str, backend: str | None) -> LatencyModel | None:
        if self.calibration is not None:
            fit = self.calibration.latency_model(metric, dtype, backend)
            return fit.model if fit is not None else None
        assert self.vendor is not None
        tflops = self.vendor.fp32_tflops if dtype == "float32" else self.vendor.tensor_tflops
        return LatencyModel(
            bandwidth_gbps=self.vendor.bandwidth_gbps, tflops=tflops, layer_overhead_s=0.0, step_overhead_s=0.0
        )

    @property
    def memory(self) -> MemoryModel:
        if self.calibration is not None and self.calibration.memory is not None:
            return self.calibration.memory.model
        return ACCOUNTING_MEMORY

    def predict(
        self, features: CellFeatures, dtype: str, backend: str | None, budget_bytes: int | None
    ) -> CellPrediction:
        """Latencies, peak memory and max batch of one cell (its features counting this target's workspace)."""
        decode = self.latency_model("decode", dtype, backend)
        attention = self.latency_model("attention", dtype, backend)
        memory = self.memory
        return CellPrediction(
            source="calibration" if self.calibration is not None else "vendor",
            fitted_utc=self.calibration.fitted_utc if self.calibration is not None else None,
            decode_latency_s=predict_latency(decode, features, "decode") if decode is not None else None,
            attention_latency_s=predict_latency(attention, features, "attention") if attention is not None else None,
            peak_memory_bytes=max(
                0, round(memory.peak_bytes(features.static_bytes, features.bytes_per_sequence, features.batch_size))
            ),
            max_batch=(
                memory.max_batch(budget_bytes, features.static_bytes, features.bytes_per_sequence)
                if budget_bytes is not None
                else None
            ),
        )


def calibration_path(results_dir: Path, target: str) -> Path:
    """``results_dir/<target>/calibration.json``; UserError for a target id that is no folder name."""
    if not re.fullmatch(TARGET_PATTERN, target):
        raise UserError(f"not a target id (letters, digits, '.', '_', '-'): {target!r}", source="--target")
    return results_dir / target / CALIBRATION_NAME


def target_model(results_dir: Path, target: str) -> TargetModel | None:
    """The target's calibration under ``results_dir`` if it has one, else its vendor figures, else None.
    A calibration file with a problem is a UserError naming it."""
    path = calibration_path(results_dir, target)
    figures = vendor_figures(target)
    if path.is_file():
        return TargetModel(target, calibration=load_calibration(path), vendor=figures)
    return TargetModel(target, vendor=figures) if figures is not None else None


def with_errors(
    prediction: CellPrediction, decode_s: float | None, attention_s: float | None, max_batch: int | None
) -> CellPrediction:
    """``prediction`` with its error against what was measured: predicted / measured − 1 where both exist."""

    def error(predicted: float | None, measured: float | None) -> float | None:
        return predicted / measured - 1 if predicted is not None and measured else None

    return prediction.model_copy(
        update={
            "decode_error_fraction": error(prediction.decode_latency_s, decode_s),
            "attention_error_fraction": error(prediction.attention_latency_s, attention_s),
            "max_batch_error_fraction": error(prediction.max_batch, max_batch),
        }
    )
