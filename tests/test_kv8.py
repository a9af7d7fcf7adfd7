"""8-bit KV caches: stored in float8 with scales, read back inside attention, never widened behind the caller."""

from __future__ import annotations

import math

import pytest
import torch
from helpers_reference import attention64, reference_logits, rope64
from torch import Tensor

from harness.accounting import cache_len, kv_cache_bytes
from harness.model import Decoder, build_decoder, resolve_backend
from harness.model.attention import attend
from harness.model.decode_kernels import split_kv_decode
from harness.model.layers import Rotation, rope_angles
from harness.scenario.schema import ModelSpec
from harness.variants import MLAShape, Variant, sharing_map, window_layers

FP8 = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
# The backends that read float8 on a CPU.
FP8_BACKENDS = ["eager", "grouped"]
TOKENS = 10


def fp8_decoder(
    model: ModelSpec, kv_dtype: str, kv_scale: str, backend: str = "eager", windows: tuple[int | None, ...] = ()
) -> Decoder:
    variant = Variant("KV8", 16, 4, 2, sharing_map(4, 1), windows, kv_dtype=kv_dtype, kv_scale=kv_scale)
    return build_decoder(model, variant, dtype="float32", device="cpu", backend=backend, seed=8)


def dequantised(cache_tensor: Tensor, scale: Tensor) -> Tensor:
    """What a float8 slot stands for, in float64: value · scale (per tensor or per KV head)."""
    return cache_tensor.to(torch.float64) * scale.to(torch.float64).view(1, -1, 1, 1)


@pytest.mark.parametrize("backend", FP8_BACKENDS)
@pytest.mark.parametrize("kv_scale", ["tensor", "head"])
@pytest.mark.parametrize("kv_dtype", list(FP8))
def test_a_decode_step_equals_attention_over_the_dequantised_cache(
    tiny_model: ModelSpec, kv_dtype: str, kv_scale: str, backend: str
) -> None:
    decoder = fp8_decoder(tiny_model, kv_dtype, kv_scale, backend)
    attention = decoder.layers[0].attention
    cache = decoder.allocate_cache(2, TOKENS)
    slot = cache.layer(0)
    slot.k_scale.copy_(torch.tensor([0.01, 0.02][: slot.k_scale.numel()]))  # scales other than 1, per head if so
    slot.v_scale.copy_(torch.tensor([0.003, 0.005][: slot.v_scale.numel()]))
    x = torch.randn(2, TOKENS, 64, generator=torch.Generator().manual_seed(9))
    theta = decoder.spec.rope_theta
    for pos in range(TOKENS):  # position 0 is a one-token prefill; then decode steps
        rotation = Rotation.of(rope_angles(torch.tensor([pos]), 16, theta))
        out = attention(x[:, pos : pos + 1], rotation, slot, pos, backend)  # [2, 1, 64]
        q = (x[:, pos : pos + 1].double() @ attention.wq.weight.double().T).view(2, 1, 4, 16)
        q = rope64(q, torch.tensor([pos]), theta).transpose(1, 2)  # [2, 4, 1, 16]
        k = dequantised(cache.k[0][:, :, : pos + 1], slot.k_scale).repeat_interleave(2, dim=1)  # [2, 4, pos+1, 16]
        v = dequantised(cache.v[0][:, :, : pos + 1], slot.v_scale).repeat_interleave(2, dim=1)
        heads = attention64(q, k, v, torch.ones(1, pos + 1, dtype=torch.bool), 1 / math.sqrt(16))  # [2, 4, 1, 16]
        expected = heads.transpose(1, 2).reshape(2, 1, 64) @ attention.wo.weight.double().T
        torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-4)
    assert cache.k[0].dtype == FP8[kv_dtype] and cache.v[0].dtype == FP8[kv_dtype]


def test_stored_values_are_the_new_keys_quantised_with_the_slots_scale(tiny_model: ModelSpec) -> None:
    decoder = fp8_decoder(tiny_model, "float8_e4m3fn", "head")
    cache = decoder.allocate_cache(1, 4)
    slot = cache.layer(0)
    slot.v_scale.copy_(torch.tensor([0.5, 0.25]))
    x = torch.randn(1, 1, 64, generator=torch.Generator().manual_seed(2))
    decoder.layers[0].attention(x, Rotation.of(rope_angles(torch.tensor([0]), 16, 1e4)), slot, 0, "eager")
    v = (x @ decoder.layers[0].attention.wv.weight.T).view(1, 1, 2, 16).transpose(1, 2)  # [1, 2, 1, 16]
    expected = (v / torch.tensor([0.5, 0.25]).view(1, 2, 1, 1)).to(torch.float8_e4m3fn)
    assert torch.equal(cache.v[0][:, :, :1].view(torch.uint8), expected.view(torch.uint8))


@pytest.mark.parametrize("backend", FP8_BACKENDS)
def test_an_8bit_stack_decodes_as_the_reference_over_round_tripped_keys_and_values(
    tiny_model: ModelSpec, backend: str
) -> None:
    decoder = fp8_decoder(tiny_model, "float8_e4m3fn", "tensor", backend, windows=window_layers(4, 4, (1, 1)))
    sequence = torch.randint(0, 97, (2, TOKENS), generator=torch.Generator().manual_seed(3))
    cache = decoder.allocate_cache(2, TOKENS)
    steps = [decoder.prefill(sequence[:, :2], cache)]
    steps += [decoder.decode_step(sequence[:, p : p + 1], cache, p) for p in range(2, TOKENS)]

    def roundtrip(values: Tensor) -> Tensor:  # scales stay 1 in a cache that was not filled synthetically
        return values.float().clamp(-448, 448).to(torch.float8_e4m3fn).to(torch.float64)

    expected = reference_logits(decoder, sequence, kv_roundtrip=roundtrip)
    # the harness rounds keys computed in float32 and the reference in float64: a value on a rounding
    # boundary may land one float8 step apart, so the bound is looser than float32's
    torch.testing.assert_close(torch.cat(steps, dim=1).double(), expected, atol=2e-3, rtol=2e-2)


@pytest.mark.parametrize("kv_scale", ["tensor", "head"])
def test_the_split_kv_kernel_folds_the_scales_into_query_and_output_on_every_path(kv_scale: str) -> None:
    generator = torch.Generator().manual_seed(4)
    q = torch.randn(2, 8, 1, 32, generator=generator)
    k = torch.randn(2, 2, 700, 32, generator=generator).to(torch.float8_e5m2)
    v = torch.randn(2, 2, 700, 32, generator=generator).to(torch.float8_e5m2)
    n = 2 if kv_scale == "head" else 1
    k_scale, v_scale = torch.tensor([0.7, 1.3][:n]), torch.tensor([2.0, 0.5][:n])
    keys = dequantised(k, k_scale).repeat_interleave(4, dim=1)  # [2, 8, 700, 32]
    values = dequantised(v, v_scale).repeat_interleave(4, dim=1)
    expected = attention64(q.double(), keys, values, torch.ones(1, 700, dtype=torch.bool), 1 / math.sqrt(32))
    for direct_bytes, chunk_bytes in (
        (2**30, 2**23),
        (0, 2**23),
        (0, 4 * 2 * 2 * 32 * 128),
    ):  # direct, chunked, many chunks
        out = split_kv_decode(
            q,
            k,
            v,
            k_scale=k_scale,
            v_scale=v_scale,
            direct_bytes=direct_bytes,
            upcast_chunk_bytes=chunk_bytes,
            part_len=128,
        )
        torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["sdpa", "native"])
def test_backends_that_cannot_read_float8_refuse_it_with_the_reason(tiny_model: ModelSpec, backend: str) -> None:
    decoder = fp8_decoder(tiny_model, "float8_e4m3fn", "tensor")
    with pytest.raises(ValueError, match="cannot read a float8 KV cache"):
        decoder.backend = backend
    cache = decoder.allocate_cache(1, 4)
    q = torch.randn(1, 4, 1, 16)
    with pytest.raises(ValueError, match="cannot read a float8 KV cache"):
        attend(
            q, cache.k[0], cache.v[0], start_pos=2, backend=backend, k_scale=cache.k_scale[0], v_scale=cache.v_scale[0]
        )


def test_grouped_refuses_float8_where_it_would_widen_the_whole_cache() -> None:
    variant = Variant("KV8", 16, 4, 2, sharing_map(2, 1), kv_dtype="float8_e4m3fn")
    with pytest.raises(ValueError, match="only on CPU"):
        resolve_backend("grouped", "cuda", variant)
    assert resolve_backend("grouped", "cpu", variant) == "grouped"
    assert resolve_backend("auto", "cuda", variant) == "eager"


@pytest.mark.parametrize(("kv_dtype", "kv_scale"), [("float8_e4m3fn", "tensor"), ("float8_e5m2", "head")])
def test_an_8bit_cache_takes_one_byte_per_element_plus_its_scales_as_accounted(
    tiny_model: ModelSpec, kv_dtype: str, kv_scale: str
) -> None:
    decoder = fp8_decoder(tiny_model, kv_dtype, kv_scale)
    cache = decoder.allocate_cache(3, cache_len(30))
    assert cache.nbytes == kv_cache_bytes(decoder.variant, "float32", 3, 30)
    assert cache.nbytes == 4 * 2 * 3 * 31 * 2 * 16 + 4 * 2 * (2 if kv_scale == "head" else 1) * 4


def test_an_8bit_mla_latent_keeps_one_scale_for_keys_and_values(tiny_model: ModelSpec) -> None:
    shape = MLAShape(kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16)
    variant = Variant("MLA-KV8", 24, 4, 1, sharing_map(4, 2), kv_dtype="float8_e4m3fn", mla=shape)
    decoder = build_decoder(tiny_model, variant, dtype="float32", device="cpu", backend="grouped")
    cache = decoder.allocate_cache(2, cache_len(15))
    assert cache.nbytes == kv_cache_bytes(variant, "float32", 2, 15) == 2 * 2 * 16 * 40 + 2 * 4
    sequence = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(5))
    outputs = {}
    for backend in ("grouped", "naive", "eager"):
        decoder.backend = backend
        cache = decoder.allocate_cache(2, 6)
        outputs[backend] = torch.cat(
            [decoder.prefill(sequence[:, :3], cache)]
            + [decoder.decode_step(sequence[:, p : p + 1], cache, p) for p in range(3, 6)],
            dim=1,
        )
    torch.testing.assert_close(outputs["grouped"], outputs["eager"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outputs["naive"], outputs["eager"], atol=1e-5, rtol=1e-5)


def test_a_synthetic_fill_fits_each_scale_to_the_values_it_stores(tiny_model: ModelSpec) -> None:
    decoder = fp8_decoder(tiny_model, "float8_e4m3fn", "head")
    cache = decoder.allocate_cache(2, 40)
    decoder.fill_cache_synthetic(cache, 30, torch.Generator().manual_seed(6))
    slot = cache.layer(0)
    widened = dequantised(cache.k[0][:, :, :30], slot.k_scale)
    assert torch.all(slot.k_scale != 1.0)
    assert torch.allclose(widened.abs().amax(dim=(0, 2, 3)), slot.k_scale.double() * 448, rtol=1e-6)
    assert 0.8 < widened.std().item() < 1.2  # standard-normal values survive the round trip
    assert torch.all(cache.k[0][:, :, 30:].view(torch.uint8) == 0)


def test_auto_times_only_the_backends_that_read_float8(tiny_model: ModelSpec) -> None:
    from harness.measure.autotune import choose_backend

    decoder = fp8_decoder(tiny_model, "float8_e4m3fn", "head", backend="grouped")
    cache = decoder.allocate_cache(2, 12)
    decoder.fill_cache_synthetic(cache, 11, torch.Generator().manual_seed(2))
    choice = choose_backend(decoder, cache, 11, timer=lambda fn, window_s: (fn(), 1.0)[1])
    assert set(choice.latencies_s) == {"eager", "grouped"}
    assert "float8" in choice.rejected["sdpa"]
