"""Exact accounting of parameters, KV-cache bytes, traffic and FLOPs. Pure functions, no torch.

The model is the Llama-style stack of harness/model/decoder.py: token embedding, per layer
RMSNorm -> attention -> RMSNorm -> SwiGLU MLP, a final RMSNorm and an untied LM head, no biases.
Definitions follow docs/design.md; each formula names its source.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.scenario.schema import ModelSpec
from harness.units import DTYPE_BYTES
from harness.variants import Variant

# A decode step writes one new token per sequence, so the cache holds context_len + 1 positions.
DECODE_TOKENS = 1


def cache_len(context_len: int) -> int:
    """Positions the static KV cache is allocated for: the context plus the decoded token."""
    return context_len + DECODE_TOKENS


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of one variant's decoder stack."""

    embedding: int  # vocab_size x d_model token embedding
    attention: int  # all Q, K, V and output projections
    kv_projection: int  # the K and V projections alone (producer layers only)
    mlp: int  # SwiGLU gate, up and down projections
    norms: int  # RMSNorm weights (2 per layer + final)
    lm_head: int  # d_model x vocab_size output projection (untied)

    @property
    def total(self) -> int:
        return self.embedding + self.attention + self.mlp + self.norms + self.lm_head

    @property
    def matmul(self) -> int:
        """Parameters used in a matrix multiply per token (all but embedding and norms)."""
        return self.attention + self.mlp + self.lm_head


def param_counts(model: ModelSpec, variant: Variant) -> ParamCounts:
    """Count parameters; CLA consumers have no K/V projection (paper §2.2, arXiv 2405.12981)."""
    q_width = variant.n_heads * variant.head_dim
    kv_width = variant.n_kv_heads * variant.head_dim
    kv_projection = variant.n_kv_layers * 2 * model.d_model * kv_width
    q_and_out = model.n_layers * 2 * model.d_model * q_width
    return ParamCounts(
        embedding=model.vocab_size * model.d_model,
        attention=q_and_out + kv_projection,
        kv_projection=kv_projection,
        mlp=model.n_layers * 3 * model.d_model * model.d_ff,
        norms=(2 * model.n_layers + 1) * model.d_model,
        lm_head=model.d_model * model.vocab_size,
    )


def weight_bytes(model: ModelSpec, variant: Variant, dtype: str) -> int:
    """Bytes of all parameters at ``dtype``."""
    return param_counts(model, variant).total * DTYPE_BYTES[dtype]


def kv_bytes_per_token(variant: Variant, dtype: str) -> int:
    """2 · P · n_kv_heads · head_dim · bytes(dtype), P = producer layers (docs/design.md; paper §2)."""
    return 2 * variant.n_kv_layers * variant.n_kv_heads * variant.head_dim * DTYPE_BYTES[dtype]


def kv_cache_bytes(variant: Variant, dtype: str, batch_size: int, context_len: int) -> int:
    """kv_bytes_per_token · batch_size · cache_len: what the static cache allocates."""
    return kv_bytes_per_token(variant, dtype) * batch_size * cache_len(context_len)


def attention_bytes_per_step(variant: Variant, dtype: str, batch_size: int, context_len: int) -> int:
    """Bytes core attention reads and writes in one decode step, over all L layers.

    Every attention layer reads its producer's K and V for all cache_len positions: CLA consumers
    re-read the producer's cache, so CLA does not cut this traffic while GQA/MQA do (paper §2.3).
    Plus each layer's query read and output write.
    """
    width = DTYPE_BYTES[dtype]
    kv_read = variant.n_layers * batch_size * cache_len(context_len) * 2 * variant.n_kv_heads * variant.head_dim * width
    q_and_out = variant.n_layers * batch_size * 2 * variant.n_heads * variant.head_dim * width
    return kv_read + q_and_out


def bytes_per_step(model: ModelSpec, variant: Variant, dtype: str, batch_size: int, context_len: int) -> int:
    """Ideal memory traffic of one decode step (docs/design.md, "Bytes moved per step").

    Every weight read once (the embedding table only for the batch_size rows looked up), the KV
    cache read by every one of the L attention layers, and the new token's K/V written by the P
    producers. Activations are left out: they are small next to weights and cache and mostly stay
    in on-chip caches. This is the numerator of achieved bandwidth, as in gpt-fast's
    ``model_size * tokens/s``.
    """
    width = DTYPE_BYTES[dtype]
    params = param_counts(model, variant)
    weights = (params.total - params.embedding + min(batch_size, model.vocab_size) * model.d_model) * width
    kv_read = variant.n_layers * batch_size * cache_len(context_len) * 2 * variant.n_kv_heads * variant.head_dim * width
    kv_written = kv_bytes_per_token(variant, dtype) * batch_size
    return weights + kv_read + kv_written


def flops_per_step(model: ModelSpec, variant: Variant, batch_size: int, context_len: int) -> int:
    """FLOPs of one decode step: 2 per matmul parameter per token (Kaplan et al. 2020, §2.1),
    plus attention's QK^T and PV over cache_len positions, 2 · 2 · n_heads · head_dim per position
    per layer (Chowdhery et al. 2022, PaLM, appendix B)."""
    params = param_counts(model, variant)
    attention = 4 * variant.n_layers * variant.n_heads * variant.head_dim * cache_len(context_len)
    return batch_size * (2 * params.matmul + attention)


def activation_bytes_per_sequence(model: ModelSpec, variant: Variant, dtype: str, context_len: int) -> int:
    """Transient memory one sequence needs during a decode step, beside weights and cache.

    The largest live tensors of the step: the logits row, the SwiGLU hidden (gate and up), and one
    layer's attention scores (kept in float32), plus residual, normed and projected vectors.
    """
    width = DTYPE_BYTES[dtype]
    q_width = variant.n_heads * variant.head_dim
    return (
        model.vocab_size * width
        + 3 * model.d_ff * width
        + variant.n_heads * cache_len(context_len) * 4
        + (4 * model.d_model + 2 * q_width) * width
    )


def predicted_max_batch(model: ModelSpec, variant: Variant, dtype: str, context_len: int, budget_bytes: int) -> int:
    """Largest batch the budget should hold (docs/design.md, "Max batch under a budget"):

    floor((budget - weights) / (kv_bytes_per_token · cache_len + activations per sequence)),
    i.e. the design's formula with the workspace taken as the per-sequence activations. 0 when
    even the weights do not fit.
    """
    free = budget_bytes - weight_bytes(model, variant, dtype)
    per_sequence = kv_bytes_per_token(variant, dtype) * cache_len(context_len) + activation_bytes_per_sequence(
        model, variant, dtype, context_len
    )
    return max(0, free // per_sequence)
