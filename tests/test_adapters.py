"""The production-kernel adapters on a machine without them: the reasons their cells are unsupported, and the
layout conversions each hands its library, checked on CPU tensors (the libraries themselves need CUDA)."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import sys
import types

import pytest
import torch

from harness.backend_support import unsupported_reason
from harness.model.adapters import (
    bshd,
    flash_attn_kvcache,
    flash_mla,
    flashinfer_decode,
    hnd,
    latent_pages,
    latent_rows,
)
from harness.model.attention import attend
from harness.variants import MLAShape, Variant, sharing_map

GQA = Variant("H64-GQA2", 64, 4, 2, sharing_map(4, 1))
MLA = Variant(
    "latent",
    24,
    4,
    1,
    sharing_map(4, 1),
    mla=MLAShape(kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16),
)


def test_an_adapter_on_cpu_is_unsupported_because_it_needs_cuda() -> None:
    assert unsupported_reason("flash-attn", GQA, "cpu") == "attention backend 'flash-attn' needs CUDA"


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash_attn is installed here")
def test_an_adapter_whose_package_is_absent_is_unsupported_with_the_package_named() -> None:
    assert unsupported_reason("flash-attn", GQA, "cuda") == (
        "attention backend 'flash-attn' needs the 'flash_attn' package, which is not installed"
    )


def test_the_mla_kernel_refuses_a_kv_cache_and_the_kv_kernels_refuse_mla() -> None:
    assert "runs MLA's latent attention only" in str(unsupported_reason("flashmla", GQA))
    assert (
        unsupported_reason("flashinfer", MLA)
        == "FlashInfer's decode kernel takes K and V of one width; MLA runs on flashinfer-mla or flashmla"
    )


def test_layout_views_share_the_cache_memory() -> None:
    cache = torch.randn(2, 3, 10, 8)
    assert bshd(cache).data_ptr() == cache.data_ptr()
    assert torch.equal(bshd(cache)[1, 4, 2], cache[1, 2, 4])
    assert torch.equal(hnd(cache, 1), cache[1])


def test_latent_pages_list_each_sequences_positions_in_order() -> None:
    cache = torch.randn(3, 1, 128, 40)  # three sequences, 128 positions held each: two pages of 64
    latent = cache[:, :, :70]  # the positions a step reads
    pages, table = latent_pages(latent)
    assert pages.shape == (6, 64, 1, 40) and table.tolist() == [[0, 1], [2, 3], [4, 5]]
    for b in range(3):
        for j in range(2):
            assert torch.equal(pages[int(table[b, j]), :, 0], cache[b, 0, j * 64 : (j + 1) * 64])


def test_latent_pages_refuse_a_cache_not_in_whole_pages() -> None:
    with pytest.raises(ValueError, match="pages of 64 positions; this cache holds 100"):
        latent_pages(torch.randn(2, 1, 100, 40))


def _flash_attn_with_kvcache(q, k_cache, v_cache, *, cache_seqlens, softmax_scale, causal):  # type: ignore[no-untyped-def]
    """flash_attn_with_kvcache's documented semantics, in torch: q [B, T, H, D], caches [B, S, Hkv, D]."""
    out = torch.empty_like(q)
    group = q.shape[2] // k_cache.shape[2]
    for b in range(q.shape[0]):
        n = int(cache_seqlens[b])
        k = k_cache[b, :n].repeat_interleave(group, dim=1).transpose(0, 1)  # [H, n, D]
        v = v_cache[b, :n].repeat_interleave(group, dim=1).transpose(0, 1)
        scores = q[b].transpose(0, 1) @ k.transpose(-2, -1) * softmax_scale  # [H, T, n]
        if causal:
            t = q.shape[1]
            seen = torch.arange(n) <= (n - t) + torch.arange(t)[:, None]  # aligned to the end of the cache
            scores = scores.masked_fill(~seen, float("-inf"))
        out[b] = (torch.softmax(scores, dim=-1) @ v).transpose(0, 1)
    return out


@pytest.mark.parametrize("n_new", [1, 3])
def test_the_flash_attn_adapter_hands_its_library_the_cache_it_means(
    monkeypatch: pytest.MonkeyPatch, n_new: int
) -> None:
    monkeypatch.setitem(
        sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_with_kvcache=_flash_attn_with_kvcache)
    )
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, n_new, 16, generator=generator, dtype=torch.float64)
    k = torch.randn(2, 2, 40, 16, generator=generator, dtype=torch.float64)
    v = torch.randn(2, 2, 40, 16, generator=generator, dtype=torch.float64)
    start = 30
    n = start + n_new
    got = flash_attn_kvcache(q, k[:, :, :n], v[:, :, :n], start_pos=start, scale=1 / math.sqrt(16))
    expected = attend(q, k, v, start_pos=start, backend="eager")
    torch.testing.assert_close(got, expected)


def test_latent_rows_split_each_position_into_its_compressed_part_and_rotary_key() -> None:
    cache = torch.randn(2, 1, 50, 40)  # 50 positions held per sequence, d_c = 32, d_h^R = 8
    ckv, kpe = latent_rows(cache[:, :, :20], 32)
    assert ckv.shape == (100, 1, 32) and kpe.shape == (100, 1, 8)
    assert torch.equal(ckv[50 + 7, 0], cache[1, 0, 7, :32])
    assert torch.equal(kpe[50 + 7, 0], cache[1, 0, 7, 32:])
    assert ckv.data_ptr() == cache.data_ptr()


def _single_decode_with_kv_cache(q, k, v, *, kv_layout, sm_scale):  # type: ignore[no-untyped-def]
    """FlashInfer's documented single-request decode, in torch: q [H, D], k and v [Hkv, S, D] ("HND")."""
    assert kv_layout == "HND"
    group = q.shape[0] // k.shape[0]
    k, v = k.repeat_interleave(group, dim=0), v.repeat_interleave(group, dim=0)  # [H, S, D]
    scores = (q[:, None, :] @ k.transpose(-2, -1))[:, 0] * sm_scale  # [H, S]
    return (torch.softmax(scores, dim=-1)[:, None, :] @ v)[:, 0]  # [H, D]


def test_the_flashinfer_adapter_hands_its_library_each_sequence_in_hnd(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.SimpleNamespace(single_decode_with_kv_cache=_single_decode_with_kv_cache)
    monkeypatch.setitem(sys.modules, "flashinfer", fake)
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(3, 4, 1, 16, generator=generator, dtype=torch.float64)
    k = torch.randn(3, 2, 40, 16, generator=generator, dtype=torch.float64)
    v = torch.randn(3, 2, 40, 16, generator=generator, dtype=torch.float64)
    got = flashinfer_decode(q, k[:, :, :31], v[:, :, :31], start_pos=30, scale=0.25)
    torch.testing.assert_close(got, attend(q, k, v, start_pos=30, backend="eager", scale=0.25))


def _flash_mla_with_kvcache(q, pages, table, seqlens, head_dim_v, metadata, splits, *, softmax_scale, causal):  # type: ignore[no-untyped-def]
    """FlashMLA's documented decode, in torch: q [B, 1, H, width], pages [n_pages, 64, 1, width], table [B, pages]."""
    out = torch.empty(q.shape[0], 1, q.shape[2], head_dim_v, dtype=q.dtype)
    for b in range(q.shape[0]):
        latent = pages[table[b].long(), :, 0].reshape(-1, pages.shape[-1])[: int(seqlens[b])]  # [n, width]
        scores = q[b, 0] @ latent.T * softmax_scale  # [H, n]
        out[b, 0] = torch.softmax(scores, dim=-1) @ latent[:, :head_dim_v]
    return out, None


def test_the_flashmla_adapter_hands_its_library_the_latent_as_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.SimpleNamespace(
        flash_mla_with_kvcache=_flash_mla_with_kvcache, get_mla_metadata=lambda seqlens, heads, kv_heads: (None, None)
    )
    monkeypatch.setitem(sys.modules, "flash_mla", fake)
    generator = torch.Generator().manual_seed(2)
    cache = torch.randn(2, 1, 128, 40, generator=generator, dtype=torch.float64)  # d_c = 32, d_h^R = 8
    q = torch.randn(2, 4, 1, 40, generator=generator, dtype=torch.float64)
    n = 71
    got = flash_mla(q, cache[:, :, :n], cache[:, :, :n, :32], start_pos=n - 1, scale=0.2)
    expected = attend(q, cache, cache[..., :32], start_pos=n - 1, backend="eager", scale=0.2)
    torch.testing.assert_close(got, expected)


class _MLAWrapper:
    """FlashInfer's documented BatchMLAPagedAttentionWrapper, in torch: plan once, then run over pages of positions."""

    def __init__(self, workspace: torch.Tensor) -> None:
        self.planned: tuple[torch.Tensor, torch.Tensor, float] | None = None

    def plan(
        self, qo_indptr, kv_indptr, kv_indices, kv_len, heads, d_c, d_r, page_size, causal, scale, q_dtype, kv_dtype
    ):  # type: ignore[no-untyped-def]
        assert page_size == 1 and not causal
        self.planned = (kv_indptr, kv_indices, scale)

    def run(self, q_nope, q_pe, ckv, kpe):  # type: ignore[no-untyped-def]
        assert self.planned is not None
        indptr, indices, scale = self.planned
        out = torch.empty_like(q_nope)
        for b in range(q_nope.shape[0]):
            rows = indices[int(indptr[b]) : int(indptr[b + 1])].long()
            keys = torch.cat((ckv[rows, 0], kpe[rows, 0]), dim=-1)  # [n, d_c + d_r]
            scores = torch.cat((q_nope[b], q_pe[b]), dim=-1) @ keys.T * scale  # [H, n]
            out[b] = torch.softmax(scores, dim=-1) @ ckv[rows, 0]
        return out


def test_the_flashinfer_mla_adapter_plans_the_latent_as_pages_of_one_position(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.model import adapters

    fake = types.SimpleNamespace(mla=types.SimpleNamespace(BatchMLAPagedAttentionWrapper=_MLAWrapper))
    monkeypatch.setitem(sys.modules, "flashinfer", fake)
    adapters._planned_mla.cache_clear()
    generator = torch.Generator().manual_seed(3)
    cache = torch.randn(2, 1, 50, 40, generator=generator, dtype=torch.float64)  # d_c = 32, d_h^R = 8
    q = torch.randn(2, 4, 1, 40, generator=generator, dtype=torch.float64)
    try:
        got = adapters.flashinfer_mla(q, cache[:, :, :21], cache[:, :, :21, :32], start_pos=20, scale=0.2)
    finally:
        adapters._planned_mla.cache_clear()
    expected = attend(q, cache, cache[..., :32], start_pos=20, backend="eager", scale=0.2)
    torch.testing.assert_close(got, expected)


def test_the_flashmla_adapter_reads_a_paged_latent_through_its_block_table(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.model.adapters import flash_mla_paged
    from harness.model.paged import PagedVisible

    fake = types.SimpleNamespace(
        flash_mla_with_kvcache=_flash_mla_with_kvcache, get_mla_metadata=lambda seqlens, heads, kv_heads: (None, None)
    )
    monkeypatch.setitem(sys.modules, "flash_mla", fake)
    generator = torch.Generator().manual_seed(4)
    pool = torch.randn(6, 1, 64, 40, generator=generator, dtype=torch.float64)  # pages of the latent, d_c = 32
    table = torch.randperm(6, generator=generator).view(2, 3)  # each sequence's pages, scattered over the pool
    q = torch.randn(2, 4, 1, 40, generator=generator, dtype=torch.float64)
    n = 150
    visible = PagedVisible(pool, pool[..., :32], n - 1, block_table=table, page_size=64, first=0, stop=n)
    got = flash_mla_paged(q, visible, 0.2)
    gathered = visible.gathered()
    expected = attend(q, gathered.k, gathered.v, start_pos=gathered.start_pos, backend="eager", scale=0.2)
    torch.testing.assert_close(got, expected)


def test_flashmla_reads_a_paged_cache_of_64_position_pages_only() -> None:
    paged = dataclasses.replace(MLA, page_size=16)
    assert unsupported_reason("flashmla", MLA) == (
        "attention backend 'flashmla' reads a paged cache only (pages of 64 positions: sweep.page_size)"
    )
    assert unsupported_reason("flashmla", paged) == "attention backend 'flashmla' reads pages of 64 positions, not 16"
