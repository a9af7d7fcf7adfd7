"""Conversions: MHA -> GQA/MQA by mean-pooling K/V heads, any -> CLA by dropping consumers' K/V."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from harness.accounting import param_counts
from harness.model import Decoder, build_decoder
from harness.model.convert import mha_to_gqa, to_cla
from harness.scenario.schema import ModelSpec
from harness.variants import Variant, sharing_map

MHA = Variant(name="H16-MHA", head_dim=16, n_heads=4, n_kv_heads=4, kv_layers=(0, 1, 2, 3))
KV_NAMES = ("wk.weight", "wv.weight")


def build_mha(model: ModelSpec) -> Decoder:
    return build_decoder(model, MHA, dtype="float32", device="cpu", seed=3)


def logits(decoder: Decoder) -> Tensor:
    sequence = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(4))
    return decoder(sequence, decoder.allocate_cache(2, 6), 0)


@torch.no_grad()
def make_kv_heads_identical_within_groups(decoder: Decoder, n_kv_heads: int) -> None:
    group = decoder.variant.n_heads // n_kv_heads
    for name, weight in decoder.named_parameters():
        if name.endswith(KV_NAMES):
            heads = weight.view(n_kv_heads, group, 16, 64)  # [n_kv_heads, group, head_dim, d_model]
            heads.copy_(heads[:, :1].expand_as(heads))


@pytest.mark.parametrize("n_kv_heads", [2, 1])
def test_mean_pooling_mha_whose_kv_heads_are_identical_within_groups_is_exact(
    tiny_model: ModelSpec, n_kv_heads: int
) -> None:
    mha = build_mha(tiny_model)
    make_kv_heads_identical_within_groups(mha, n_kv_heads)
    gqa = mha_to_gqa(mha, n_kv_heads)
    assert gqa.variant.n_kv_heads == n_kv_heads
    torch.testing.assert_close(logits(gqa), logits(mha), atol=1e-6, rtol=1e-6)


def test_mean_pooling_averages_consecutive_kv_heads_and_copies_every_other_weight(tiny_model: ModelSpec) -> None:
    mha = build_mha(tiny_model)
    gqa = mha_to_gqa(mha, 2)
    source = mha.state_dict()
    for name, weight in gqa.state_dict().items():
        if name.endswith(KV_NAMES):
            heads = source[name].split(16)  # 4 heads of [head_dim, d_model]
            expected = torch.cat([(heads[0] + heads[1]) / 2, (heads[2] + heads[3]) / 2])
            torch.testing.assert_close(weight, expected, atol=1e-7, rtol=0)
        else:
            assert torch.equal(weight, source[name]), name


def test_converted_variants_are_named_by_their_paper_spelling(tiny_model: ModelSpec) -> None:
    mha = build_mha(tiny_model)
    assert mha_to_gqa(mha, 2).variant.name == "H16-GQA2"
    assert mha_to_gqa(mha, 1).variant.name == "H16-MQA"
    assert to_cla(mha, sharing_map(4, 2)).variant.name == "H16-MHA-CLA2"
    assert to_cla(mha_to_gqa(mha, 1), sharing_map(4, 2)).variant.name == "H16-MQA-CLA2"


def test_mean_pooling_rejects_groups_of_unequal_size(tiny_model: ModelSpec) -> None:
    with pytest.raises(ValueError, match="groups of equal size"):
        mha_to_gqa(build_mha(tiny_model), 3)


@torch.no_grad()
def test_to_cla_is_exact_when_consumers_would_compute_their_producers_kv(tiny_model: ModelSpec) -> None:
    # A consumer's K/V equal its producer's only if it sees the same input with the same weights:
    # copy the producer's K/V projections and norm into the consumer, and let the producer add nothing
    # to the residual stream (zero attention and MLP output projections), so both layers read the same hidden state.
    mha = build_mha(tiny_model)
    kv_layers = (0, 0, 2, 2)
    params = dict(mha.named_parameters())
    for layer, source in enumerate(kv_layers):
        if layer == source:
            params[f"layers.{layer}.attention.wo.weight"].zero_()
            params[f"layers.{layer}.feed_forward.w2.weight"].zero_()
        else:
            for name in ("attention.wk.weight", "attention.wv.weight", "attention_norm.weight"):
                params[f"layers.{layer}.{name}"].copy_(params[f"layers.{source}.{name}"])
    cla = to_cla(mha, kv_layers)
    torch.testing.assert_close(logits(cla), logits(mha), atol=1e-6, rtol=1e-6)


def test_to_cla_drops_exactly_the_consumers_kv_projections(tiny_model: ModelSpec) -> None:
    mha = build_mha(tiny_model)
    cla = to_cla(mha, (0, 0, 2, 2))
    source = mha.state_dict()
    kept = cla.state_dict()
    dropped = set(source) - set(kept)
    assert dropped == {f"layers.{layer}.attention.{name}" for layer in (1, 3) for name in KV_NAMES}
    assert all(torch.equal(weight, source[name]) for name, weight in kept.items())
    assert sum(p.numel() for p in cla.parameters()) == param_counts(tiny_model, cla.variant).total


def test_to_cla_refuses_a_producer_that_has_no_kv_projection(tiny_model: ModelSpec) -> None:
    cla2 = to_cla(build_mha(tiny_model), sharing_map(4, 2))
    with pytest.raises(ValueError, match="no K/V projection"):
        to_cla(cla2, (0, 1, 2, 2))


def test_conversion_keeps_device_dtype_and_backend(tiny_model: ModelSpec) -> None:
    mha = build_decoder(tiny_model, MHA, dtype="bfloat16", device="cpu", backend="grouped")
    converted = to_cla(mha_to_gqa(mha, 2), sharing_map(4, 2))
    assert converted.dtype == torch.bfloat16 and converted.device == mha.device and converted.backend == "grouped"
