"""Is a backend's output right? Its core attention on the cell's own query and cache against a float64 reference.

Every measured cell, whatever its backend (a built-in, an adapter or a plugin), computes the last layer's
core attention once with that backend on the very query and cache it then times, and the same attention
in float64 in the textbook form: softmax(q kᵀ · scale) v (Vaswani et al. 2017, eq. 1), one sequence and
KV head at a time (no K/V repeated, a float8 cache dequantised with its scales, a ragged sequence's
positions past its length and a multi-token step's future positions masked, a chunked-prefill step's
chunk and decode tokens each over their own sequences). The check
``output_matches_reference`` fails where any element differs by more than the dtype's tolerance
(harness/measure/autotune.py's, relative to 1 + |reference|): a kernel that returns wrong numbers is a
failed check in the result, the report and the run's warnings, not a fast result.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from harness.backend_support import mla_forms
from harness.model.attention import causal_mask
from harness.model.chunked import PackedSlot
from harness.model.kvcache import LayerCache
from harness.model.paged import PagedVisible
from harness.model.quant import dequantize, is_fp8
from harness.results.schema import Check

if TYPE_CHECKING:
    from harness.model.decoder import Decoder, KVCache

OUTPUT_MATCHES_REFERENCE = "output_matches_reference"


def reference_float64(decoder: Decoder, q: Tensor, cache: KVCache, pos: int) -> Tensor:
    """The last layer's core attention for q (:meth:`Decoder.core_query_shape`) at position ``pos``, in float64:
    [B, n_heads, T, value width]; a chunked-prefill step's packed query part by part, as the decoder reads it."""
    layer = decoder.variant.n_layers - 1
    slot = cache.layer(layer)
    scale = decoder.softmax_scale(layer)
    if decoder.variant.chunk is not None:
        packed = PackedSlot.of(slot, decoder.variant.chunk)
        return packed.attend_parts(q.double(), lambda part, rows: _reference_slot(part, rows, pos, scale))
    return _reference_slot(q, slot, pos, scale)


def _reference_slot(q: Tensor, slot: LayerCache, pos: int, scale: float) -> Tensor:
    """softmax(q kᵀ · scale) v in float64 over what ``slot`` holds for the ``q.shape[2]`` tokens at ``pos``."""
    n_new = q.shape[2]
    visible = slot.visible(pos, n_new)
    if isinstance(visible, PagedVisible):
        visible = visible.gathered()  # the positions in order
    k, v = visible.k, visible.v
    if visible.mask is None:
        k, v = k[:, :, : visible.start_pos + n_new], v[:, :, : visible.start_pos + n_new]  # [B, kv, S, width]
    seen = visible.mask  # [T, S] or None
    if seen is None and n_new > 1:
        seen = causal_mask(visible.start_pos, n_new, q.device)
    batch_size, n_heads = q.shape[0], q.shape[1]
    group = n_heads // k.shape[1]
    out = torch.empty(batch_size, n_heads, n_new, v.shape[-1], dtype=torch.float64, device=q.device)
    for b in range(batch_size):
        for kv in range(k.shape[1]):
            keys = _float64(k[b : b + 1, kv : kv + 1], slot.k_scale, kv)[0, 0]  # [S, k_width]
            values = _float64(v[b : b + 1, kv : kv + 1], slot.v_scale, kv)[0, 0]  # [S, v_width]
            heads = slice(kv * group, (kv + 1) * group)
            scores = q[b, heads].double() @ keys.T * scale  # [group, T, S]
            if seen is not None:
                scores = scores.masked_fill(~seen, float("-inf"))
            if visible.lengths is not None:
                scores[..., int(visible.lengths[b]) :] = float("-inf")
            out[b, heads] = torch.softmax(scores, dim=-1) @ values  # [group, T, v_width]
    return out


def _float64(x: Tensor, scale: Tensor | None, kv_head: int) -> Tensor:
    """One KV head's slice [1, 1, S, width] in float64, a float8 one dequantised with its head's scale."""
    if scale is None or not is_fp8(x.dtype):
        return x.double()
    return dequantize(x, scale if scale.numel() == 1 else scale[kv_head : kv_head + 1], torch.float64)


def output_check(decoder: Decoder, q: Tensor, cache: KVCache, pos: int, tolerance: float) -> Check | None:
    """``output_matches_reference`` for the decoder's backend on this query and cache; None for MLA's naive form,
    whose query is not in the latent space the cache holds (it decompresses the latent itself)."""
    if decoder.backend in mla_forms():
        return None
    out = decoder.core_attention(q, cache, pos).double()  # the last layer's, as the backend computes it
    expected = reference_float64(decoder, q, cache, pos)
    difference = (out - expected).abs()
    allowed = tolerance * (1.0 + expected.abs())
    finite = bool(torch.isfinite(out).all())
    excess = (difference - allowed).max().item() if finite else math.inf
    worst = difference.max().item() if finite else math.nan
    detail = (
        f"{decoder.backend}: last layer's core attention against float64 on the cell's query and cache: largest "
        f"|output - reference| {worst:.3g}, allowed {tolerance:g} x (1 + |reference|)"
        + ("" if finite else "; the output holds NaN or infinity")
    )
    return Check(name=OUTPUT_MATCHES_REFERENCE, passed=finite and excess <= 0.0, detail=detail)
