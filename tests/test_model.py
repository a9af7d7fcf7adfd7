"""The decoder stack: incremental decode, variant equivalences, the producers-only cache, accounting."""

from __future__ import annotations

import collections
import dataclasses

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

import harness.model.attention as attention_module
from harness.accounting import cache_len, kv_cache_bytes, param_counts
from harness.model import Decoder, available_backends, build_decoder
from harness.model.decoder import SYNTHETIC_WEIGHTS
from harness.scenario.schema import ModelSpec
from harness.variants import Variant, sharing_map

CPU_BACKENDS = available_backends("cpu")


def variant_for(name: str, n_layers: int) -> Variant:
    """Test variants over a d_model 64 stack; H8-GQA3 has n_heads·head_dim (48) != d_model."""
    heads = {"MHA": (16, 4, 4), "GQA2": (16, 4, 2), "MQA": (16, 4, 1), "H8-GQA3": (8, 6, 3)}
    kv_map: tuple[int, ...] = tuple(range(n_layers))
    kind = name
    if "-CLA" in name:
        kind, sharing = name.split("-CLA")
        kv_map = sharing_map(n_layers, int(sharing))
    elif "-KV" in name:
        kind, explicit = name.split("-KV")
        kv_map = tuple(int(c) for c in explicit)
    head_dim, n_heads, n_kv_heads = heads[kind]
    return Variant(name=name, head_dim=head_dim, n_heads=n_heads, n_kv_heads=n_kv_heads, kv_layers=kv_map)


# (variant, n_layers): CLA3 over 5 layers leaves a shorter last group
DECODE_CASES = {
    "MHA": 4,
    "GQA2": 4,
    "MQA": 4,
    "H8-GQA3": 4,
    "MHA-CLA2": 4,
    "GQA2-CLA3": 5,
    "MQA-CLA2": 5,
    "MHA-KV0023": 4,
}


def build(model: ModelSpec, name: str, n_layers: int, backend: str = "eager", dtype: str = "float32") -> Decoder:
    model = model.model_copy(update={"n_layers": n_layers})
    return build_decoder(model, variant_for(name, n_layers), dtype=dtype, device="cpu", backend=backend, seed=1)


def tokens(batch_size: int, n_tokens: int, vocab_size: int = 97) -> Tensor:
    return torch.randint(0, vocab_size, (batch_size, n_tokens), generator=torch.Generator().manual_seed(2))


def full_forward(decoder: Decoder, prompt: Tensor) -> Tensor:
    return decoder(prompt, decoder.allocate_cache(prompt.shape[0], prompt.shape[1]), 0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", DECODE_CASES)
def test_incremental_decode_equals_a_full_causal_forward(tiny_model: ModelSpec, name: str, backend: str) -> None:
    decoder = build(tiny_model, name, DECODE_CASES[name])
    sequence = tokens(2, 7)
    expected = full_forward(decoder, sequence)
    decoder.backend = backend
    cache = decoder.allocate_cache(2, 9)
    steps = [decoder.prefill(sequence[:, :3], cache)]
    steps += [decoder.decode_step(sequence[:, pos : pos + 1], cache, pos) for pos in range(3, 7)]
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", ["GQA2", "MQA-CLA2"])
def test_a_chunk_after_a_prompt_equals_a_full_causal_forward(tiny_model: ModelSpec, name: str, backend: str) -> None:
    decoder = build(tiny_model, name, 4)
    sequence = tokens(2, 8)
    expected = full_forward(decoder, sequence)
    decoder.backend = backend
    cache = decoder.allocate_cache(2, 8)
    logits = torch.cat([decoder(sequence[:, :3], cache, 0), decoder(sequence[:, 3:], cache, 3)], dim=1)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "eager"])
@pytest.mark.parametrize("name", ["MHA", "GQA2", "MQA", "MQA-CLA2"])
def test_every_backend_agrees_with_eager_through_the_stack(
    tiny_model: ModelSpec, name: str, backend: str, dtype: str
) -> None:
    decoder = build(tiny_model, name, 4, dtype=dtype)
    sequence = tokens(2, 7)
    outputs = {}
    for which in ("eager", backend):
        decoder.backend = which
        cache = decoder.allocate_cache(2, 8)
        outputs[which] = torch.cat([decoder(sequence[:, :2], cache, 0), decoder(sequence[:, 2:], cache, 2)], dim=1)
        outputs[which] = torch.cat([outputs[which], decoder.decode_step(sequence[:, -1:], cache, 7)], dim=1)
    tol = 1e-5 if dtype == "float32" else 3e-2
    torch.testing.assert_close(outputs[backend].float(), outputs["eager"].float(), atol=tol, rtol=tol)


def test_gqa_with_as_many_kv_heads_as_query_heads_equals_mha(tiny_model: ModelSpec) -> None:
    mha = build(tiny_model, "MHA", 4)
    gqa = Decoder(tiny_model, Variant("H16-GQA4", head_dim=16, n_heads=4, n_kv_heads=4, kv_layers=(0, 1, 2, 3)))
    gqa.load_state_dict(mha.state_dict())
    sequence = tokens(2, 5)
    torch.testing.assert_close(full_forward(gqa, sequence), full_forward(mha, sequence), atol=0, rtol=0)


def test_sharing_factor_one_equals_no_sharing(tiny_model: ModelSpec) -> None:
    unshared = build(tiny_model, "GQA2", 4)
    shared = Decoder(tiny_model, dataclasses.replace(unshared.variant, kv_layers=sharing_map(4, 1)))
    shared.load_state_dict(unshared.state_dict())
    assert shared.variant.n_kv_layers == 4
    sequence = tokens(2, 5)
    torch.testing.assert_close(full_forward(shared, sequence), full_forward(unshared, sequence), atol=0, rtol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gqa_equals_mha_whose_kv_heads_repeat_within_each_group(tiny_model: ModelSpec, backend: str) -> None:
    gqa = build(tiny_model, "GQA2", 4, backend=backend)
    mha = Decoder(tiny_model, variant_for("MHA", 4), backend=backend)
    state = gqa.state_dict()
    for name, weight in state.items():
        if name.endswith(("wk.weight", "wv.weight")):
            heads = weight.view(2, 1, 16, 64)  # [n_kv_heads, 1, head_dim, d_model]
            state[name] = heads.expand(2, 2, 16, 64).reshape(4 * 16, 64)  # [n_heads*head_dim, d_model]
    mha.load_state_dict(state)
    sequence = tokens(2, 5)
    torch.testing.assert_close(full_forward(mha, sequence), full_forward(gqa, sequence), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["MHA-CLA2", "MQA-CLA2", "MHA-KV0023"])
def test_consumer_layers_have_no_kv_projection(tiny_model: ModelSpec, name: str) -> None:
    decoder = build(tiny_model, name, 4)
    params = {param_name for param_name, _ in decoder.named_parameters()}
    for layer, source in enumerate(decoder.variant.kv_layers):
        has_kv = {f"layers.{layer}.attention.{p}.weight" for p in ("wk", "wv")} <= params
        assert has_kv == (layer == source), f"layer {layer}"
        assert f"layers.{layer}.attention.wq.weight" in params


@pytest.mark.parametrize("name", DECODE_CASES)
def test_parameter_count_equals_accounting(tiny_model: ModelSpec, name: str) -> None:
    decoder = build(tiny_model, name, DECODE_CASES[name])
    n_params = sum(p.numel() for p in decoder.parameters())
    assert n_params == param_counts(decoder.spec, decoder.variant).total


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", DECODE_CASES)
def test_cache_bytes_equal_accounting(tiny_model: ModelSpec, name: str, dtype: str) -> None:
    decoder = build(tiny_model, name, DECODE_CASES[name], dtype=dtype)
    cache = decoder.allocate_cache(3, cache_len(10))
    assert cache.nbytes == kv_cache_bytes(decoder.variant, dtype, 3, 10)
    assert len(cache.k) == len(cache.v) == decoder.variant.n_kv_layers
    assert all(t.dtype == decoder.dtype for t in (*cache.k, *cache.v))


def test_cla2_cache_holds_exactly_half_of_its_bases_bytes(tiny_model: ModelSpec) -> None:
    base = build(tiny_model, "GQA2", 4).allocate_cache(2, 33)
    cla2 = build(tiny_model, "GQA2-CLA2", 4).allocate_cache(2, 33)
    assert 2 * cla2.nbytes == base.nbytes


def test_cache_maps_each_layer_to_its_producer_slot(tiny_model: ModelSpec) -> None:
    cache = build(tiny_model, "MHA-KV0023", 4).allocate_cache(1, 4)
    assert [cache.index_of_layer(layer) for layer in range(4)] == [0, 0, 1, 2]
    assert cache.k[0].shape == (1, 4, 4, 16)  # [batch_size, n_kv_heads, cache_len, head_dim]


def test_forward_writes_kv_only_at_the_new_positions(tiny_model: ModelSpec) -> None:
    decoder = build(tiny_model, "GQA2-CLA2", 4)
    cache = decoder.allocate_cache(2, 10)
    decoder(tokens(2, 3), cache, 4)
    for tensor in (*cache.k, *cache.v):
        assert tensor[:, :, 4:7].abs().sum() > 0
        assert tensor[:, :, :4].abs().sum() == 0 and tensor[:, :, 7:].abs().sum() == 0


def test_forward_rejects_tokens_past_the_end_of_the_cache(tiny_model: ModelSpec) -> None:
    decoder = build(tiny_model, "MQA", 4)
    with pytest.raises(ValueError, match="do not fit"):
        decoder(tokens(2, 3), decoder.allocate_cache(2, 5), 3)


def test_build_decoder_is_deterministic_in_the_seed_and_uses_the_requested_dtype(tiny_model: ModelSpec) -> None:
    variant = variant_for("GQA2", 4)
    first, again, other = (
        build_decoder(tiny_model, variant, dtype="bfloat16", device="cpu", seed=seed) for seed in (0, 0, 1)
    )
    assert all(p.dtype == torch.bfloat16 for p in first.parameters())
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), again.parameters(), strict=True))
    assert not torch.equal(first.output.weight, other.output.weight)
    assert torch.equal(first.norm.weight, torch.ones(64, dtype=torch.bfloat16))


def test_unknown_backend_is_rejected_when_set(tiny_model: ModelSpec) -> None:
    decoder = build(tiny_model, "MHA", 4)
    with pytest.raises(ValueError, match="unknown attention backend"):
        decoder.backend = "auto"


def test_synthetic_fill_writes_only_the_requested_positions_and_follows_the_generator(tiny_model: ModelSpec) -> None:
    decoder = build(tiny_model, "MQA-CLA2", 4)
    caches = [decoder.allocate_cache(2, 12) for _ in range(2)]
    for cache in caches:
        decoder.fill_cache_synthetic(cache, 9, torch.Generator().manual_seed(5))
    for tensor, twin in zip((*caches[0].k, *caches[0].v), (*caches[1].k, *caches[1].v), strict=True):
        assert torch.equal(tensor, twin)
        assert (tensor[:, :, :9] != 0).all() and (tensor[:, :, 9:] == 0).all()


def test_core_attention_reads_every_layers_producer_cache(
    tiny_model: ModelSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoder = build(tiny_model, "MHA-KV0023", 4, backend="grouped")
    cache = decoder.allocate_cache(2, 9)
    decoder.fill_cache_synthetic(cache, 9, torch.Generator().manual_seed(0))
    read: list[tuple[int, str, int]] = []
    real_attend = attention_module.attend

    def recording_attend(q: Tensor, k: Tensor, v: Tensor, *, start_pos: int, backend: str, **scales: object) -> Tensor:
        read.append(([id(t) for t in cache.k].index(id(k)), backend, start_pos))
        return real_attend(q, k, v, start_pos=start_pos, backend=backend)

    monkeypatch.setattr(attention_module, "attend", recording_attend)
    q = torch.randn(2, 4, 1, 16)
    out = decoder.core_attention(q, cache, 8)
    assert read == [(0, "grouped", 8), (0, "grouped", 8), (1, "grouped", 8), (2, "grouped", 8)]
    torch.testing.assert_close(out, real_attend(q, cache.k[2], cache.v[2], start_pos=8, backend="eager"))


def test_zeroed_weights_take_the_same_memory_as_random_ones() -> None:
    spec = ModelSpec(d_model=64, n_layers=2, d_ff=128, vocab_size=97, dtype="float32")
    variant = Variant("H16-MQA", 16, 4, 1, sharing_map(2, 1))
    random = build_decoder(spec, variant, dtype="float32", device="cpu")
    zeroed = build_decoder(spec, variant, dtype="float32", device="cpu", weights="zeros")
    assert [p.shape for p in random.parameters()] == [p.shape for p in zeroed.parameters()]
    assert all(p.count_nonzero() == 0 for p in zeroed.parameters())
    assert any(p.count_nonzero() > 0 for p in random.parameters())


def test_synthetic_weights_draw_a_block_per_tensor_and_repeat_it() -> None:
    spec = ModelSpec(d_model=128, n_layers=2, d_ff=384, vocab_size=97, dtype="float32")
    variant = Variant("H32-MQA", 32, 4, 1, sharing_map(2, 1))
    synthetic = build_decoder(spec, variant, dtype="float32", device="cpu", weights="synthetic", seed=3)
    again = build_decoder(spec, variant, dtype="float32", device="cpu", weights="synthetic", seed=3)
    for (name, p), q in zip(synthetic.named_parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q), name  # deterministic from the seed
        flat = p.detach().view(-1)
        if "norm" in name:
            assert torch.equal(flat, torch.ones_like(flat)), name
            continue
        assert flat.count_nonzero() == flat.numel(), name  # every value written
        block = flat[:SYNTHETIC_WEIGHTS]
        assert abs(block.std().item() - 0.02) < 0.002 and abs(block.mean().item()) < 0.002, name
        for start in range(SYNTHETIC_WEIGHTS, flat.numel(), SYNTHETIC_WEIGHTS):
            rest = flat[start : start + SYNTHETIC_WEIGHTS]
            assert torch.equal(rest, block[: rest.numel()]), name
    ff = synthetic.layers[0].feed_forward.w3.weight  # 384 x 128: three blocks
    assert ff.numel() > 2 * SYNTHETIC_WEIGHTS
    tokens = torch.tensor([[5]])
    cache = synthetic.allocate_cache(1, 8)
    assert torch.isfinite(synthetic.decode_step(tokens, cache, 0)).all()


def test_an_unknown_weight_fill_is_refused() -> None:
    spec = ModelSpec(d_model=64, n_layers=2, d_ff=128, vocab_size=97, dtype="float32")
    variant = Variant("H16-MQA", 16, 4, 1, sharing_map(2, 1))
    with pytest.raises(ValueError, match="weights must be"):
        build_decoder(spec, variant, dtype="float32", device="cpu", weights="ones")  # type: ignore[arg-type]


class _OpCounter(TorchDispatchMode):
    """Counts the aten ops run under it, by overload packet name (``cos``, ``sin``, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("n_layers", [2, 6])
def test_a_decode_step_computes_the_rotary_cos_and_sin_once_whatever_the_depth(
    tiny_model: ModelSpec, n_layers: int
) -> None:
    decoder = build(tiny_model, "GQA2", n_layers, backend="grouped")
    cache = decoder.allocate_cache(1, 8)
    decoder.fill_cache_synthetic(cache, 7)
    with torch.inference_mode(), _OpCounter() as ops:
        decoder.decode_step(tokens(1, 1), cache, 7)
    assert (ops.counts["cos"], ops.counts["sin"]) == (1, 1)
