"""Multi-token steps (sweep.q_len): T new tokens per sequence, causal within them, over a filled cache."""

from __future__ import annotations

import pytest
import torch
from helpers_reference import reference_logits

from harness import accounting
from harness.backend_support import unsupported_reason
from harness.lengths import LengthMix
from harness.model import available_backends, build_decoder
from harness.scenario.schema import ModelSpec
from harness.scenario.serving import with_layout, with_lengths, with_q_len
from harness.variants import MLAShape, Variant, sharing_map, window_layers

CASES = {
    "GQA2": Variant("GQA2", 16, 4, 2, sharing_map(4, 1)),
    "MQA-CLA2": Variant("MQA-CLA2", 16, 4, 1, sharing_map(4, 2)),
    "MLA": Variant("MLA", 24, 4, 1, sharing_map(4, 1), mla=MLAShape(32, 8, 16, 12)),
}
CONTEXT = 13


@pytest.mark.parametrize("q_len", [2, 4])
@pytest.mark.parametrize("page_size", ["contiguous", 4])
@pytest.mark.parametrize("backend", [b for b in available_backends("cpu")] + ["naive"])
@pytest.mark.parametrize("name", CASES)
def test_a_verification_step_equals_the_reference_at_each_of_its_new_tokens(
    tiny_model: ModelSpec, name: str, backend: str, page_size: int | str, q_len: int
) -> None:
    variant = with_q_len(with_layout(CASES[name], page_size), q_len)
    reason = unsupported_reason(backend, variant, "cpu")
    if reason is not None:
        pytest.skip(reason)
    decoder = build_decoder(tiny_model, variant, dtype="float32", device="cpu", backend=backend, seed=3)
    tokens = torch.randint(0, 97, (2, CONTEXT + q_len), generator=torch.Generator().manual_seed(8))
    cache = decoder.allocate_cache(2, accounting.cache_len(CONTEXT, q_len))
    decoder.prefill(tokens[:, :CONTEXT], cache)
    step = decoder.decode_step(tokens[:, CONTEXT:], cache, CONTEXT)  # [B, q_len, vocab]
    expected = reference_logits(decoder, tokens)[:, CONTEXT:]
    torch.testing.assert_close(step.double(), expected, atol=2e-5, rtol=1e-4)


def test_a_step_of_t_tokens_reads_the_cache_once_and_does_t_tokens_of_matmuls(tiny_model: ModelSpec) -> None:
    one, four = CASES["GQA2"], with_q_len(CASES["GQA2"], 4)
    per_position = 4 * 2 * 2 * 16 * 4  # 4 producers, K and V of 2 heads of 16, float32
    read_one = accounting.attention_bytes_per_step(one, "float32", 2, 100)
    read_four = accounting.attention_bytes_per_step(four, "float32", 2, 100)
    q_and_out = 4 * 4 * (16 + 16) * 4  # per token: 4 layers, 4 heads, query and output of 16, float32
    assert read_four - read_one == 2 * 3 * per_position + 2 * 3 * q_and_out  # 3 more positions, 3 more tokens
    params = accounting.param_counts(tiny_model, one).matmul
    flops_one = accounting.flops_per_step(tiny_model, one, 2, 100)
    flops_four = accounting.flops_per_step(tiny_model, four, 2, 100)
    pairs_one, pairs_four = 101, 101 + 102 + 103 + 104  # token t sees 100 + t + 1 positions
    per_pair = 2 * 4 * (16 + 16) * 4  # 2 · n_heads · (score + value width), 4 layers
    assert flops_one == 2 * (2 * params + pairs_one * per_pair)
    assert flops_four == 2 * (4 * 2 * params + pairs_four * per_pair)
    assert accounting.kv_cache_bytes(four, "float32", 2, 100) == 2 * 104 * per_position


def test_multi_token_steps_of_ragged_or_windowed_variants_are_refused_with_the_reason() -> None:
    windowed = with_q_len(Variant("SWA", 16, 4, 2, sharing_map(4, 1), window_layers(4, 5)), 4)
    assert "windowed" in str(unsupported_reason("eager", windowed))
    ragged = with_q_len(with_lengths(CASES["GQA2"], LengthMix("uniform")), 2)
    assert "one new token per sequence" in str(unsupported_reason("eager", ragged))
    assert unsupported_reason("eager", with_q_len(CASES["GQA2"], 8)) is None
