"""Ragged batches: each sequence at its own context, decoded together, equals the float64 reference of each alone."""

from __future__ import annotations

import pytest
import torch
from helpers_reference import reference_logits
from torch import Tensor

from harness import accounting
from harness.backend_support import unsupported_reason
from harness.lengths import LengthMix, iter_lengths, sequence_lengths
from harness.model import Decoder, build_decoder, native
from harness.model.kvcache import KVCache
from harness.model.paged import PagedLayerCache, page_locations
from harness.scenario.schema import ModelSpec
from harness.scenario.serving import with_layout, with_lengths
from harness.variants import MLAShape, Variant, sharing_map, window_layers

LENGTHS = [19, 3, 11, 16, 1]  # the longest first, as harness/lengths.py orders a batch
BACKENDS = ["eager"] + (["native"] if native.available() else [])
FIXED = LengthMix("fixed", (1.0, 0.25, 0.5))
CASES = {
    "GQA2": Variant("GQA2", 16, 4, 2, sharing_map(4, 1)),
    "MQA-CLA2": Variant("MQA-CLA2", 16, 4, 1, sharing_map(4, 2)),
    "GQA2-SWA5-1:1": Variant("GQA2-SWA5-1:1", 16, 4, 2, sharing_map(4, 1), window_layers(4, 5, (1, 1))),
    "MLA-CLA2": Variant("MLA-CLA2", 24, 4, 1, sharing_map(4, 2), mla=MLAShape(32, 8, 16, 12)),
}


def ragged(variant: Variant, page_size: int | str) -> Variant:
    return with_lengths(with_layout(variant, page_size), FIXED)


def copy_sequence(batch: KVCache, single: KVCache, b: int, length: int) -> None:
    """Put a one-sequence cache's positions 0 .. length - 1 (those it still holds) into sequence b of a batch cache."""
    for into, source in zip(batch.slots, single.slots, strict=True):
        first = 0 if into.window is None else max(0, length - into.window + 1)
        positions = torch.arange(first, length)
        for name in ("k",) if into.shares_values else ("k", "v"):
            source_pool, into_pool = getattr(source, name), getattr(into, name)
            if isinstance(into, PagedLayerCache):
                assert isinstance(source, PagedLayerCache)
                pages, offsets = page_locations(source.block_table, source.page_size, positions)
                values = source_pool[pages[0], :, offsets]  # [n, heads, width]
                pages, offsets = page_locations(into.block_table[b : b + 1], into.page_size, positions)
                into_pool[pages[0], :, offsets] = values
            else:
                slots = positions if into.window is None else positions % into.window
                into_pool[b, :, slots] = source_pool[0, :, slots]


def ragged_step(decoder: Decoder, tokens: Tensor, lengths: list[int]) -> Tensor:
    """The logits of one ragged decode step: sequence b's token lengths[b] after its first lengths[b] tokens."""
    longest = max(lengths)
    batch = decoder.allocate_cache(len(lengths), longest + 1, page_seed=4, lengths=lengths)
    for b, length in enumerate(lengths):
        single = decoder.allocate_cache(1, length + 1, page_seed=9)
        decoder.prefill(tokens[b : b + 1, :length], single)
        copy_sequence(batch, single, b, length)
    step = torch.stack([tokens[b, length] for b, length in enumerate(lengths)])[:, None]  # [B, 1]
    return decoder.decode_step(step, batch, longest)[:, 0]  # [B, vocab]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("page_size", ["contiguous", 4])
@pytest.mark.parametrize("name", CASES)
def test_a_ragged_decode_step_equals_each_sequence_alone_in_the_float64_reference(
    tiny_model: ModelSpec, name: str, page_size: int | str, backend: str
) -> None:
    variant = ragged(CASES[name], page_size)
    if unsupported_reason(backend, variant, "cpu") is not None:
        pytest.skip(str(unsupported_reason(backend, variant, "cpu")))
    decoder = build_decoder(tiny_model, variant, dtype="float32", device="cpu", backend=backend, seed=12)
    tokens = torch.randint(0, 97, (len(LENGTHS), max(LENGTHS) + 1), generator=torch.Generator().manual_seed(6))
    logits = ragged_step(decoder, tokens, LENGTHS)
    for b, length in enumerate(LENGTHS):
        expected = reference_logits(decoder, tokens[b : b + 1, : length + 1])[0, -1]
        torch.testing.assert_close(logits[b].double(), expected, atol=2e-5, rtol=1e-4)


def test_a_ragged_paged_cache_holds_each_sequences_own_pages_as_accounted(tiny_model: ModelSpec) -> None:
    variant = ragged(CASES["GQA2-SWA5-1:1"], 4)
    lengths = sequence_lengths(FIXED, 30, 5)
    assert lengths == [30, 8, 15, 30, 8]
    decoder = build_decoder(tiny_model, variant, dtype="float32", device="cpu", backend="eager", seed=1)
    cache = decoder.allocate_cache(5, 31, lengths=lengths)
    assert cache.nbytes == accounting.kv_cache_bytes(variant, "float32", 5, 30)
    uniform = with_layout(CASES["GQA2-SWA5-1:1"], 4)
    assert cache.nbytes < accounting.kv_cache_bytes(uniform, "float32", 5, 30)
    # global producers hold ceil((n + 1) / 4) pages each: 8 + 3 + 4 + 8 + 3; windowed ones a ring of 2 or less
    global_pages = sum(-(-(n + 1) // 4) for n in lengths)
    assert cache.k[1].shape[0] == global_pages and cache.k[0].shape[0] == 5 * 2


def test_a_static_cache_gives_every_sequence_a_slot_for_the_longest_but_reads_only_its_own() -> None:
    variant = with_lengths(CASES["GQA2"], FIXED)
    uniform = CASES["GQA2"]
    assert accounting.kv_cache_bytes(variant, "float32", 3, 40) == accounting.kv_cache_bytes(uniform, "float32", 3, 40)
    per_position = 4 * 2 * 2 * 16 * 4  # 4 layers, K and V of 2 heads of 16, float32
    assert accounting.attention_bytes_per_step(variant, "float32", 3, 40) - accounting.attention_bytes_per_step(
        uniform, "float32", 3, 40
    ) == per_position * ((11 + 21) - 2 * 41)  # sequences of 10 and 20 tokens read 11 and 21 positions


def test_max_batch_of_a_ragged_paged_batch_adds_sequences_in_batch_order_while_they_fit(tiny_model: ModelSpec):
    variant = with_lengths(with_layout(CASES["GQA2"], 16), LengthMix("long-tail", seed=3))
    budget = 24 * 2**20
    predicted = accounting.predicted_max_batch(tiny_model, variant, "float32", 4000, budget)
    free = budget - accounting.weight_bytes(tiny_model, variant, "float32")
    activations = accounting.activation_bytes_per_sequence(tiny_model, variant, "float32", 4000)

    def batch_bytes(batch_size: int) -> int:
        return accounting.kv_cache_bytes(variant, "float32", batch_size, 4000) + batch_size * activations

    assert batch_bytes(predicted) <= free < batch_bytes(predicted + 1)
    uniform = with_layout(CASES["GQA2"], 16)
    assert predicted > accounting.predicted_max_batch(tiny_model, uniform, "float32", 4000, budget)


def test_length_mixes_keep_context_len_the_longest_and_a_larger_batch_only_adds_sequences() -> None:
    for mix in (LengthMix("uniform", seed=2), LengthMix("long-tail", seed=2), FIXED):
        lengths = sequence_lengths(mix, 1000, 64)
        assert lengths[0] == 1000 and max(lengths) == 1000 and min(lengths) >= 1
        assert sequence_lengths(mix, 1000, 8) == lengths[:8]
        assert [next(stream) for stream in [iter_lengths(mix, 1000)]] == [1000]
    tail = sequence_lengths(LengthMix("long-tail", seed=2), 1000, 2001)[1:]
    assert sorted(tail)[len(tail) // 2] < 1000 / 4  # most sequences are short
    assert min(tail) >= 1000 // 64
    assert sequence_lengths(LengthMix("same"), 1000, 3) == [1000, 1000, 1000]


@pytest.mark.parametrize("backend", ["sdpa", "grouped", "naive"])
def test_backends_with_one_length_for_the_batch_refuse_a_ragged_one_with_the_reason(backend: str) -> None:
    reason = unsupported_reason(backend, with_lengths(CASES["MLA-CLA2"], FIXED))
    assert reason is not None and "one context length for the whole batch" in reason


def test_accounting_of_an_enormous_uniform_batch_takes_no_list_of_its_sequences(tiny_model: ModelSpec) -> None:
    huge = 2**62
    variant = with_layout(CASES["GQA2"], 16)
    per_sequence = accounting.kv_bytes_per_sequence(variant, "float32", 1000)
    assert accounting.kv_cache_bytes(variant, "float32", huge, 1000) == huge * per_sequence
    assert accounting.flops_per_step(tiny_model, variant, huge, 1000) > 0


def test_a_ragged_batch_larger_than_the_lengths_it_can_draw_is_refused() -> None:
    from harness.lengths import MAX_RAGGED_BATCH
    from harness.scenario.load import parse_scenario

    doc = {
        "name": "x",
        "model": {"d_model": 64, "n_layers": 2, "d_ff": 64, "vocab_size": 97},
        "variant": [{"name": "H16-MQA"}],
        "sweep": {"batch_size": [MAX_RAGGED_BATCH + 1], "context_len": [8], "lengths": ["same", "uniform"]},
    }
    with pytest.raises(Exception, match="draws one length per sequence"):
        parse_scenario(doc, "x.toml")
    budget = 2**62  # the prediction stops at the largest ragged batch a scenario may ask for
    variant = with_lengths(with_layout(CASES["MQA-CLA2"], 16), LengthMix("uniform"))
    model = ModelSpec(d_model=64, n_layers=4, d_ff=96, vocab_size=97, dtype="float32")
    assert accounting.predicted_max_batch(model, variant, "float32", 1, budget) == MAX_RAGGED_BATCH
