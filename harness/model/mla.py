"""Multi-head latent attention (DeepSeek-AI 2024, "DeepSeek-V2", arXiv 2405.04434, §2.1).

Per token, a producer layer caches one latent c^KV = RMSNorm(W^DKV h) of width d_c and one rotary
key k^R = RoPE(W^KR h) of width d_h^R, both shared by all heads (eqs. 9 and 14). Head i's key is
[W^UK_i c^KV; k^R] and its value W^UV_i c^KV (eqs. 10, 11, 16); its query is [q^C_i; RoPE(q^R_i)],
from the hidden state, or through a compressed query c^Q = RMSNorm(W^DQ h) of width d_c' (eqs. 12,
13, 15). Scores scale by 1/sqrt(d_h + d_h^R) (eq. 18), and u = W^O [o_1; ...; o_n] (eq. 19).

Two forms of the same attention:

- absorbed (every backend but ``naive``): W^UK is folded into the query, q̃_i = W^UK_iᵀ q^C_i, so
  head i scores [q̃_i; q^R_i] · [c_j; k^R_j]; the heads attend over the latent as one shared KV head
  (MQA with keys of width d_c + d_h^R and values the latent's first d_c columns), and W^UV is applied
  to each head's output afterwards. A decode step reads the latent cache once (§2.1.2).
- ``naive``: every step decompresses the cached latent into per-head K and V (n_heads · (d_h + d_h^R)
  and n_heads · d_v wide per position) and runs standard attention over them with sdpa: what the
  cache saves in memory, this form spends again in compute and traffic every step.

CLA (Brandon et al. 2024, arXiv 2405.12981) combines as for K/V: a consumer layer has no W^DKV, W^KR
or latent norm and reads its producer's latent; it keeps its own query, W^UK, W^UV and W^O.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from harness.model.attention import attend_visible
from harness.model.chunked import PackedSlot
from harness.model.kvcache import LayerCache, Visible
from harness.model.layers import RMSNorm, Rotation, apply_rope
from harness.model.paged import PagedVisible
from harness.model.quant import dequantize
from harness.variants import MLAShape, Variant

NAIVE_ATTENTION_BACKEND = "sdpa"  # what the naive form runs over its decompressed K and V


class LatentAttention(nn.Module):
    """One layer's MLA: projections, and the cache writes and reads of the absorbed and naive forms."""

    def __init__(self, d_model: int, variant: Variant, *, produces_kv: bool, norm_eps: float) -> None:
        super().__init__()
        assert variant.mla is not None
        shape: MLAShape = variant.mla
        self.shape = shape
        self.n_heads = variant.n_heads
        self.softmax_scale = 1.0 / math.sqrt(shape.qk_nope_head_dim + shape.qk_rope_head_dim)  # eq. 18
        qk_width = variant.n_heads * (shape.qk_nope_head_dim + shape.qk_rope_head_dim)
        self.wq: nn.Linear | None = None
        self.wq_a: nn.Linear | None = None
        self.q_norm: RMSNorm | None = None
        self.wq_b: nn.Linear | None = None
        if shape.q_lora_rank is None:
            self.wq = nn.Linear(d_model, qk_width, bias=False)  # W^UQ and W^QR from h directly
        else:
            self.wq_a = nn.Linear(d_model, shape.q_lora_rank, bias=False)  # W^DQ
            self.q_norm = RMSNorm(shape.q_lora_rank, norm_eps)
            self.wq_b = nn.Linear(shape.q_lora_rank, qk_width, bias=False)  # W^UQ and W^QR
        self.wkv_a: nn.Linear | None = None
        self.kv_norm: RMSNorm | None = None
        if produces_kv:
            self.wkv_a = nn.Linear(d_model, shape.latent_width, bias=False)  # W^DKV and W^KR
            self.kv_norm = RMSNorm(shape.kv_lora_rank, norm_eps)
        # W^UK and W^UV, head by head: output rows h·(d_h + d_v) .. (h+1)·(d_h + d_v)
        self.wkv_b = nn.Linear(
            shape.kv_lora_rank, variant.n_heads * (shape.qk_nope_head_dim + shape.v_head_dim), bias=False
        )
        self.wo = nn.Linear(variant.n_heads * shape.v_head_dim, d_model, bias=False)

    def _query(self, x: Tensor, rotation: Rotation) -> tuple[Tensor, Tensor]:
        """q^C [B, T, n_heads, d_h] and RoPE(q^R) [B, T, n_heads, d_h^R]."""
        batch_size, n_new, _ = x.shape
        if self.wq is not None:
            q = self.wq(x)
        else:
            assert self.wq_a is not None and self.q_norm is not None and self.wq_b is not None
            q = self.wq_b(self.q_norm(self.wq_a(x)))
        q = q.view(batch_size, n_new, self.n_heads, -1)  # [B, T, n_heads, d_h + d_h^R]
        q_nope, q_rope = q.split([self.shape.qk_nope_head_dim, self.shape.qk_rope_head_dim], dim=-1)
        return q_nope, apply_rope(q_rope, rotation)

    def latent(self, x: Tensor, rotation: Rotation) -> Tensor:
        """The cache entries of new tokens x [B, T, d_model]: [c^KV; k^R] as [B, 1, T, d_c + d_h^R]."""
        assert self.wkv_a is not None and self.kv_norm is not None
        batch_size, n_new, _ = x.shape
        compressed, rope = self.wkv_a(x).split([self.shape.kv_lora_rank, self.shape.qk_rope_head_dim], dim=-1)
        k_rope = apply_rope(rope.view(batch_size, n_new, 1, -1), rotation)  # [B, T, 1, d_h^R]
        entry = torch.cat((self.kv_norm(compressed), k_rope.view(batch_size, n_new, -1)), dim=-1)  # [B, T, d_c + d_h^R]
        return entry.unsqueeze(1)  # [B, 1, T, d_c + d_h^R]

    def _up_projections(self) -> tuple[Tensor, Tensor]:
        """W^UK [n_heads, d_h, d_c] and W^UV [n_heads, d_v, d_c], views of wkv_b's weight."""
        weight = self.wkv_b.weight.view(self.n_heads, -1, self.shape.kv_lora_rank)  # [n_heads, d_h + d_v, d_c]
        return weight[:, : self.shape.qk_nope_head_dim], weight[:, self.shape.qk_nope_head_dim :]

    def absorbed_query(self, q_nope: Tensor, q_rope: Tensor) -> Tensor:
        """[W^UK_iᵀ q^C_i; q^R_i] per head, [B, n_heads, T, d_c + d_h^R], from q^C [B, T, n_heads, d_h] and q^R."""
        w_uk, _ = self._up_projections()
        q_latent = torch.einsum("bthn,hnc->bhtc", q_nope, w_uk)  # [B, n_heads, T, d_c]
        return torch.cat((q_latent, q_rope.transpose(1, 2)), dim=-1)  # [B, n_heads, T, d_c + d_h^R]

    def decompress(self, latent: Tensor, slot: LayerCache) -> tuple[Tensor, Tensor]:
        """Per-head K [B, n_heads, S, d_h + d_h^R] and V [B, n_heads, S, d_v] from latents [B, 1, S, d_c + d_h^R]."""
        if slot.k_scale is not None:
            latent = dequantize(latent, slot.k_scale, self.wkv_b.weight.dtype)
        batch_size, _, n_pos, _ = latent.shape
        compressed, k_rope = latent[:, 0].split([self.shape.kv_lora_rank, self.shape.qk_rope_head_dim], dim=-1)
        kv = self.wkv_b(compressed).view(batch_size, n_pos, self.n_heads, -1)  # [B, S, n_heads, d_h + d_v]
        k_nope, v = kv.split([self.shape.qk_nope_head_dim, self.shape.v_head_dim], dim=-1)
        k_rope = k_rope[:, :, None, :].expand(-1, -1, self.n_heads, -1)  # [B, S, n_heads, d_h^R], shared by all heads
        k = torch.cat((k_nope, k_rope), dim=-1).transpose(1, 2)  # [B, n_heads, S, d_h + d_h^R]
        return k, v.transpose(1, 2)  # v: [B, n_heads, S, d_v]

    def attend_cache(self, q: Tensor, slot: LayerCache, start_pos: int, backend: str) -> Tensor:
        """The part of a step that reads the cache, per form, for queries at positions start_pos ...

        absorbed: q [B, n_heads, T, d_c + d_h^R] -> latent-space output [B, n_heads, T, d_c];
        naive: q [B, n_heads, T, d_h + d_h^R] -> [B, n_heads, T, d_v].
        """
        if isinstance(slot, PackedSlot):  # a chunked-prefill step: part by part
            return slot.attend_parts(q, lambda part, rows: self.attend_cache(part, rows, start_pos, backend))
        visible = slot.visible(start_pos, q.shape[2])
        if backend != "naive":
            return attend_visible(q, visible, slot, backend=backend, scale=self.softmax_scale)
        if isinstance(visible, PagedVisible):
            visible = visible.gathered()  # the latent's positions out of their pages, then decompressed
        n_read = visible.k.shape[2] if visible.mask is not None else visible.start_pos + q.shape[2]
        k, v = self.decompress(visible.k[:, :, :n_read], slot)
        plain = LayerCache(k, v, slot.window)  # decompressed: no float8 left to dequantise
        decompressed = Visible(k, v, visible.start_pos, visible.mask)
        return attend_visible(q, decompressed, plain, backend=NAIVE_ATTENTION_BACKEND)

    def forward(self, x: Tensor, rotation: Rotation, slot: LayerCache, start_pos: int, backend: str) -> Tensor:
        batch_size, n_new, _ = x.shape
        q_nope, q_rope = self._query(x, rotation)
        if self.wkv_a is not None:
            slot.store(self.latent(x, rotation), None, start_pos)
        if backend == "naive":
            q = torch.cat((q_nope, q_rope), dim=-1).transpose(1, 2)  # [B, n_heads, T, d_h + d_h^R]
            out = self.attend_cache(q, slot, start_pos, backend)  # [B, n_heads, T, d_v]
            out = out.transpose(1, 2)  # [B, T, n_heads, d_v]
        else:
            q = self.absorbed_query(q_nope, q_rope)
            out_latent = self.attend_cache(q, slot, start_pos, backend)  # [B, n_heads, T, d_c]
            _, w_uv = self._up_projections()
            out = torch.einsum("bhtc,hvc->bthv", out_latent, w_uv)  # [B, T, n_heads, d_v]
        return self.wo(out.reshape(batch_size, n_new, -1))  # [B, T, d_model]

    def core_query_width(self, backend: str) -> int:
        """Width of the query :meth:`attend_cache` takes in this form."""
        if backend == "naive":
            return self.shape.qk_nope_head_dim + self.shape.qk_rope_head_dim
        return self.shape.latent_width
