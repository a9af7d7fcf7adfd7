"""Ranking a design space by the cost model, without measuring (``attnbench explore``).

The space is the scenario's variants, plus, where asked, every layout the CLA paper's names spell for the
scenario's head dims: n_kv_heads from 1 (MQA) through each divisor of n_heads to n_heads (MHA), crossed
with sharing factors 1 to 4 (CLA); all crossed with batch sizes, contexts, dtypes and backends. Each
configuration is predicted, those whose predicted peak exceeds the memory budget dropped, and the rest
ranked by the objective. The frontier, per context length, is what no other configuration beats on both
counts: KV bytes per token (what a layout keeps of the attention state, the x axis of the CLA paper's
Figure 1) and the objective. A layout that keeps less KV must be faster to be worth it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from harness import accounting
from harness.backend_support import kernel_memory
from harness.predict.features import cell_features
from harness.predict.predictor import TargetModel
from harness.scenario import Cell, LoadedScenario
from harness.scenario.schema import ModelSpec
from harness.variants import Variant, parse_paper_name

# objective: (what it reads of a candidate, whether larger is better)
OBJECTIVES = {
    "throughput": "tokens per second: batch_size / predicted decode latency (larger is better)",
    "latency": "predicted decode-step latency (smaller is better)",
    "max-batch": "the largest batch the budget holds at the cell's context (larger is better)",
}
SHARING_FACTORS = (1, 2, 3, 4)


@dataclass(frozen=True)
class Candidate:
    cell: Cell
    kv_bytes_per_token: int
    decode_latency_s: float
    peak_memory_bytes: int
    max_batch: int
    bound: str  # memory | compute

    @property
    def tokens_per_s(self) -> float:
        return self.cell.batch_size / self.decode_latency_s

    def score(self, objective: str) -> float:
        """The objective as a number to maximise."""
        if objective == "throughput":
            return self.tokens_per_s
        if objective == "latency":
            return -self.decode_latency_s
        return float(self.max_batch)


def paper_name(head_dim: int, n_heads: int, n_kv_heads: int, sharing: int) -> str:
    """``H64-GQA2-CLA2``: MHA when every head has its own K/V, MQA with one, GQA<g> between."""
    kind = "MHA" if n_kv_heads == n_heads else "MQA" if n_kv_heads == 1 else f"GQA{n_kv_heads}"
    return f"H{head_dim}-{kind}" + (f"-CLA{sharing}" if sharing > 1 else "")


def generated_variants(model: ModelSpec, head_dims: Sequence[int]) -> list[Variant]:
    """Every MHA/GQA/MQA layout with CLA sharing 1-4 at these head dims (paper names, resolved as a scenario would)."""
    from harness.scenario.load import resolve_variant
    from harness.scenario.schema import VariantSpec

    out = []
    for head_dim in head_dims:
        n_heads = model.d_model // head_dim
        if n_heads < 1:
            continue
        kv_heads = [g for g in range(1, n_heads + 1) if n_heads % g == 0]
        for g, sharing in itertools.product(kv_heads, SHARING_FACTORS):
            if sharing > model.n_layers:
                continue
            name = paper_name(head_dim, n_heads, g, sharing)
            assert parse_paper_name(name) is not None
            out.append(resolve_variant(VariantSpec(name=name), model))
    return out


def _shape(v: Variant) -> tuple[object, ...]:
    return (v.head_dim, v.n_heads, v.n_kv_heads, v.kv_layers, v.windows, v.kv_dtype, v.kv_scale, v.mla)


def design_space(
    loaded: LoadedScenario,
    *,
    generate: bool,
    batch_sizes: Sequence[int] | None = None,
    contexts: Sequence[int] | None = None,
) -> list[Cell]:
    """The scenario's cells, with generated layouts (one per shape: the scenario's own name wins) and other
    batch sizes and contexts where given."""
    scenario = loaded.scenario
    variants = list(loaded.variants)
    if generate:
        seen = {_shape(v) for v in variants}
        head_dims = sorted({v.head_dim for v in loaded.variants if v.mla is None})
        for v in generated_variants(scenario.model, head_dims):
            if _shape(v) not in seen:
                seen.add(_shape(v))
                variants.append(v)
    dtypes = scenario.sweep.dtype or [scenario.model.dtype]
    return [
        Cell(v, batch, context, dtype, backend)
        for v, dtype, backend, context, batch in itertools.product(
            variants,
            dtypes,
            scenario.sweep.backend,
            contexts or scenario.sweep.context_len,
            batch_sizes or scenario.sweep.batch_size,
        )
    ]


def rank(
    loaded: LoadedScenario, cells: Sequence[Cell], model: TargetModel, budget_bytes: int, objective: str
) -> list[Candidate]:
    """Every cell whose predicted peak fits the budget, best first by ``objective``."""
    scenario = loaded.scenario
    out = []
    for cell in cells:
        kernel = kernel_memory(cell.backend, None)
        features = cell_features(
            scenario.model, cell.variant, cell.dtype, cell.batch_size, cell.context_len, model.workspace_bytes, kernel
        )
        backend = None if cell.backend == "auto" else cell.backend
        decode = model.latency_model("decode", cell.dtype, backend)
        if decode is None:
            continue
        memory = model.memory
        peak = memory.peak_bytes(features.static_bytes, features.bytes_per_sequence, cell.batch_size)
        if peak > budget_bytes:
            continue
        out.append(
            Candidate(
                cell=cell,
                kv_bytes_per_token=accounting.kv_bytes_per_token(cell.variant, cell.dtype),
                decode_latency_s=decode.latency_s(features.bytes_per_step, features.flops_per_step, features.n_layers),
                peak_memory_bytes=round(peak),
                max_batch=memory.max_batch(budget_bytes, features.static_bytes, features.bytes_per_sequence),
                bound=decode.bound(features.bytes_per_step, features.flops_per_step),
            )
        )
    return sorted(out, key=lambda c: -c.score(objective))


def frontier(ranked: Sequence[Candidate], objective: str) -> list[Candidate]:
    """Per context length, the candidates no other beats on both KV bytes per token (more kept is better) and
    the objective: walking from the most KV kept to the least, each that improves on all before it."""
    out = []
    for context in sorted({c.cell.context_len for c in ranked}):
        at = sorted(
            (c for c in ranked if c.cell.context_len == context),
            key=lambda c: (-c.kv_bytes_per_token, -c.score(objective)),
        )
        best: float | None = None
        for candidate in at:
            if best is None or candidate.score(objective) > best:
                out.append(candidate)
                best = candidate.score(objective)
    return out
