"""A target's calibration: the cost model fitted on every measured cell under ``results/<target>/``.

``calibration.json`` beside the results records the fitted figures per group of cells (all cells,
then per dtype, then per dtype and backend where enough cells ran), the memory fit, the commit and
result files it was fitted on, and every cell's residual, so that a reader sees how far the model is
from each measurement it learned from.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.errors import UserError, UserErrors, validation_problems
from harness.inputs import read_json
from harness.predict.costmodel import LatencyModel, MemoryModel
from harness.predict.features import CellFeatures, CellKey, Observation, observations
from harness.predict.fit import LatencyPoint, MemoryPoint, abs_error_quantiles, fit_latency, fit_memory
from harness.results.schema import GitInfo
from harness.results.store import load_result, result_files, write_text_atomic

CALIBRATION_NAME = "calibration.json"
CALIBRATION_VERSION = 1
CALIBRATION_LIMIT_BYTES = 64 * 2**20  # a fit of thousands of cells is well under a megabyte
MIN_GROUP_CELLS = 8  # a group (dtype, backend) gets figures of its own from this many distinct cells
LATENCIES = ("decode", "attention")  # the warm decode step and warm core attention


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class LatencyFit(_Model):
    """Figures fitted on one group of cells: all of them (dtype and backend null), one dtype, or one of each."""

    metric: str  # decode | attention
    dtype: str | None = None
    backend: str | None = None  # the backend that ran (what auto resolved to)
    cells: int = Field(ge=1)  # distinct cells fitted on
    model: LatencyModel
    median_abs_error: float = Field(ge=0)  # in-sample |predicted / measured − 1|
    p90_abs_error: float = Field(ge=0)


class MemoryFit(_Model):
    points: int = Field(ge=2)  # measured peaks fitted on: cells' own and their max-batch probes
    model: MemoryModel
    median_abs_error: float = Field(ge=0)


class Residual(_Model):
    """How far the calibrated model is from one measured latency it was fitted on."""

    file: str
    scenario: str
    variant: str
    batch_size: int
    context_len: int
    dtype: str
    backend: str
    metric: str
    measured_s: float = Field(gt=0)
    predicted_s: float = Field(gt=0)
    error_fraction: float  # predicted / measured − 1


class Calibration(_Model):
    version: int = CALIBRATION_VERSION
    target: str
    fitted_utc: str
    git: GitInfo  # the code that fitted it
    files: list[str]  # the result files fitted on (names in the target's folder)
    latency: list[LatencyFit]
    memory: MemoryFit | None = None
    residuals: list[Residual] = []

    def latency_model(self, metric: str, dtype: str, backend: str | None) -> LatencyFit | None:
        """The most specific fit for a cell: its dtype and backend, else its dtype, else every cell."""
        fits = {(f.dtype, f.backend): f for f in self.latency if f.metric == metric}
        for key in ((dtype, backend), (dtype, None), (None, None)):
            if key in fits:
                return fits[key]
        return None


def _latency(observation: Observation, metric: str) -> float | None:
    return observation.decode_latency_s if metric == "decode" else observation.attention_latency_s


def latency_point(features: CellFeatures, metric: str, latency_s: float) -> LatencyPoint:
    if metric == "decode":
        return LatencyPoint(features.bytes_per_step, features.flops_per_step, features.n_layers, latency_s)
    return LatencyPoint(
        features.attention_bytes_per_step, features.attention_flops_per_step, features.n_layers, latency_s
    )


def predict_latency(model: LatencyModel, features: CellFeatures, metric: str) -> float:
    point = latency_point(features, metric, 1.0)
    return model.latency_s(point.bytes_moved, point.flops, point.n_layers)


def memory_points(found: Sequence[Observation]) -> list[MemoryPoint]:
    return [
        MemoryPoint(o.features.static_bytes, o.features.bytes_per_sequence, batch, peak)
        for o in found
        for batch, peak in o.memory_points
    ]


def _groups(found: Sequence[Observation]) -> list[tuple[str | None, str | None, list[Observation]]]:
    """All cells, each dtype, each (dtype, backend): a subgroup only with enough cells and fewer than its parent."""
    groups: list[tuple[str | None, str | None, list[Observation]]] = [(None, None, list(found))]
    for dtype in sorted({o.group[0] for o in found}):
        of_dtype = [o for o in found if o.group[0] == dtype]
        if len({o.key for o in of_dtype}) >= MIN_GROUP_CELLS and len(of_dtype) < len(found):
            groups.append((dtype, None, of_dtype))
        for backend in sorted({o.group[1] for o in of_dtype}):
            both = [o for o in of_dtype if o.group[1] == backend]
            if len({o.key for o in both}) >= MIN_GROUP_CELLS and len(both) < len(of_dtype):
                groups.append((dtype, backend, both))
    return groups


def fit_observations(found: Sequence[Observation]) -> tuple[list[LatencyFit], MemoryFit | None]:
    """Latency fits per group and metric (groups too small to fit are left out), and the memory fit."""
    fits = []
    for metric in LATENCIES:
        fitted: set[frozenset[tuple[str, CellKey]]] = set()  # a subgroup with its parent's cells adds nothing
        for dtype, backend, members in _groups(found):
            timed = [(o, t) for o in members if (t := _latency(o, metric)) is not None]
            cells = frozenset((o.file, o.key) for o, _ in timed)
            if len({o.key for o, _ in timed}) < MIN_GROUP_CELLS or cells in fitted:
                continue
            fitted.add(cells)
            model = fit_latency([latency_point(o.features, metric, t) for o, t in timed])
            median, p90 = abs_error_quantiles([predict_latency(model, o.features, metric) / t - 1 for o, t in timed])
            fits.append(
                LatencyFit(
                    metric=metric,
                    dtype=dtype,
                    backend=backend,
                    cells=len({o.key for o, _ in timed}),
                    model=model,
                    median_abs_error=median,
                    p90_abs_error=p90,
                )
            )
    points = memory_points(found)
    memory = None
    if len(points) >= 2:
        memory_model = fit_memory(points)
        errors = [
            memory_model.peak_bytes(p.static_bytes, p.bytes_per_sequence, p.batch_size) / p.peak_bytes - 1
            for p in points
        ]
        memory = MemoryFit(points=len(points), model=memory_model, median_abs_error=abs_error_quantiles(errors)[0])
    return fits, memory


def target_observations(folder: Path) -> tuple[list[Path], list[Observation]]:
    """Every result file under a target's folder (a bad one stops with its problems) and its measured cells."""
    files = [p for p in result_files(folder) if p.parent == folder]
    found: list[Observation] = []
    for path in files:
        found += observations(load_result(path), path)
    return files, found


def calibrate(folder: Path, target: str, git: GitInfo) -> Calibration:
    """Fit the cost model on every measured cell of the result files in ``folder``."""
    files, found = target_observations(folder)
    fits, memory = fit_observations(found)
    if not fits:
        raise UserError(
            f"{len({o.key for o in found})} measured cells in {len(files)} result files; "
            f"a calibration needs at least {MIN_GROUP_CELLS}",
            source=str(folder),
        )
    calibration = Calibration(
        target=target,
        fitted_utc=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        git=git,
        files=[p.name for p in files],
        latency=fits,
        memory=memory,
    )
    residuals = []
    for o in found:
        for metric in LATENCIES:
            measured = _latency(o, metric)
            fit = calibration.latency_model(metric, o.group[0], o.group[1])
            if measured is None or fit is None:
                continue
            predicted = predict_latency(fit.model, o.features, metric)
            scenario, variant, batch, context, dtype, backend = o.key
            residuals.append(
                Residual(
                    file=o.file,
                    scenario=scenario,
                    variant=variant,
                    batch_size=batch,
                    context_len=context,
                    dtype=dtype,
                    backend=backend,
                    metric=metric,
                    measured_s=measured,
                    predicted_s=predicted,
                    error_fraction=predicted / measured - 1,
                )
            )
    return calibration.model_copy(update={"residuals": residuals})


def save_calibration(calibration: Calibration, path: Path) -> None:
    write_text_atomic(path, calibration.model_dump_json(indent=1) + "\n")


def load_calibration(path: Path) -> Calibration:
    """A calibration file, checked whole; UserError naming the file and field of each problem."""
    data = read_json(path, CALIBRATION_LIMIT_BYTES, "calibration file")
    try:
        return Calibration.model_validate(data)
    except ValidationError as exc:
        raise UserErrors(validation_problems(exc, str(path))) from None
