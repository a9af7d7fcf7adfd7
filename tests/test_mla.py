"""Multi-head latent attention: absorbed and naive decode against full-history attention over the latent."""

from __future__ import annotations

import pytest
import torch
from helpers_reference import reference_logits
from torch import Tensor

from harness.accounting import cache_len, kv_cache_bytes, param_counts
from harness.model import Decoder, available_backends, build_decoder, resolve_backend
from harness.scenario.schema import ModelSpec
from harness.variants import MLAShape, Variant, sharing_map, window_layers

# The forms MLA runs in on a CPU: the absorbed form through every backend that takes it, and naive. (These
# latents are 40 wide, which the native kernel does not step through: native runs grouped here;
# tests/test_native_mla.py runs the kernel itself on MLA.)
MLA_BACKENDS = [b for b in available_backends("cpu") if b != "flex"] + ["naive"]
TOKENS = 9

# name -> (n_layers, KV sharing, q_lora_rank, windows)
MLA_CASES = {
    "MLA": (3, 1, None, ()),
    "MLA-Q": (3, 1, 24, ()),
    "MLA-CLA2": (4, 2, None, ()),
    "MLA-SWA-1:1": (4, 1, 24, window_layers(4, 3, (1, 1))),
}


def mla_variant(name: str) -> Variant:
    n_layers, sharing, q_lora, windows = MLA_CASES[name]
    shape = MLAShape(kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=12, q_lora_rank=q_lora)
    return Variant(name, 24, 4, 1, sharing_map(n_layers, sharing), windows, mla=shape)


def mla_decoder(model: ModelSpec, name: str, backend: str = "eager", dtype: str = "float32") -> Decoder:
    variant = mla_variant(name)
    spec = model.model_copy(update={"n_layers": variant.n_layers})
    return build_decoder(spec, variant, dtype=dtype, device="cpu", backend=backend, seed=6)


def tokens(batch_size: int, n_tokens: int) -> Tensor:
    return torch.randint(0, 97, (batch_size, n_tokens), generator=torch.Generator().manual_seed(7))


def decode_one_by_one(decoder: Decoder, sequence: Tensor, prompt: int) -> Tensor:
    cache = decoder.allocate_cache(sequence.shape[0], sequence.shape[1])
    steps = [decoder.prefill(sequence[:, :prompt], cache)]
    steps += [decoder.decode_step(sequence[:, pos : pos + 1], cache, pos) for pos in range(prompt, sequence.shape[1])]
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize("backend", MLA_BACKENDS)
@pytest.mark.parametrize("name", MLA_CASES)
def test_mla_decode_equals_full_history_attention_with_per_head_keys_from_the_latent(
    tiny_model: ModelSpec, name: str, backend: str
) -> None:
    decoder = mla_decoder(tiny_model, name, backend)
    sequence = tokens(2, TOKENS)
    expected = reference_logits(decoder, sequence)
    logits = decode_one_by_one(decoder, sequence, prompt=3)
    torch.testing.assert_close(logits.double(), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(("dtype", "tolerance"), [("float32", 1e-5), ("bfloat16", 3e-2)])
def test_absorbed_mla_equals_naive_within_the_dtypes_tolerance(tiny_model: ModelSpec, dtype: str, tolerance: float):
    decoder = mla_decoder(tiny_model, "MLA-Q", dtype=dtype)
    sequence = tokens(2, TOKENS)
    outputs = {}
    for backend in ("grouped", "naive"):
        decoder.backend = backend
        outputs[backend] = decode_one_by_one(decoder, sequence, prompt=2).float()
    torch.testing.assert_close(outputs["grouped"], outputs["naive"], atol=tolerance, rtol=tolerance)


def test_the_absorbed_core_attention_reads_the_latent_once_without_decompressing(tiny_model: ModelSpec) -> None:
    decoder = mla_decoder(tiny_model, "MLA", backend="grouped")
    cache = decoder.allocate_cache(2, 12)
    decoder.fill_cache_synthetic(cache, 11, torch.Generator().manual_seed(1))
    up = decoder.layers[0].attention.wkv_b
    calls: list[int] = []
    handle = up.register_forward_hook(lambda module, args, out: calls.append(1))
    assert decoder.core_query_shape(2) == (2, 4, 1, 32 + 8)
    decoder.core_attention(torch.randn(decoder.core_query_shape(2)), cache, 11)
    assert calls == []  # absorbed: W^UK and W^UV are never applied to the cached latent
    decoder.backend = "naive"
    assert decoder.core_query_shape(2) == (2, 4, 1, 16 + 8)
    decoder.core_attention(torch.randn(decoder.core_query_shape(2)), cache, 11)
    handle.remove()
    assert len(calls) == 1  # naive: layer 0 decompresses its latent


@pytest.mark.parametrize("name", MLA_CASES)
def test_the_mla_cache_is_one_latent_per_producer_and_its_bytes_equal_accounting(
    tiny_model: ModelSpec, name: str
) -> None:
    decoder = mla_decoder(tiny_model, name)
    cache = decoder.allocate_cache(3, cache_len(20))
    assert len(cache.k) == decoder.variant.n_kv_layers
    for slot in cache.slots:
        assert slot.k.shape[1] == 1 and slot.k.shape[3] == 32 + 8  # [B, 1, held, d_c + d_h^R]
        assert slot.shares_values and slot.v.shape[3] == 32  # the values are the latent's first d_c columns
    assert cache.nbytes == kv_cache_bytes(decoder.variant, "float32", 3, 20)


@pytest.mark.parametrize("name", MLA_CASES)
def test_mla_parameter_count_equals_accounting(tiny_model: ModelSpec, name: str) -> None:
    decoder = mla_decoder(tiny_model, name)
    assert sum(p.numel() for p in decoder.parameters()) == param_counts(decoder.spec, decoder.variant).total


def test_mla_consumers_read_their_producers_latent_with_their_own_up_projections(tiny_model: ModelSpec) -> None:
    decoder = mla_decoder(tiny_model, "MLA-CLA2")
    names = {name for name, _ in decoder.named_parameters()}
    for layer, source in enumerate(decoder.variant.kv_layers):
        has_latent_projection = f"layers.{layer}.attention.wkv_a.weight" in names
        assert has_latent_projection == (layer == source)
        assert f"layers.{layer}.attention.wkv_b.weight" in names


@pytest.mark.parametrize("backend", ["flex"])
def test_backends_that_do_not_take_mla_refuse_it_with_the_reason(tiny_model: ModelSpec, backend: str) -> None:
    decoder = mla_decoder(tiny_model, "MLA")
    with pytest.raises(ValueError, match="MLA"):
        decoder.backend = backend
    with pytest.raises(ValueError, match="MLA"):
        resolve_backend(backend, "cpu", decoder.variant)


def test_auto_on_cpu_starts_mla_from_a_backend_that_takes_it(tiny_model: ModelSpec) -> None:
    expected = "native" if "native" in available_backends("cpu") else "grouped"
    assert resolve_backend("auto", "cpu", mla_variant("MLA")) == expected


def test_the_naive_form_is_refused_for_a_variant_without_a_latent(tiny_model: ModelSpec) -> None:
    decoder = build_decoder(tiny_model, Variant("H16-MQA", 16, 4, 1, sharing_map(4, 1)), dtype="float32", device="cpu")
    with pytest.raises(ValueError, match="decompresses an MLA latent"):
        decoder.backend = "naive"


def test_auto_times_only_the_backends_that_take_mla_and_checks_them_against_the_reference(
    tiny_model: ModelSpec,
) -> None:
    from harness.measure.autotune import choose_backend

    decoder = mla_decoder(tiny_model, "MLA-CLA2", backend="grouped")
    cache = decoder.allocate_cache(2, 12)
    decoder.fill_cache_synthetic(cache, 11, torch.Generator().manual_seed(2))
    choice = choose_backend(decoder, cache, 11, timer=lambda fn, window_s: (fn(), 1.0)[1])
    assert set(choice.latencies_s) == {"eager", "sdpa", "grouped"} | ({"native"} & set(available_backends("cpu")))
    assert choice.rejected == {}  # every CPU candidate takes MLA's absorbed form and agrees with eager


def test_an_mla_stack_converts_to_cla_by_dropping_the_consumers_latent_projections(tiny_model: ModelSpec) -> None:
    from harness.model.convert import to_cla

    source = mla_decoder(tiny_model, "MLA-CLA2").variant
    full = build_decoder(
        tiny_model, Variant("MLA", 24, 4, 1, sharing_map(4, 1), mla=source.mla), dtype="float32", device="cpu", seed=3
    )
    shared = to_cla(full, sharing_map(4, 2))
    assert shared.variant.describe() == "MLA32-R8(nope16,v12)-CLA2"
    names = {name for name, _ in shared.named_parameters()}
    assert "layers.1.attention.wkv_a.weight" not in names and "layers.1.attention.wkv_b.weight" in names
    sequence = tokens(1, 5)
    expected = reference_logits(shared, sequence)
    torch.testing.assert_close(decode_one_by_one(shared, sequence, 2).double(), expected, atol=2e-5, rtol=1e-4)


def test_the_absorbed_form_under_sdpa_is_flagged_when_sdpa_repeats_the_latent_to_every_head() -> None:
    # Keys (latent + rotary key) and values (the latent) differ in width: no fused kernel takes them, and
    # math repeats the latent per query head, so the timed step is mostly a copy. The cell must say so.
    from harness.measure.cell_worker import _observe_sdpa

    model = ModelSpec(d_model=64, n_layers=3, d_ff=96, vocab_size=97, dtype="float32")
    decoder = build_decoder(model, mla_variant("MLA"), dtype="float32", device="cpu", backend="sdpa")
    cache = decoder.allocate_cache(1, 65)
    q = torch.randn(decoder.core_query_shape(1))
    with torch.inference_mode():
        observed = _observe_sdpa(decoder, cache, q, 64)
    assert observed["sdpa_kv_copied"] is True
    check = observed["check"]
    assert check is not None and check["name"] == "sdpa_reads_mla_latent_in_place" and not check["passed"]
    assert "keys 40 wide, values 32" in check["detail"]


def test_an_absorbed_form_read_in_place_passes_the_latent_check() -> None:
    from harness.measure import checks
    from harness.model.sdpa import SdpaObservation

    check = checks.mla_latent_read(SdpaObservation("flash", kv_copied=False), mla_variant("MLA"))
    assert check.passed and check.detail == "flash read the latent (keys 40 wide, values 32) in place"
