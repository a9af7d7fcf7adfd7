"""The production-kernel adapters on a machine without them: the reasons their cells are unsupported, and the
layout conversions each hands its library, checked on CPU tensors (the libraries themselves need CUDA)."""

from __future__ import annotations

import importlib.util
import math
import sys
import types

import pytest
import torch

from harness.backend_support import unsupported_reason
from harness.model.adapters import bshd, flash_attn_kvcache, hnd, latent_pages
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
        == "FlashInfer's decode kernel takes K and V of one width; MLA runs on flashmla"
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
