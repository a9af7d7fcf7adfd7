"""Chunked prefill: one step that runs a chunk of one sequence's prompt beside one decode token of each other.

Serving engines mix prefill and decode in one batch (Agrawal et al. 2024, "Taming Throughput-Latency
Tradeoff in LLM Inference with Sarathi-Serve", §4.2: chunked prefills with stall-free batching): the
tokens of all sequences are packed into one row, so every weight is read once for the whole step, and
only attention separates them again. Here sequence 0 adds ``chunk`` prompt tokens at positions
``pos .. pos + chunk - 1`` and each of the other B - 1 sequences one decode token at ``pos``; every
sequence already holds ``pos`` positions.

The stack's projections, norms, MLP and LM head run on the packed tokens [1, chunk + B - 1, d_model];
each producer's new K/V (or latent) and each layer's queries are split back per part by a
:class:`PackedSlot`: the chunk's queries attend sequence 0's slot causally, the decode queries each
their own sequence's slot, through the same backend, contiguous or paged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from harness.model.kvcache import KVCache, LayerCache, Visible
from harness.model.layers import Rotation, rope_angles
from harness.model.paged import PagedLayerCache

if TYPE_CHECKING:
    from harness.model.decoder import Decoder


def rows_of(slot: LayerCache, rows: slice) -> LayerCache:
    """The slot of sequences ``rows`` alone: views of a contiguous slot's rows, or a paged slot's pool with
    those rows of its block table. Writes through it land in ``slot``."""
    if isinstance(slot, PagedLayerCache):
        return dataclasses.replace(slot, block_table=slot.block_table[rows])
    return dataclasses.replace(slot, k=slot.k[rows], v=slot.v[rows])


@dataclass
class PackedSlot(LayerCache):
    """A producer's slot as a packed chunked-prefill step sees it: tensors of the step's tokens come as
    [1, heads, chunk + B - 1, width], the chunk's first. ``store`` writes each part into its sequences'
    rows; attention reads each part's rows through :meth:`attend_parts`, never through ``visible``."""

    chunk: int = 1
    chunk_part: LayerCache | None = field(default=None, repr=False)  # sequence 0's rows
    decode_part: LayerCache | None = field(default=None, repr=False)  # the other sequences' rows; None for B = 1

    @classmethod
    def of(cls, slot: LayerCache, chunk: int) -> PackedSlot:
        batch_size = slot.block_table.shape[0] if isinstance(slot, PagedLayerCache) else slot.k.shape[0]
        return cls(
            slot.k,
            slot.v,
            slot.window,
            slot.k_scale,
            slot.v_scale,
            chunk=chunk,
            chunk_part=rows_of(slot, slice(0, 1)),
            decode_part=rows_of(slot, slice(1, batch_size)) if batch_size > 1 else None,
        )

    def split(self, packed: Tensor) -> tuple[Tensor, Tensor]:
        """[1, heads, chunk + B - 1, width] -> the chunk's [1, heads, chunk, width] and the decode tokens'
        [B - 1, heads, 1, width]."""
        chunk, decode = packed[:, :, : self.chunk], packed[0, :, self.chunk :]  # decode: [heads, B - 1, width]
        return chunk, decode.transpose(0, 1).unsqueeze(2)

    def store(self, k_new: Tensor, v_new: Tensor | None, start_pos: int) -> None:
        assert self.chunk_part is not None
        k_chunk, k_decode = self.split(k_new)
        v_chunk, v_decode = (None, None) if v_new is None else self.split(v_new)
        self.chunk_part.store(k_chunk, v_chunk, start_pos)
        if self.decode_part is not None:
            self.decode_part.store(k_decode, v_decode, start_pos)

    def visible(self, start_pos: int, n_new: int) -> Visible:
        raise TypeError("a packed chunked-prefill slot is read part by part (attend_parts), not as one batch")

    def attend_parts(self, q: Tensor, attend: Callable[[Tensor, LayerCache], Tensor]) -> Tensor:
        """``attend`` (queries, slot) -> output, on the chunk's queries over sequence 0's rows and on the decode
        queries over the others'; q [1, heads, chunk + B - 1, width] -> [1, heads, chunk + B - 1, out width]."""
        assert self.chunk_part is not None
        q_chunk, q_decode = self.split(q)
        out = attend(q_chunk, self.chunk_part)  # [1, heads, chunk, out width]
        if self.decode_part is None:
            return out
        decoded = attend(q_decode, self.decode_part)  # [B - 1, heads, 1, out width]
        return torch.cat((out, decoded[:, :, 0].transpose(0, 1).unsqueeze(0)), dim=2)


def packed_tokens(tokens: Tensor, chunk: int) -> Tensor:
    """The step's tokens [1, chunk + B - 1] from tokens [B, >= chunk]: sequence 0's first ``chunk``, then the
    first token of each other sequence."""
    return torch.cat((tokens[0, :chunk], tokens[1:, 0]))[None]


def packed_query_shape(shape: tuple[int, int, int, int], chunk: int) -> tuple[int, int, int, int]:
    """The packed form [1, heads, chunk + B - 1, width] of a query shape [B, heads, T, width]."""
    batch_size, heads, _, width = shape
    return (1, heads, chunk + batch_size - 1, width)


def chunked_step(decoder: Decoder, tokens: Tensor, cache: KVCache, pos: int) -> Tensor:
    """Logits [1, chunk + B - 1, vocab_size] of one chunked-prefill step: sequence 0's tokens[0, :chunk] at
    positions pos .. pos + chunk - 1, then each other sequence's tokens[b, 0] at pos (tokens [B, chunk])."""
    chunk = decoder.variant.chunk
    assert chunk is not None
    batch_size = cache.batch_size
    if tokens.shape[0] != batch_size or tokens.shape[1] < chunk:
        raise ValueError(f"a chunked step of {chunk} takes tokens [{batch_size}, {chunk}], got {list(tokens.shape)}")
    if pos < 0 or pos + chunk > cache.cache_len:
        raise ValueError(f"positions {pos}..{pos + chunk - 1} do not fit a cache of {cache.cache_len}")
    device = tokens.device
    decode_positions = torch.full((batch_size - 1,), pos, device=device)
    positions = torch.cat((torch.arange(pos, pos + chunk, device=device), decode_positions))  # [chunk + B - 1]
    rotation = Rotation.of(rope_angles(positions, decoder.variant.rope_dim, decoder.spec.rope_theta))
    h = decoder.tok_embeddings(packed_tokens(tokens, chunk))  # [1, chunk + B - 1, d_model]
    slots = [PackedSlot.of(slot, chunk) for slot in cache.slots]
    try:
        for layer, block in enumerate(decoder.layers):
            h = block(h, rotation, slots[cache.index_of_layer(layer)], pos, decoder.backend)
    finally:
        cache.end_step()
    return decoder.output(decoder.norm(h))  # [1, chunk + B - 1, vocab_size]
