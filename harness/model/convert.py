"""Conversions between variants of one trained stack, as in the GQA and CLA papers.

- MHA -> GQA/MQA: mean-pool the K and V projection heads within each group (Ainslie et al. 2023,
  "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints", §2.1).
- any -> CLA: drop the consumers' K and V projections (for MLA: the latent projection W^DKV/W^KR and
  its norm); consumers read their producer's cache (Brandon et al. 2024, arXiv 2405.12981, §2.2).

Every other weight is copied unchanged. The result lives on the source's device and dtype.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from harness.model.decoder import Decoder
from harness.variants import Variant


def _named(variant: Variant) -> Variant:
    """The variant renamed to its paper-style spelling."""
    return dataclasses.replace(variant, name=variant.describe())


def _rebuild(source: Decoder, variant: Variant, state: dict[str, Tensor]) -> Decoder:
    """A decoder of ``variant`` on the source's device and dtype, holding exactly ``state``."""
    with torch.device("meta"):
        target = Decoder(source.spec, variant, backend=source.backend)
    target = target.to(dtype=source.dtype).to_empty(device=source.device)
    target.load_state_dict(state, strict=True)
    return target.train(source.training)


def _pool_heads(weight: Tensor, n_kv_heads: int, head_dim: int) -> Tensor:
    """Mean of each group of consecutive heads of a projection weight [heads*head_dim, d_model]."""
    d_model = weight.shape[1]
    heads = weight.view(n_kv_heads, -1, head_dim, d_model)  # [n_kv_heads, group, head_dim, d_model]
    pooled = heads.float().mean(dim=1).to(weight.dtype)  # [n_kv_heads, head_dim, d_model]
    return pooled.reshape(n_kv_heads * head_dim, d_model)  # [n_kv_heads*head_dim, d_model]


def mha_to_gqa(mha: Decoder, n_kv_heads: int) -> Decoder:
    """GQA with ``n_kv_heads`` KV heads (MQA for 1) by mean-pooling K/V heads within each group.

    Group j pools source KV heads j·r .. (j+1)·r - 1, r = source n_kv_heads / n_kv_heads, so query head
    h keeps reading the pool of the heads it read before. The source may itself be GQA.
    """
    source = mha.variant
    if n_kv_heads < 1 or source.n_kv_heads % n_kv_heads:
        raise ValueError(f"cannot pool {source.n_kv_heads} KV heads into {n_kv_heads} groups of equal size")
    variant = _named(dataclasses.replace(source, n_kv_heads=n_kv_heads))
    state = {
        name: _pool_heads(tensor, n_kv_heads, source.head_dim) if name.endswith(("wk.weight", "wv.weight")) else tensor
        for name, tensor in mha.state_dict().items()
    }
    return _rebuild(mha, variant, state)


def to_cla(model: Decoder, kv_layers: tuple[int, ...]) -> Decoder:
    """The stack with KV map ``kv_layers``: consumers lose their K/V projections and read their producer's cache.

    Every producer of the new map must be a producer of the source, since its K/V projection is kept.
    """
    source = model.variant
    variant = _named(dataclasses.replace(source, kv_layers=tuple(kv_layers)))
    if variant.n_layers != source.n_layers:
        raise ValueError(f"KV map has {variant.n_layers} entries for a {source.n_layers}-layer model")
    lost = [layer for layer in variant.producers if layer not in source.producers]
    if lost:
        raise ValueError(f"layers {lost} would produce K/V but have no K/V projection in {source.name}")
    consumers = {layer for layer in range(variant.n_layers) if layer not in variant.producers}
    cache_writers = ("wkv_a", "kv_norm") if variant.mla is not None else ("wk", "wv")
    dropped = {f"layers.{layer}.attention.{proj}.weight" for layer in consumers for proj in cache_writers}
    state = {name: tensor for name, tensor in model.state_dict().items() if name not in dropped}
    return _rebuild(model, variant, state)
