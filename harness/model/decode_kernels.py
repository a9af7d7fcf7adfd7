"""Decode attention (one new query per sequence) over a KV cache, at close to the memory-bandwidth limit.

The cache is read in split-KV chunks (Dao et al. 2023, "Flash-Decoding for long-context inference"):
each chunk of positions is one batched matmul, and when there are fewer (sequence, KV head) rows
than threads, a chunk is further cut into ``parts`` that become extra batch entries, so every
core streams its own share of the cache. Two passes over the cache:

1. scores = K q / sqrt(head_dim), written to a float32 buffer [rows, n_valid, group] (small: one
   float per query head per position, against 2 · head_dim elements of K and V read);
2. the exact softmax over that buffer (max, exp, sum: Milakov & Gimelshein 2018, "Online normalizer
   calculation for softmax", eq. 1 with the max subtracted), then out = Σ_chunks P_chunk V_chunk,
   accumulated in float32 and divided by the softmax denominator once at the end.

All query heads that share a KV head are one matmul against it (Ainslie et al. 2023, GQA): K and V are
never copied per query head. Scores are computed as K q (the cache as the row-major left operand),
the orientation in which BLAS streams the cache fastest on CPUs.

Half-precision caches (bfloat16, float16) are upcast chunk by chunk into one float32 buffer that
stays in the CPU caches, because CPUs without native bfloat16 matmul instructions run half-precision
GEMV orders of magnitude slower than float32: the cache is still read from memory exactly once.
Float8 caches are widened the same way; their per-tensor or per-KV-head scales are folded into the
query (K · s_k · q = K · (s_k q)) and the output (Σ p · V s_v = s_v Σ p · V), so no scaled copy of the
cache is ever made. Values may be narrower than keys (MLA's latent, harness/model/mla.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Upcast chunk size: the float32 copy of one K (or V) chunk, per pass. Far below the last-level
# cache of any server CPU, so the copy is read back from cache, not memory.
UPCAST_CHUNK_BYTES = 8 * 2**20
# Positions per batch entry of one matmul: many small matmuls spread over the threads and keep the
# per-matmul working set in L1/L2.
PART_LEN = 512

# Below this many float32 bytes of K per pass, one matmul over the whole slice is faster than
# chunks and parts: the cache fits the CPU caches and per-call overhead dominates.
DIRECT_BYTES = 2 * 2**20


def split_kv_decode(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    upcast_chunk_bytes: int = UPCAST_CHUNK_BYTES,
    part_len: int = PART_LEN,
    rows_per_call: int | None = None,
    direct_bytes: int = DIRECT_BYTES,
    scale: float | None = None,
    k_scale: Tensor | None = None,
    v_scale: Tensor | None = None,
) -> Tensor:
    """softmax(q kᵀ · scale) v for one query per sequence over every position of ``k`` and ``v``.

    q: [B, n_heads, 1, head_dim]; k: [B, n_kv_heads, n_valid, head_dim], v: [B, n_kv_heads, n_valid,
    v_dim] (slices of the cache: every position is attended). ``scale`` defaults to 1/sqrt(head_dim);
    a float8 cache passes its float32 ``k_scale`` and ``v_scale`` ([1] or [n_kv_heads]).
    Returns [B, n_heads, 1, v_dim] in q's dtype.

    A float32 cache with at least ``rows_per_call`` (sequence, KV head) rows (default: the number of
    threads; more than that when several query heads share a KV head) is one matmul per pass with a
    row per batch entry; with fewer, each row is cut into parts of ``part_len`` positions so that every
    thread has work. A slice of at most ``direct_bytes`` (K in
    float32) is one matmul per pass.
    """
    batch_size, n_heads, n_new, head_dim = q.shape
    n_kv_heads, n_valid, v_dim = k.shape[1], k.shape[2], v.shape[-1]
    if n_new != 1:
        raise ValueError(f"split-KV decode takes one new query per sequence, got {n_new}")
    group = n_heads // n_kv_heads
    rows = batch_size * n_kv_heads
    factor = scale if scale is not None else 1.0 / math.sqrt(head_dim)
    # query head h = kv_head * group + g: the heads sharing a KV head are adjacent
    q_heads = (q.float() * factor).reshape(batch_size, n_kv_heads, group, head_dim)  # [B, n_kv_heads, group, head_dim]
    if k_scale is not None:
        q_heads = q_heads * k_scale.view(1, -1, 1, 1)  # the key scale, folded into the query
    q_rows = q_heads.reshape(rows, group, head_dim)  # [rows, group, head_dim]
    k_rows = k.flatten(0, 1)  # [rows, n_valid, head_dim]; a view of a cache slice, whose batch and head dims merge
    v_rows = v.flatten(0, 1)  # [rows, n_valid, v_dim]
    if 4 * rows * n_valid * head_dim <= direct_bytes:
        out = _direct(q_rows, k_rows.float(), v_rows.float())
    elif k.dtype != torch.float32:
        chunk_len = max(part_len, upcast_chunk_bytes // (4 * rows * head_dim) // part_len * part_len)
        out = _two_pass(q_rows, k_rows, v_rows, _segments(n_valid, chunk_len, part_len), upcast=True)
    elif _one_call(rows, group, rows_per_call if rows_per_call is not None else torch.get_num_threads()):
        out = _two_pass(q_rows, k_rows, v_rows, [(0, n_valid, 1)], upcast=False)
    else:
        # A float32 slice is cut into parts without a copy only where its positions are contiguous:
        # one row at a time.
        segments = _segments(n_valid, n_valid, part_len)
        out = torch.cat(
            [
                _two_pass(q_rows[r : r + 1], k_rows[r : r + 1], v_rows[r : r + 1], segments, upcast=False)
                for r in range(rows)
            ]
        )  # [rows, group, v_dim]
    out = out.view(batch_size, n_kv_heads, group, v_dim)  # [B, n_kv_heads, group, v_dim]
    if v_scale is not None:
        out = out * v_scale.view(1, -1, 1, 1)  # the value scale, applied once to the output
    return out.reshape(batch_size, n_heads, 1, v_dim).to(q.dtype)  # [B, n_heads, 1, v_dim]


def _one_call(rows: int, group: int, rows_per_call: int) -> bool:
    """Whether a float32 slice of ``rows`` rows is one matmul per pass, a row per batch entry.

    With a single query head per KV head (group 1), as soon as every thread has a row. With several,
    only once there are more rows than threads: with exactly one row per thread, each thread's
    weights-times-values matmul has ``group`` rows against the whole row's positions, a shape that BLAS
    runs at a fraction of the bandwidth that the same work cut into parts reaches.
    """
    return rows >= rows_per_call if group == 1 else rows > rows_per_call


def _direct(q_rows: Tensor, k_rows: Tensor, v_rows: Tensor) -> Tensor:
    """One matmul per pass: q_rows [rows, group, head_dim] (float32, pre-scaled) over float32 k_rows
    [rows, n, head_dim] and v_rows [rows, n, v_dim]."""
    scores = torch.bmm(k_rows, q_rows.transpose(1, 2))  # [rows, n, group]
    weights = torch.softmax(scores.transpose(1, 2), dim=-1)  # [rows, group, n]
    return torch.bmm(weights, v_rows)  # [rows, group, v_dim]


def _segments(n_valid: int, chunk_len: int, part_len: int) -> list[tuple[int, int, int]]:
    """(start, stop, parts) covering 0..n_valid: chunks of ``chunk_len`` cut into parts of ``part_len``.

    The remainder that does not fill a part is one last segment of a single part.
    """
    segments = []
    whole = n_valid // part_len * part_len
    for start in range(0, whole, chunk_len):
        stop = min(start + chunk_len, whole)
        segments.append((start, stop, (stop - start) // part_len))
    if whole < n_valid:
        segments.append((whole, n_valid, 1))
    return segments


def _two_pass(
    q_rows: Tensor, k_rows: Tensor, v_rows: Tensor, segments: list[tuple[int, int, int]], *, upcast: bool
) -> Tensor:
    """Attention of q_rows [rows, group, head_dim] (float32, pre-scaled) over k_rows [rows, n, head_dim]
    and v_rows [rows, n, v_dim].

    ``segments`` are (start, stop, parts); a segment with several parts needs a contiguous float32
    chunk, which ``upcast`` (copy each chunk into a float32 staging buffer) or a single row gives.
    Returns [rows, group, v_dim] in float32.
    """
    rows, group, head_dim = q_rows.shape
    n_valid, v_dim = k_rows.shape[1], v_rows.shape[-1]
    longest = max(stop - start for start, stop, _ in segments)
    device = q_rows.device
    staging = torch.empty(rows * longest * max(head_dim, v_dim), device=device) if upcast else None
    scores = torch.empty(rows, n_valid, group, device=device)  # float32
    for start, stop, parts in segments:
        keys = _chunk(k_rows, start, stop, staging)  # [rows, C, head_dim], float32
        # Kq with q as a column-major operand: the orientation BLAS streams fastest
        q_t = q_rows.repeat_interleave(parts, dim=0).transpose(1, 2)  # [rows*parts, head_dim, group]
        keys = keys.view(rows * parts, (stop - start) // parts, head_dim)  # [rows*parts, C/parts, head_dim]
        part_scores = torch.bmm(keys, q_t)  # [rows*parts, C/parts, group]
        scores[:, start:stop] = part_scores.view(rows, stop - start, group)  # [rows, C, group]
    # softmax reduces over positions: make them the contiguous dim (one copy of the small scores; none if group 1)
    weights_all = scores.transpose(1, 2).contiguous()  # [rows, group, n]
    weights_all.sub_(weights_all.amax(dim=2, keepdim=True)).exp_()  # unnormalised softmax weights
    denominator = weights_all.sum(dim=2)  # [rows, group]
    acc = torch.zeros(rows, group, v_dim, device=device)  # float32
    for start, stop, parts in segments:
        values = _chunk(v_rows, start, stop, staging)  # [rows, C, v_dim], float32
        part_len = (stop - start) // parts
        values = values.view(rows * parts, part_len, v_dim)  # [rows*parts, C/parts, v_dim]
        weights = weights_all[:, :, start:stop].view(rows, group, parts, part_len)  # [rows, group, parts, C/parts]
        weights = weights.transpose(1, 2).reshape(rows * parts, group, part_len)  # [rows*parts, group, C/parts]
        partial = torch.bmm(weights, values)  # [rows*parts, group, v_dim]
        acc += partial.view(rows, parts, group, v_dim).sum(dim=1)  # [rows, group, v_dim]
    return acc / denominator[..., None]


def _chunk(rows_tensor: Tensor, start: int, stop: int, staging: Tensor | None) -> Tensor:
    """Positions start..stop of [rows, n, width] in float32: a view, or a copy into ``staging`` (contiguous)."""
    chunk = rows_tensor[:, start:stop]  # [rows, C, width]
    if staging is None:
        return chunk
    rows, length, width = chunk.shape
    buffer = staging[: rows * length * width].view(rows, length, width)  # [rows, C, width]
    return buffer.copy_(chunk)
