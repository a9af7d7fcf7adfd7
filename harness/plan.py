"""The accounting of a scenario, per variant and per cell, as plain data (``attnbench plan``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from harness import accounting
from harness.backend_support import kernel_memory, unsupported_reason
from harness.parallel import kv_heads_per_rank, kv_replication, rank_variant, tp_problem
from harness.scenario import LoadedScenario, expand_cells
from harness.scenario.schema import ModelSpec
from harness.variants import Variant


def kv_at_contexts(variant: Variant, dtype: str, contexts: list[int]) -> list[dict[str, Any]]:
    """Per context: the cache bytes one sequence holds (windows counted) and what that is per cached token."""
    out = []
    for context in contexts:
        per_sequence = accounting.kv_bytes_per_sequence(variant, dtype, context)
        out.append(
            {
                "context_len": context,
                "kv_bytes_per_sequence": per_sequence,
                "kv_bytes_per_token": per_sequence / accounting.cache_len(context),
            }
        )
    return out


def tp_layouts(model: ModelSpec, variant: Variant, degrees: list[int]) -> list[dict[str, Any]]:
    """Per tensor-parallel degree of the sweep (none for the default [1]): the K/V heads one rank holds, the
    cache bytes one token adds on one rank, the replication over ranks, or why the variant does not split."""
    if degrees == [1]:
        return []
    out = []
    for tp in degrees:
        problem = tp_problem(model, variant, tp)
        per_rank = None if problem else accounting.kv_bytes_per_token(rank_variant(variant, tp), model.dtype)
        out.append(
            {
                "tp": tp,
                "kv_heads_per_rank": kv_heads_per_rank(variant, tp),
                "kv_bytes_per_token_per_rank": per_rank,
                "kv_replication": None if problem else kv_replication(variant, tp),
                "problem": problem,
            }
        )
    return out


def plan(loaded: LoadedScenario) -> dict[str, Any]:
    """``{"scenario", "variants": [...], "cells": [...]}`` with every accounted figure."""
    scenario = loaded.scenario
    model = scenario.model
    budget = scenario.measure.memory_budget
    variants = []
    for v in loaded.variants:
        params = accounting.param_counts(model, v)
        variants.append(
            {
                "name": v.name,
                "spelling": v.describe(),
                "n_heads": v.n_heads,
                "n_kv_heads": v.n_kv_heads,
                "head_dim": v.head_dim,
                "n_kv_layers": v.n_kv_layers,
                "kv_layers": list(v.kv_layers),
                "attention": v.attention,
                "layer_windows": list(v.windows),
                "kv_dtype": v.kv_dtype,
                "kv_scale": v.kv_scale if v.kv_dtype is not None else None,
                "mla": dataclasses.asdict(v.mla) if v.mla is not None else None,
                "kv_bytes_per_token": accounting.kv_bytes_per_token(v, model.dtype),
                "kv_scale_bytes": accounting.kv_scale_bytes(v),
                "kv_at_context": kv_at_contexts(v, model.dtype, scenario.sweep.context_len),
                "params_total": params.total,
                "params_attention": params.attention,
                "params_kv_projection": params.kv_projection,
                "tp": tp_layouts(model, v, scenario.sweep.tp),
            }
        )
    cells = []
    for cell in expand_cells(scenario, loaded.variants):
        v, b, ctx, dt = cell.variant, cell.batch_size, cell.context_len, cell.dtype
        cells.append(
            {
                "variant": v.name,
                "batch_size": b,
                "context_len": ctx,
                "dtype": dt,
                "backend": cell.backend,
                "kv_bytes_per_token": accounting.kv_bytes_per_token(v, dt),
                "kv_bytes_per_sequence": accounting.kv_bytes_per_sequence(v, dt, ctx),
                "kv_cache_bytes": accounting.kv_cache_bytes(v, dt, b, ctx),
                "weight_bytes": accounting.weight_bytes(model, v, dt),
                "bytes_per_step": accounting.bytes_per_step(model, v, dt, b, ctx),
                "attention_bytes_per_step": accounting.attention_bytes_per_step(v, dt, b, ctx),
                "flops_per_step": accounting.flops_per_step(model, v, b, ctx),
                "predicted_max_batch": (
                    accounting.predicted_max_batch(model, v, dt, ctx, budget, kernel=kernel_memory(cell.backend, None))
                    if budget is not None
                    else None
                ),
                "unsupported": unsupported_reason(cell.backend, v),
            }
        )
    return {
        "scenario": scenario.name,
        "memory_budget_bytes": budget,
        "model": scenario.model.model_dump(),
        "variants": variants,
        "cells": cells,
    }
