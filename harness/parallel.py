"""Tensor-parallel layout of a variant: which query and K/V heads each of ``tp`` ranks holds. No torch.

Megatron-style tensor parallelism (Shoeybi et al. 2019, "Megatron-LM", §3): each rank holds
``n_heads / tp`` query heads with their slice of the query and output projections, ``d_ff / tp``
columns of the MLP, and the K/V heads its query heads read. When ``n_kv_heads >= tp`` the K/V heads
split evenly; when ``n_kv_heads < tp`` each rank needs one K/V head that other ranks hold too, so the
K/V heads are replicated, as serving engines do (vLLM's ``num_kv_heads // tp`` becomes 1 and
``tp // n_kv_heads`` ranks share each head). Either way a rank holds ceil(n_kv_heads / tp) K/V heads
per producer layer. MLA's latent is shared by all heads, so every rank holds it whole.

A rank's layout is itself a :class:`~harness.variants.Variant` (fewer heads, the same KV map, windows
and cache dtype), so the accounting of one rank is the accounting of that variant.
"""

from __future__ import annotations

import dataclasses
import math

from harness.scenario.schema import ModelSpec
from harness.variants import Variant


def tp_problem(model: ModelSpec, variant: Variant, tp: int) -> str | None:
    """Why ``variant`` cannot be split over ``tp`` ranks, or None if it can."""
    if tp < 1:
        return f"tp must be at least 1, got {tp}"
    if variant.n_heads % tp:
        return f"its {variant.n_heads} query heads do not split evenly over {tp} ranks"
    if model.d_ff % tp:
        return f"d_ff ({model.d_ff}) does not split evenly over {tp} ranks"
    if variant.lengths is not None and variant.lengths.ragged:
        return "a ragged batch (sweep.lengths) is not sharded: its ranks are built with one length for the batch"
    if variant.mla is None and variant.n_kv_heads % tp and tp % variant.n_kv_heads:
        return (
            f"its {variant.n_kv_heads} KV heads neither split over {tp} ranks nor replicate evenly "
            f"(tp must divide n_kv_heads or be a multiple of it)"
        )
    return None


def kv_heads_per_rank(variant: Variant, tp: int) -> int:
    """K/V heads one rank holds per producer layer: ceil(n_kv_heads / tp); MLA's one latent: 1."""
    return math.ceil(variant.n_kv_heads / tp)


def kv_replication(variant: Variant, tp: int) -> float:
    """K/V bytes held over all ranks over the unsharded model's: tp · ceil(n_kv_heads / tp) / n_kv_heads.

    1.0 while the K/V heads split evenly; MQA at tp 4 holds its one head on every rank: 4.0.
    """
    return tp * kv_heads_per_rank(variant, tp) / variant.n_kv_heads


def first_kv_head(variant: Variant, tp: int, rank: int) -> int:
    """The first K/V head ``rank`` holds. Query head h reads K/V head h // group_size, and rank r holds
    query heads r·n_heads/tp .. (r+1)·n_heads/tp - 1, so it needs K/V heads from (r·n_heads/tp) // group_size."""
    if variant.mla is not None:
        return 0
    return (rank * (variant.n_heads // tp)) // variant.group_size


def rank_variant(variant: Variant, tp: int) -> Variant:
    """What one rank holds, as a variant: n_heads / tp query heads, ceil(n_kv_heads / tp) K/V heads,
    the same head width, KV map, windows and cache dtype."""
    return dataclasses.replace(
        variant,
        name=f"{variant.name} (1 of {tp} ranks)",
        n_heads=variant.n_heads // tp,
        n_kv_heads=kv_heads_per_rank(variant, tp),
    )


def rank_model(model: ModelSpec, tp: int) -> ModelSpec:
    """The stack one rank holds: d_ff / tp MLP columns; embedding, norms and LM head whole (replicated)."""
    return model.model_copy(update={"d_ff": model.d_ff // tp})
