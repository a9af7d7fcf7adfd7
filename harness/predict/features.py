"""What the cost model reads of a cell: its accounted bytes, FLOPs and memory, and what was measured of it.

:func:`cell_features` takes a cell's coordinates straight from a scenario; :func:`observations` takes
them back out of a result file (the variant rebuilt from the fields every cell records), with the
latencies, peaks and max batch measured there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from harness import accounting
from harness.backend_support import kernel_memory
from harness.backends.spec import KernelMemory
from harness.results.schema import CellResult, RunResult
from harness.scenario.schema import ModelSpec
from harness.variants import MLAShape, Variant

# A cell's identity across runs: scenario, variant, batch size, context length, dtype, backend as asked.
CellKey = tuple[str, str, int, int, str, str]


@dataclass(frozen=True)
class CellFeatures:
    """The accounting of one cell (harness/accounting.py), as the cost model needs it."""

    n_layers: int
    batch_size: int
    bytes_per_step: int  # accounting.bytes_per_step
    flops_per_step: int  # accounting.flops_per_step
    attention_bytes_per_step: int  # accounting.attention_bytes_per_step
    attention_flops_per_step: int  # accounting.attention_flops_per_step
    static_bytes: int  # weights, an 8-bit cache's scales and a fixed workspace: what no batch size changes
    bytes_per_sequence: int  # accounting.bytes_per_sequence: cache and activations one more sequence takes


def cell_features(
    model: ModelSpec,
    variant: Variant,
    dtype: str,
    batch_size: int,
    context_len: int,
    workspace_bytes: int = 0,
    kernel: KernelMemory | None = None,
) -> CellFeatures:
    """The accounting of one cell; ``kernel``: what its backend's attention holds (harness/backends/spec.py)."""
    return CellFeatures(
        n_layers=model.n_layers,
        batch_size=batch_size,
        bytes_per_step=accounting.bytes_per_step(model, variant, dtype, batch_size, context_len),
        flops_per_step=accounting.flops_per_step(model, variant, batch_size, context_len),
        attention_bytes_per_step=accounting.attention_bytes_per_step(variant, dtype, batch_size, context_len),
        attention_flops_per_step=accounting.attention_flops_per_step(variant, batch_size, context_len),
        static_bytes=accounting.weight_bytes(model, variant, dtype)
        + accounting.kv_scale_bytes(variant)
        + workspace_bytes,
        bytes_per_sequence=accounting.bytes_per_sequence(model, variant, dtype, context_len, kernel),
    )


def variant_of(cell: CellResult) -> Variant:
    """The variant a result cell measured, from the shape fields it records (its cache layout and step too; a
    ragged batch's lengths are not rebuilt: :func:`observations` leaves ragged cells out)."""
    return Variant(
        name=cell.variant,
        head_dim=cell.head_dim,
        n_heads=cell.n_heads,
        n_kv_heads=cell.n_kv_heads,
        kv_layers=tuple(cell.kv_layers),
        layer_windows=tuple(cell.layer_windows or ()),
        kv_dtype=cell.kv_dtype,
        kv_scale=cell.kv_scale or "tensor",
        mla=MLAShape(**cell.mla) if cell.mla else None,  # type: ignore[arg-type]
        page_size=cell.page_size,
        q_len=cell.q_len or 1,
        prefill=bool(cell.prefill),
        chunk=cell.chunk,
    )


@dataclass(frozen=True)
class Observation:
    """One measured cell of one result file, with its accounting."""

    file: str  # the result file's name
    key: CellKey
    group: tuple[str, str]  # (dtype, backend that ran): cells whose effective figures may be shared
    features: CellFeatures
    decode_latency_s: float | None  # warm median
    attention_latency_s: float | None  # warm median
    memory_points: tuple[tuple[int, int], ...]  # (batch size, peak bytes): the cell's own and its max-batch probes
    budget_bytes: int | None  # the max-batch budget, when searched
    max_batch_measured: int | None


def _memory_points(cell: CellResult) -> tuple[tuple[int, int], ...]:
    metrics = cell.metrics
    assert metrics is not None
    points = []
    if metrics.peak_memory_bytes:
        points.append((cell.batch_size, metrics.peak_memory_bytes))
    if metrics.max_batch is not None:
        for probe in metrics.max_batch.probes:
            batch, peak = probe.get("batch_size"), probe.get("peak_bytes")
            if isinstance(batch, int) and isinstance(peak, int) and batch > 0 and peak > 0:
                points.append((batch, peak))
    return tuple(points)


def observations(result: RunResult, path: Path) -> list[Observation]:
    """Every measured cell of ``result`` that the model may learn from: ``ok``, its self-checks passed, a uniform
    batch (a ragged one's accounting needs its lengths, which a cell records but not as a mix)."""
    try:
        model = ModelSpec.model_validate(result.scenario.model)
    except ValidationError:  # a file whose model table this version does not know: nothing to learn from
        return []
    workspace = accounting.fixed_workspace_bytes(result.environment)
    device = "cuda" if result.environment.get("device") == "cuda" else "cpu"
    out = []
    for cell in result.cells:
        metrics = cell.metrics
        if cell.status != "ok" or metrics is None or cell.checks_failed or cell.length_mix is not None:
            continue
        try:
            variant = variant_of(cell)
        except (TypeError, ValueError):  # a shape this version cannot rebuild: nothing to learn from
            continue
        kernel = kernel_memory(cell.backend_used or cell.backend, device)
        features = cell_features(model, variant, cell.dtype, cell.batch_size, cell.context_len, workspace, kernel)
        max_batch = metrics.max_batch
        out.append(
            Observation(
                file=path.name,
                key=(result.scenario.name, cell.variant, cell.batch_size, cell.context_len, cell.dtype, cell.backend),
                group=(cell.dtype, cell.backend_used or cell.backend),
                features=features,
                decode_latency_s=metrics.decode_latency_s.median if metrics.decode_latency_s else None,
                attention_latency_s=metrics.attention_latency_s.median if metrics.attention_latency_s else None,
                memory_points=_memory_points(cell),
                budget_bytes=max_batch.budget_bytes if max_batch is not None else None,
                max_batch_measured=max_batch.measured if max_batch is not None else None,
            )
        )
    return out
