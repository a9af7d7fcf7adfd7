"""Kernels of the production decode libraries under attnbench's kernel contract (docs/backends.md).

Each imports its library on first call, inside the measuring worker, and only where its spec
(harness/backends/adapters.py) found the package installed. The cache stays where it is: each adapter
hands the library a view of attnbench's [B, n_kv_heads, S, width] cache in the layout the library reads,
never a copy, so that the timed step reads the cache once, as the library would in a server.

- FlashInfer ``single_decode_with_kv_cache``: q [n_heads, head_dim] and one sequence's K, V in the
  "HND" layout [n_kv_heads, kv_len, head_dim]; one call per sequence.
- FlashInfer ``BatchMLAPagedAttentionWrapper``: planned once per shape (its plan reads the lengths on the
  host, so it happens on the first call, outside timed and captured steps), then ``run`` with the
  absorbed query split into q_nope [B, n_heads, d_c] and q_pe [B, n_heads, d_h^R], and the latent's two
  parts as pages of one position, [B * held, 1, d_c] and [B * held, 1, d_h^R]; sequence b's pages are
  b * held + 0 .. n - 1.
- FlashAttention ``flash_attn_with_kvcache``: q [B, T, n_heads, head_dim], caches [B, S, n_kv_heads,
  head_dim] (a transposed view of ours), ``cache_seqlens`` int32 [B]; causal among new tokens, aligned to
  the end of each sequence's cache.
- FlashMLA ``flash_mla_with_kvcache``: q [B, T, n_heads, d_c + d_h^R], the latent as pages of 64 positions
  [n_pages, 64, 1, d_c + d_h^R] with a block table [B, pages per sequence] int32, ``cache_seqlens``, the
  value width d_c, and the scheduler metadata ``get_mla_metadata`` computes from the lengths.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from harness.model.paged import PagedVisible

FLASH_MLA_PAGE = 64  # positions per page FlashMLA reads


def hnd(k: Tensor, sequence: int) -> Tensor:
    """One sequence's K or V [B, n_kv_heads, S, width] as FlashInfer's "HND" layout: [n_kv_heads, S, width], a view."""
    return k[sequence]


def bshd(x: Tensor) -> Tensor:
    """[B, heads, S, width] as FlashAttention's [B, S, heads, width]: a view (the last dim stays contiguous)."""
    return x.transpose(1, 2)


def latent_pages(latent: Tensor, page: int = FLASH_MLA_PAGE) -> tuple[Tensor, Tensor]:
    """MLA's latent cache [B, 1, S, width] (a slice of a cache holding ``held`` positions per sequence) as FlashMLA's
    pages [B * held / page, page, 1, width] over the same memory, and the block table [B, held / page] int32
    whose row b lists sequence b's pages in order. ValueError where ``held`` is not a multiple of ``page``."""
    batch_size, heads, _, width = latent.shape
    if heads != 1 or latent.stride(-1) != 1 or latent.stride(2) != width:
        raise ValueError("FlashMLA reads one latent head, contiguous per position")
    held = latent.stride(0) // width  # a slice keeps the strides of the cache it was cut from
    if held % page:
        raise ValueError(f"FlashMLA reads pages of {page} positions; this cache holds {held} per sequence")
    per_sequence = held // page
    pages = latent.as_strided(
        (batch_size * per_sequence, page, 1, width), (page * width, width, width, 1), latent.storage_offset()
    )
    table = torch.arange(batch_size * per_sequence, dtype=torch.int32, device=latent.device)
    return pages, table.view(batch_size, per_sequence)


def latent_rows(latent: Tensor, kv_lora_rank: int) -> tuple[Tensor, Tensor]:
    """MLA's latent cache [B, 1, S, d_c + d_h^R] (a slice of one holding ``held`` positions per sequence) as
    FlashInfer's pages of one position over the same memory: the compressed part [B * held, 1, d_c] and the rotary key
    [B * held, 1, d_h^R]; page b * held + j is sequence b's position j."""
    batch_size, heads, _, width = latent.shape
    if heads != 1 or latent.stride(-1) != 1 or latent.stride(2) != width:
        raise ValueError("FlashInfer's MLA kernel reads one latent head, contiguous per position")
    held = latent.stride(0) // width  # a slice keeps the strides of the cache it was cut from
    rows = batch_size * held
    offset = latent.storage_offset()
    ckv = latent.as_strided((rows, 1, kv_lora_rank), (width, width, 1), offset)
    kpe = latent.as_strided((rows, 1, width - kv_lora_rank), (width, width, 1), offset + kv_lora_rank)
    return ckv, kpe


@functools.cache
def _planned_mla(
    device: torch.device,
    batch_size: int,
    n: int,
    held: int,
    heads: int,
    kv_lora_rank: int,
    rope: int,
    scale: float,
    dtype: torch.dtype,
) -> Any:
    """FlashInfer's MLA wrapper planned for one decode shape (the plan reads the lengths on the host)."""
    import flashinfer

    wrapper = flashinfer.mla.BatchMLAPagedAttentionWrapper(torch.empty(128 * 2**20, dtype=torch.int8, device=device))
    sequences = torch.arange(batch_size + 1, dtype=torch.int32, device=device)
    positions = torch.arange(n, dtype=torch.int32, device=device)
    pages = (sequences[:-1, None] * held + positions[None, :]).reshape(-1)  # sequence b's positions, in order
    lengths = torch.full((batch_size,), n, dtype=torch.int32, device=device)
    wrapper.plan(sequences, sequences * n, pages, lengths, heads, kv_lora_rank, rope, 1, False, scale, dtype, dtype)
    return wrapper


def _seqlens(q: Tensor, start_pos: int, lengths: Tensor | None) -> Tensor:
    """Positions each sequence attends, int32 [B]: its ragged length, else start_pos + T."""
    if lengths is not None:
        return lengths.to(torch.int32)
    return torch.full((q.shape[0],), start_pos + q.shape[2], dtype=torch.int32, device=q.device)


def flashinfer_decode(q: Tensor, k: Tensor, v: Tensor, *, start_pos: int, scale: float, **_: Any) -> Tensor:
    """One new token per sequence over its first start_pos + 1 positions: [B, n_heads, 1, head_dim]."""
    import flashinfer

    outs = [
        flashinfer.single_decode_with_kv_cache(q[b, :, 0], hnd(k, b), hnd(v, b), kv_layout="HND", sm_scale=scale)
        for b in range(q.shape[0])
    ]  # each [n_heads, head_dim]
    return torch.stack(outs)[:, :, None, :]


def flashinfer_mla(q: Tensor, k: Tensor, v: Tensor, *, start_pos: int, scale: float, **_: Any) -> Tensor:
    """MLA's absorbed decode step over the latent ``k`` (``v`` its first d_c columns): [B, n_heads, 1, d_c]."""
    kv_lora_rank = v.shape[-1]
    ckv, kpe = latent_rows(k, kv_lora_rank)
    batch_size, heads = q.shape[0], q.shape[1]
    held = k.stride(0) // k.shape[-1]
    wrapper = _planned_mla(
        q.device, batch_size, start_pos + 1, held, heads, kv_lora_rank, k.shape[-1] - kv_lora_rank, scale, q.dtype
    )
    q_nope, q_pe = q[:, :, 0].split(
        [kv_lora_rank, k.shape[-1] - kv_lora_rank], dim=-1
    )  # [B, n_heads, d_c], [.., d_h^R]
    return wrapper.run(q_nope, q_pe, ckv, kpe)[:, :, None, :]  # [B, n_heads, 1, d_c]


def flash_attn_kvcache(
    q: Tensor, k: Tensor, v: Tensor, *, start_pos: int, scale: float, lengths: Tensor | None = None, **_: Any
) -> Tensor:
    """T new tokens per sequence (causal among themselves), or a ragged step: [B, n_heads, T, head_dim]."""
    from flash_attn import flash_attn_with_kvcache

    out = flash_attn_with_kvcache(
        bshd(q),
        bshd(k),
        bshd(v),
        cache_seqlens=_seqlens(q, start_pos, lengths),
        softmax_scale=scale,
        causal=q.shape[2] > 1,
    )  # [B, T, n_heads, head_dim]
    return bshd(out)


def flash_mla(q: Tensor, k: Tensor, v: Tensor, *, start_pos: int, scale: float, **_: Any) -> Tensor:
    """MLA's absorbed decode step over a contiguous latent ``k`` (``v`` its first d_c columns) that holds a whole
    number of 64-position pages per sequence: [B, n_heads, 1, d_c]. (A scenario runs FlashMLA over a paged
    cache, :func:`flash_mla_paged`; its spec refuses contiguous caches, whose length is rarely whole pages.)"""
    pages, table = latent_pages(k)
    return _flash_mla(q, pages, table, _seqlens(q, start_pos, None), v.shape[-1], scale)


def flash_mla_paged(q: Tensor, visible: PagedVisible, scale: float | None) -> Tensor:
    """MLA's absorbed decode step over a paged latent (harness/model/paged.py), read in place: the pool
    [n_pages, 1, 64, width] is FlashMLA's [n_pages, 64, 1, width] (a view), the block table as int32."""
    assert visible.block_table is not None
    if visible.page_size != FLASH_MLA_PAGE or visible.first != 0 or visible.firsts is not None:
        raise ValueError(f"FlashMLA reads every position of a sequence from pages of {FLASH_MLA_PAGE}")
    factor = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    seqlens = torch.full((q.shape[0],), visible.stop, dtype=torch.int32, device=q.device)
    pages = visible.k.transpose(1, 2)  # [n_pages, 64, 1, width]
    return _flash_mla(q, pages, visible.block_table.to(torch.int32), seqlens, visible.v.shape[-1], factor)


def _flash_mla(q: Tensor, pages: Tensor, table: Tensor, seqlens: Tensor, d_v: int, scale: float) -> Tensor:
    from flash_mla import flash_mla_with_kvcache, get_mla_metadata

    metadata, splits = get_mla_metadata(seqlens, q.shape[2] * q.shape[1], 1)  # query heads per latent head
    out, _ = flash_mla_with_kvcache(
        bshd(q), pages, table, seqlens, d_v, metadata, splits, softmax_scale=scale, causal=False
    )  # [B, 1, n_heads, d_c]
    return bshd(out)
