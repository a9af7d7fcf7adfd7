"""An independent float64 reference of the decoder: full-sequence attention over the whole history.

Written from the papers, not from harness/model: rotary embeddings as complex rotations (RoFormer,
eq. 34), RMSNorm, SwiGLU, and per layer K/V (or MLA's per-head keys and values decompressed from the
latent, DeepSeek-V2 eqs. 9-19) for every position, attended with an explicit mask: causal, and for a
windowed layer only the last ``window`` positions (Mistral 7B, §2). No cache, no ring buffer, no
absorption, no backend: what the harness computes incrementally must equal this.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from harness.model import Decoder

F64 = torch.float64


def rope64(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    """x [B, T, heads, d] with adjacent pairs rotated by position · theta^(-2i/d), as complex numbers."""
    d = x.shape[-1]
    freqs = theta ** (-torch.arange(0, d, 2, dtype=F64) / d)  # [d/2]
    angles = positions.to(F64)[:, None] * freqs[None, :]  # [T, d/2]
    z = torch.view_as_complex(x.to(F64).reshape(*x.shape[:-1], d // 2, 2).contiguous())  # [B, T, heads, d/2]
    turned = z * torch.polar(torch.ones_like(angles), angles)[None, :, None, :]
    return torch.view_as_real(turned).flatten(-2)  # [B, T, heads, d]


def rms64(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def mask64(n_tokens: int, window: int | None) -> Tensor:
    """[T, T]: query i sees key j iff j <= i, and for a window also j > i - window."""
    i = torch.arange(n_tokens)[:, None]
    j = torch.arange(n_tokens)[None, :]
    seen = j <= i
    return seen if window is None else seen & (j > i - window)


def attention64(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> Tensor:
    """softmax(q kᵀ · scale, masked) v with q [B, H, T, D], k [B, H, S, D], v [B, H, S, Dv], in float64."""
    scores = (q @ k.transpose(-2, -1)) * scale  # [B, H, T, S]
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v  # [B, H, T, Dv]


KVRoundTrip = Callable[[Tensor], Tensor]


def reference_logits(decoder: Decoder, tokens: Tensor, kv_roundtrip: KVRoundTrip | None = None) -> Tensor:
    """Logits [B, T, vocab] of ``decoder``'s weights over tokens [B, T], every position attending its history.

    ``kv_roundtrip`` maps each cached value (K, V, or MLA's latent entry) to what a cache would give
    back (for an 8-bit cache: quantise and dequantise); None keeps them exact.
    """
    spec, variant = decoder.spec, decoder.variant
    p = {name: t.detach().to(F64) for name, t in decoder.named_parameters()}
    n_tokens = tokens.shape[1]
    positions = torch.arange(n_tokens)
    keep: KVRoundTrip = kv_roundtrip or (lambda t: t)
    h = p["tok_embeddings.weight"][tokens]  # [B, T, d_model]
    produced: Produced = {}
    for layer in range(variant.n_layers):
        pre = f"layers.{layer}.attention."
        x = rms64(h, p[f"layers.{layer}.attention_norm.weight"], spec.norm_eps)
        mask = mask64(n_tokens, variant.windows[layer])
        if variant.mla is None:
            out = _gqa_layer(p, pre, x, positions, layer, mask, produced, decoder, keep)
        else:
            out = _mla_layer(p, pre, x, positions, layer, mask, produced, decoder, keep)
        h = h + out @ p[pre + "wo.weight"].T
        m = rms64(h, p[f"layers.{layer}.ffn_norm.weight"], spec.norm_eps)
        ff = f"layers.{layer}.feed_forward."
        gate = m @ p[ff + "w1.weight"].T
        h = h + (gate * torch.sigmoid(gate) * (m @ p[ff + "w3.weight"].T)) @ p[ff + "w2.weight"].T
    return rms64(h, p["norm.weight"], spec.norm_eps) @ p["output.weight"].T


Produced = dict[int, tuple[Tensor, Tensor]]  # producer layer -> what it caches (K and V; MLA: latent and rotary key)


def _gqa_layer(
    p: dict[str, Tensor],
    pre: str,
    x: Tensor,
    positions: Tensor,
    layer: int,
    mask: Tensor,
    produced: Produced,
    decoder: Decoder,
    keep: KVRoundTrip,
) -> Tensor:
    variant, theta = decoder.variant, decoder.spec.rope_theta
    batch_size, n_tokens, _ = x.shape
    hd, heads, kv_heads = variant.head_dim, variant.n_heads, variant.n_kv_heads
    q = rope64((x @ p[pre + "wq.weight"].T).view(batch_size, n_tokens, heads, hd), positions, theta)
    if variant.kv_layers[layer] == layer:
        k = rope64((x @ p[pre + "wk.weight"].T).view(batch_size, n_tokens, kv_heads, hd), positions, theta)
        v = (x @ p[pre + "wv.weight"].T).view(batch_size, n_tokens, kv_heads, hd)
        produced[layer] = (keep(k.transpose(1, 2)), keep(v.transpose(1, 2)))  # [B, kv_heads, T, hd]
    k, v = produced[variant.kv_layers[layer]]
    group = heads // kv_heads
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # [B, heads, T, hd]
    out = attention64(q.transpose(1, 2), k, v, mask, 1.0 / math.sqrt(hd))  # [B, heads, T, hd]
    return out.transpose(1, 2).reshape(batch_size, n_tokens, heads * hd)


def _mla_layer(
    p: dict[str, Tensor],
    pre: str,
    x: Tensor,
    positions: Tensor,
    layer: int,
    mask: Tensor,
    produced: Produced,
    decoder: Decoder,
    keep: KVRoundTrip,
) -> Tensor:
    variant, spec = decoder.variant, decoder.spec
    shape = variant.mla
    assert shape is not None
    batch_size, n_tokens, _ = x.shape
    heads, dn, dr, dv, dc = (
        variant.n_heads,
        shape.qk_nope_head_dim,
        shape.qk_rope_head_dim,
        shape.v_head_dim,
        shape.kv_lora_rank,
    )
    if shape.q_lora_rank is None:
        q = x @ p[pre + "wq.weight"].T
    else:
        q = rms64(x @ p[pre + "wq_a.weight"].T, p[pre + "q_norm.weight"], spec.norm_eps) @ p[pre + "wq_b.weight"].T
    q = q.view(batch_size, n_tokens, heads, dn + dr)
    q = torch.cat((q[..., :dn], rope64(q[..., dn:], positions, spec.rope_theta)), dim=-1)  # [B, T, heads, dn + dr]
    if variant.kv_layers[layer] == layer:
        kv = x @ p[pre + "wkv_a.weight"].T  # [B, T, dc + dr]
        c = rms64(kv[..., :dc], p[pre + "kv_norm.weight"], spec.norm_eps)
        k_rope = rope64(kv[..., dc:].view(batch_size, n_tokens, 1, dr), positions, spec.rope_theta)[:, :, 0]
        entry = keep(torch.cat((c, k_rope), dim=-1)[:, None])[:, 0]  # [B, T, dc + dr], as a cache gives it back
        produced[layer] = (entry[..., :dc], entry[..., dc:])
    c, k_rope = produced[variant.kv_layers[layer]]
    w = p[pre + "wkv_b.weight"].view(heads, dn + dv, dc)
    k_nope = torch.einsum("btc,hnc->bhtn", c, w[:, :dn])  # each head's W^UK c: [B, heads, T, dn]
    v = torch.einsum("btc,hvc->bhtv", c, w[:, dn:])  # each head's W^UV c: [B, heads, T, dv]
    k = torch.cat((k_nope, k_rope[:, None].expand(-1, heads, -1, -1)), dim=-1)  # [B, heads, T, dn + dr]
    out = attention64(q.transpose(1, 2), k, v, mask, 1.0 / math.sqrt(dn + dr))  # [B, heads, T, dv]
    return out.transpose(1, 2).reshape(batch_size, n_tokens, heads * dv)
