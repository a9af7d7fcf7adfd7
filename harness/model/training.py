"""The training forward pass of a decoder stack: causal attention over a whole sequence, with autograd.

The layers are the decoder's own (harness/model/decoder.py), run over a cache allocated for the
sequence: each producer writes its K and V (MLA: its latent) for every position into its slot, and
its consumers attend over that same slot (Brandon et al. 2024, arXiv 2405.12981, §2.2). With autograd
on, those slots are exactly the K/V activations training keeps for the backward pass: one K and one
V per producer per token, none of a consumer's own. Attention runs through SDPA, which on CPU and in
flash on CUDA reads shared K/V heads without repeating them (harness/model/sdpa.py).

:func:`saved_bytes` counts what autograd saves for the backward pass (each storage once) and which of
it is K/V, so that a measurement can check the accounting (harness.accounting.train_kv_activation_bytes).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.backend_support import training_problem
from harness.model.decoder import Decoder
from harness.model.kvcache import KVCache
from harness.model.layers import Rotation, rope_angles

# The attention implementation of training steps: SDPA's causal kernels (no K/V copy where a fused
# kernel reads shared heads, see harness/model/sdpa.py).
TRAIN_BACKEND = "sdpa"


def causal_forward(decoder: Decoder, tokens: Tensor) -> tuple[Tensor, KVCache]:
    """Logits [B, T, vocab_size] of every position of tokens [B, T], with autograd, and the K/V slots the
    layers attended over (the K/V activations, alive while the graph is)."""
    problem = training_problem(decoder.variant)
    if problem is not None:
        raise ValueError(problem)
    batch_size, seq_len = tokens.shape
    cache = decoder.allocate_cache(batch_size, seq_len)
    positions = torch.arange(seq_len, device=tokens.device)
    rotation = Rotation.of(rope_angles(positions, decoder.variant.rope_dim, decoder.spec.rope_theta))
    h = decoder.tok_embeddings(tokens)  # [B, T, d_model]
    try:
        for layer, block in enumerate(decoder.layers):
            h = block(h, rotation, cache.layer(layer), 0, TRAIN_BACKEND)
    finally:
        cache.end_step()
    return decoder.output(decoder.norm(h)), cache  # [B, T, vocab_size]


def next_token_loss(decoder: Decoder, tokens: Tensor) -> Tensor:
    """Mean cross-entropy (nats) of predicting tokens[:, 1:] from tokens[:, :-1]; tokens [B, T + 1]."""
    logits, _ = causal_forward(decoder, tokens[:, :-1])  # [B, T, vocab_size]
    return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())  # [B*T, vocab] vs [B*T]


@dataclass
class SavedBytes:
    """Bytes autograd saved for the backward pass during a block, each storage counted once."""

    total_bytes: int = 0
    storages: dict[int, int] = field(default_factory=dict)  # data pointer -> bytes

    def of(self, tensors: list[Tensor]) -> int:
        """Bytes of the saved storages that belong to ``tensors``."""
        pointers = {t.untyped_storage().data_ptr() for t in tensors}
        return sum(nbytes for pointer, nbytes in self.storages.items() if pointer in pointers)


@contextmanager
def saved_bytes() -> Iterator[SavedBytes]:
    """Record every tensor autograd saves inside the block (torch.autograd.graph.saved_tensors_hooks)."""
    record = SavedBytes()

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in record.storages:
            record.storages[storage.data_ptr()] = storage.nbytes()
            record.total_bytes += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield record
