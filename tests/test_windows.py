"""Sliding-window and local/global layers: ring-buffer decode against full-history attention with the window."""

from __future__ import annotations

import pytest
import torch
from helpers_reference import reference_logits
from torch import Tensor

from harness.accounting import cache_len, kv_cache_bytes
from harness.model import Decoder, available_backends, build_decoder
from harness.scenario.schema import ModelSpec
from harness.variants import Variant, sharing_map, window_layers

CPU_BACKENDS = available_backends("cpu")
WINDOW = 4
TOKENS = 11  # decode positions run well past the window

# name -> (n_layers, KV sharing, per-layer windows)
WINDOWED = {
    "SWA": (4, 1, window_layers(4, WINDOW)),
    "local/global 1:1": (4, 1, window_layers(4, WINDOW, (1, 1))),
    "local/global 2:1": (3, 1, window_layers(3, WINDOW, (2, 1))),
    "SWA-CLA2": (4, 2, window_layers(4, WINDOW)),
    "per-layer": (4, 1, (3, None, 5, 2)),
}


def windowed(model: ModelSpec, name: str, backend: str = "eager", dtype: str = "float32") -> Decoder:
    n_layers, sharing, windows = WINDOWED[name]
    variant = Variant(name, 16, 4, 2, sharing_map(n_layers, sharing), windows)
    spec = model.model_copy(update={"n_layers": n_layers})
    return build_decoder(spec, variant, dtype=dtype, device="cpu", backend=backend, seed=4)


def tokens(batch_size: int, n_tokens: int) -> Tensor:
    return torch.randint(0, 97, (batch_size, n_tokens), generator=torch.Generator().manual_seed(5))


def decode_one_by_one(decoder: Decoder, sequence: Tensor, prompt: int) -> Tensor:
    cache = decoder.allocate_cache(sequence.shape[0], sequence.shape[1])
    steps = [decoder.prefill(sequence[:, :prompt], cache)]
    steps += [decoder.decode_step(sequence[:, pos : pos + 1], cache, pos) for pos in range(prompt, sequence.shape[1])]
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", WINDOWED)
def test_ring_buffer_decode_equals_full_history_attention_with_the_window(
    tiny_model: ModelSpec, name: str, backend: str
) -> None:
    decoder = windowed(tiny_model, name, backend)
    sequence = tokens(2, TOKENS)
    expected = reference_logits(decoder, sequence)
    logits = decode_one_by_one(decoder, sequence, prompt=2)
    torch.testing.assert_close(logits.double(), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", ["SWA", "local/global 1:1", "SWA-CLA2"])
def test_prompts_and_chunks_longer_than_the_window_equal_full_history_attention(
    tiny_model: ModelSpec, name: str, backend: str
) -> None:
    decoder = windowed(tiny_model, name, backend)
    sequence = tokens(2, TOKENS)
    expected = reference_logits(decoder, sequence)
    cache = decoder.allocate_cache(2, TOKENS)
    logits = torch.cat(
        [
            decoder(sequence[:, :7], cache, 0),  # a prompt that wraps the ring
            decoder(sequence[:, 7:10], cache, 7),  # a chunk after it
            decoder.decode_step(sequence[:, 10:], cache, 10),
        ],
        dim=1,
    )
    torch.testing.assert_close(logits.double(), expected, atol=2e-5, rtol=1e-4)


def test_a_window_as_long_as_the_sequence_equals_global_attention(tiny_model: ModelSpec) -> None:
    variant = Variant("wide", 16, 4, 2, sharing_map(4, 1), window_layers(4, TOKENS))
    wide = build_decoder(tiny_model, variant, dtype="float32", device="cpu", seed=4)
    plain = Decoder(tiny_model, Variant("global", 16, 4, 2, sharing_map(4, 1)))
    plain.load_state_dict(wide.state_dict())
    sequence = tokens(2, TOKENS)
    torch.testing.assert_close(
        decode_one_by_one(wide, sequence, 3), decode_one_by_one(plain, sequence, 3), atol=0, rtol=0
    )


@pytest.mark.parametrize("name", WINDOWED)
def test_a_windowed_slot_holds_only_its_window_and_the_cache_bytes_equal_accounting(
    tiny_model: ModelSpec, name: str
) -> None:
    decoder = windowed(tiny_model, name)
    cache = decoder.allocate_cache(3, cache_len(40))
    held = [slot.k.shape[2] for slot in cache.slots]
    windows = [decoder.variant.windows[p] for p in decoder.variant.producers]
    assert held == [41 if w is None else w for w in windows]
    assert cache.nbytes == kv_cache_bytes(decoder.variant, "float32", 3, 40)


def test_a_decode_step_past_the_window_overwrites_the_oldest_position_in_place(tiny_model: ModelSpec) -> None:
    decoder = windowed(tiny_model, "SWA")
    cache = decoder.allocate_cache(1, 12)
    decoder.prefill(tokens(1, 9), cache)  # positions 0..8: the ring holds 5, 6, 7, 8 in slots 1, 2, 3, 0
    ring = cache.k[0].clone()
    storage = cache.k[0].data_ptr()
    decoder.decode_step(tokens(1, 1), cache, 9)  # position 9 goes to slot 9 % 4 = 1
    changed = (cache.k[0] != ring).any(dim=(0, 1, 3))
    assert changed.tolist() == [False, True, False, False]
    assert cache.k[0].data_ptr() == storage
