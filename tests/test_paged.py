"""Paged KV caches: decode over pages equals the float64 full-history reference, page boundaries crossed."""

from __future__ import annotations

import pytest
import torch
from helpers_reference import reference_logits
from torch import Tensor

from harness import accounting
from harness.backend_support import unsupported_reason
from harness.model import Decoder, build_decoder, native
from harness.model.paged import PagedKVCache, PagedVisible
from harness.pages import last_page_waste, pages_per_sequence
from harness.scenario.schema import ModelSpec
from harness.variants import MLAShape, Variant, sharing_map, window_layers

TOKENS = 21  # positions 0..20: pages of 2, 4 and 8 are crossed several times, a page of 16 once
PROMPT = 3
PAGE_SIZES = [2, 4, 16]
# The backends that read pages on a CPU (native only where its kernel can be built).
PAGED_BACKENDS = ["eager"] + (["native"] if native.available() else [])
MLA_SHAPE = MLAShape(kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=12)

# name -> variant without pages, on the four-layer tiny model (head_dim 16: the native kernel takes it)
CASES = {
    "GQA2": Variant("GQA2", 16, 4, 2, sharing_map(4, 1)),
    "MQA-CLA2": Variant("MQA-CLA2", 16, 4, 1, sharing_map(4, 2)),
    "GQA2-SWA5-1:1": Variant("GQA2-SWA5-1:1", 16, 4, 2, sharing_map(4, 1), window_layers(4, 5, (1, 1))),
    "MHA-CLA2-SWA6": Variant("MHA-CLA2-SWA6", 16, 4, 4, sharing_map(4, 2), window_layers(4, 6)),
}
MLA_CASES = {
    "MLA": Variant("MLA", 24, 4, 1, sharing_map(4, 1), mla=MLA_SHAPE),
    "MLA-CLA2-SWA5": Variant("MLA-CLA2-SWA5", 24, 4, 1, sharing_map(4, 2), window_layers(4, 5), mla=MLA_SHAPE),
}


def paged(variant: Variant, page_size: int) -> Variant:
    return Variant(
        f"{variant.name}-P{page_size}",
        variant.head_dim,
        variant.n_heads,
        variant.n_kv_heads,
        variant.kv_layers,
        variant.layer_windows,
        variant.kv_dtype,
        variant.kv_scale,
        variant.mla,
        page_size=page_size,
    )


def decoder_for(model: ModelSpec, variant: Variant, backend: str) -> Decoder:
    return build_decoder(model, variant, dtype="float32", device="cpu", backend=backend, seed=11)


def sequence(batch_size: int = 3) -> Tensor:
    return torch.randint(0, 97, (batch_size, TOKENS), generator=torch.Generator().manual_seed(5))


def decode_one_by_one(decoder: Decoder, tokens: Tensor, prompt: int = PROMPT) -> Tensor:
    cache = decoder.allocate_cache(tokens.shape[0], tokens.shape[1], page_seed=3)
    steps = [decoder.prefill(tokens[:, :prompt], cache)]
    steps += [decoder.decode_step(tokens[:, p : p + 1], cache, p) for p in range(prompt, tokens.shape[1])]
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize("backend", PAGED_BACKENDS)
@pytest.mark.parametrize("page_size", PAGE_SIZES)
@pytest.mark.parametrize("name", CASES)
def test_paged_decode_equals_full_history_attention_across_page_boundaries(
    tiny_model: ModelSpec, name: str, page_size: int, backend: str
) -> None:
    decoder = decoder_for(tiny_model, paged(CASES[name], page_size), backend)
    tokens = sequence()
    expected = reference_logits(decoder, tokens)
    torch.testing.assert_close(decode_one_by_one(decoder, tokens).double(), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["eager", "naive"])
@pytest.mark.parametrize("page_size", [4, 16])
@pytest.mark.parametrize("name", MLA_CASES)
def test_paged_mla_latents_decode_as_the_reference_in_both_forms(
    tiny_model: ModelSpec, name: str, page_size: int, backend: str
) -> None:
    decoder = decoder_for(tiny_model, paged(MLA_CASES[name], page_size), backend)
    tokens = sequence(2)
    expected = reference_logits(decoder, tokens)
    torch.testing.assert_close(decode_one_by_one(decoder, tokens).double(), expected, atol=2e-5, rtol=1e-4)


def test_a_paged_float8_cache_decodes_as_the_reference_over_round_tripped_values(tiny_model: ModelSpec) -> None:
    variant = Variant("KV8", 16, 4, 2, sharing_map(4, 1), window_layers(4, 6, (1, 1)), kv_dtype="float8_e4m3fn")
    decoder = decoder_for(tiny_model, paged(variant, 4), "eager")
    tokens = sequence(2)

    def roundtrip(values: Tensor) -> Tensor:  # scales stay 1 in a cache that was not filled synthetically
        return values.float().clamp(-448, 448).to(torch.float8_e4m3fn).to(torch.float64)

    expected = reference_logits(decoder, tokens, kv_roundtrip=roundtrip)
    cache = decoder.allocate_cache(2, TOKENS)
    assert all(pool.dtype == torch.float8_e4m3fn for pool in cache.k)
    steps = [decoder.prefill(tokens[:, :PROMPT], cache)]
    steps += [decoder.decode_step(tokens[:, p : p + 1], cache, p) for p in range(PROMPT, TOKENS)]
    torch.testing.assert_close(torch.cat(steps, dim=1).double(), expected, atol=2e-3, rtol=2e-2)


@pytest.mark.parametrize("prompt", [1, 8, 13])
def test_a_prefill_into_pages_then_decode_equals_the_contiguous_cache(tiny_model: ModelSpec, prompt: int) -> None:
    variant = CASES["GQA2-SWA5-1:1"]
    tokens = sequence(2)
    contiguous = decode_one_by_one(decoder_for(tiny_model, variant, "eager"), tokens, prompt)
    pages = decode_one_by_one(decoder_for(tiny_model, paged(variant, 4), "eager"), tokens, prompt)
    torch.testing.assert_close(pages, contiguous, atol=1e-6, rtol=1e-5)


def test_a_sequences_pages_are_scattered_over_the_pool_and_each_page_is_dealt_once(tiny_model: ModelSpec) -> None:
    decoder = decoder_for(tiny_model, paged(CASES["GQA2"], 4), "eager")
    cache = decoder.allocate_cache(4, 33, page_seed=0)
    assert isinstance(cache, PagedKVCache)
    for table, pool in zip(cache.block_tables, cache.k, strict=True):
        assert table.shape == (4, 9)  # ceil(33 / 4) pages per sequence
        assert sorted(table.flatten().tolist()) == list(range(pool.shape[0]))
        in_order = torch.arange(36).view(4, 9)
        assert not torch.equal(table, in_order)
    again = decoder.allocate_cache(4, 33, page_seed=0)
    assert isinstance(again, PagedKVCache)
    assert all(torch.equal(a, b) for a, b in zip(cache.block_tables, again.block_tables, strict=True))
    other = decoder.allocate_cache(4, 33, page_seed=1)
    assert isinstance(other, PagedKVCache)
    assert not torch.equal(cache.block_tables[0], other.block_tables[0])


def test_consumers_read_their_producers_pages(tiny_model: ModelSpec) -> None:
    decoder = decoder_for(tiny_model, paged(CASES["MQA-CLA2"], 4), "eager")
    cache = decoder.allocate_cache(2, 9)
    assert len(cache.k) == 2  # producers 0 and 2 own pools; consumers 1 and 3 none
    assert cache.layer(1) is cache.layer(0) and cache.layer(3) is cache.layer(2)


@pytest.mark.parametrize("page_size", [1, 3, 4, 16])
@pytest.mark.parametrize("window", [1, 4, 5, 9])
def test_a_windowed_producer_keeps_only_the_pages_its_window_touches(
    tiny_model: ModelSpec, window: int, page_size: int
) -> None:
    variant = paged(Variant("SWA", 16, 4, 2, sharing_map(4, 1), window_layers(4, window)), page_size)
    cache = decoder_for(tiny_model, variant, "eager").allocate_cache(2, 100)
    assert isinstance(cache, PagedKVCache)
    ring = -(-(window - 1) // page_size) + 1
    assert all(table.shape == (2, ring) for table in cache.block_tables)
    for t in range(window, 100):  # the window's positions never need two positions of one table entry
        entries = [(p // page_size) % ring for p in range(t - window + 1, t + 1)]
        pages_touched = len(set(range((t - window + 1) // page_size, t // page_size + 1)))
        assert len(set(entries)) == pages_touched


@pytest.mark.parametrize(
    "variant",
    [CASES["GQA2"], CASES["MQA-CLA2"], CASES["GQA2-SWA5-1:1"], MLA_CASES["MLA-CLA2-SWA5"]],
    ids=lambda v: v.name,
)
@pytest.mark.parametrize("page_size", [4, 16])
def test_a_paged_cache_allocates_the_accounted_bytes_last_page_waste_and_block_tables_included(
    tiny_model: ModelSpec, variant: Variant, page_size: int
) -> None:
    pages = paged(variant, page_size)
    cache = decoder_for(tiny_model, pages, "eager").allocate_cache(3, accounting.cache_len(20))
    assert cache.nbytes == accounting.kv_cache_bytes(pages, "float32", 3, 20)
    assert cache.nbytes > accounting.kv_cache_bytes(variant, "float32", 3, 20)


def test_the_kv_accounting_counts_whole_pages_per_sequence() -> None:
    variant = paged(CASES["GQA2"], 16)  # 4 producers, 2 KV heads of 16, float32: 512 B a position
    per_sequence = 4 * 2 * 2 * 16 * 4 * 16 * 2 + 4 * 2 * 8  # 2 pages of 16 for 21 positions, 2 table entries
    assert accounting.kv_bytes_per_sequence(variant, "float32", 20) == per_sequence
    assert pages_per_sequence(None, 21, 16) == 2
    assert last_page_waste(None, 21, 16) == 11
    assert last_page_waste(5, 21, 4) == 2 * 4 - 5  # five positions touch at most two pages of 4
    assert last_page_waste(6, 21, 4) == 3 * 4 - 6  # six may touch three


def test_max_batch_prediction_rounds_each_sequence_up_to_whole_pages(tiny_model: ModelSpec) -> None:
    contiguous, pages = CASES["GQA2"], paged(CASES["GQA2"], 128)
    budget = 64 * 2**20
    predicted = accounting.predicted_max_batch(tiny_model, pages, "float32", 200, budget)
    free = budget - accounting.weight_bytes(tiny_model, pages, "float32")
    per_sequence = accounting.kv_bytes_per_sequence(pages, "float32", 200) + accounting.activation_bytes_per_sequence(
        tiny_model, pages, "float32", 200
    )
    assert predicted == free // per_sequence
    assert predicted < accounting.predicted_max_batch(tiny_model, contiguous, "float32", 200, budget)


@pytest.mark.parametrize("backend", ["sdpa", "grouped", "flex"])
def test_backends_that_read_only_contiguous_caches_refuse_pages_with_the_reason(tiny_model: ModelSpec, backend: str):
    reason = unsupported_reason(backend, paged(CASES["GQA2"], 16))
    assert reason is not None and "contiguous KV cache only" in reason
    assert unsupported_reason("eager", paged(CASES["GQA2"], 16)) is None
    with pytest.raises(ValueError, match="contiguous KV cache only"):
        decoder_for(tiny_model, paged(CASES["GQA2"], 16), backend)


@pytest.mark.skipif(not native.available(), reason="no C++ compiler for the native kernel")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("page_size", "group"), [(4, 1), (16, 4), (8, 2)])
def test_the_native_kernel_reads_pages_over_each_sequences_own_span(dtype: torch.dtype, page_size: int, group: int):
    generator = torch.Generator().manual_seed(2)
    batch_size, n_kv_heads, head_dim, width = 3, 2, 32, 40
    n_pages = batch_size * width
    k_pool = torch.randn(n_pages, n_kv_heads, page_size, head_dim, generator=generator).to(dtype)
    v_pool = torch.randn(n_pages, n_kv_heads, page_size, head_dim, generator=generator).to(dtype)
    table = torch.randperm(n_pages, generator=generator).view(batch_size, width)
    q = torch.randn(batch_size, n_kv_heads * group, 1, head_dim, generator=generator).to(dtype)
    starts = torch.tensor([0, 5, 3 * page_size - 1])
    stops = torch.tensor([width * page_size, 7 + 2 * page_size, 30 * page_size + 1])
    out = native.run_paged(q, k_pool, v_pool, table, starts, stops, n_splits=3)
    for b in range(batch_size):
        view = PagedVisible(
            k_pool,
            v_pool,
            0,
            block_table=table[b : b + 1],
            page_size=page_size,
            first=int(starts[b]),
            stop=int(stops[b]),
        )
        gathered = view.gathered()  # [1, n_kv_heads, n, head_dim] in position order
        k = gathered.k.double().repeat_interleave(group, dim=1)
        v = gathered.v.double().repeat_interleave(group, dim=1)
        weights = torch.softmax(q[b : b + 1].double() @ k.transpose(-2, -1) / head_dim**0.5, dim=-1)
        tolerance = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(out[b : b + 1].double(), weights @ v, atol=tolerance, rtol=tolerance)
