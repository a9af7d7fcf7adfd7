"""A Llama-style decoder stack for one attention variant, with a static, producers-only KV cache.

Token embedding; per layer RMSNorm -> attention -> residual -> RMSNorm -> SwiGLU MLP -> residual;
final RMSNorm; untied LM head; no biases (Touvron et al. 2023, LLaMA, §2.2). Rotary position
embeddings on q and k (Su et al. 2021, RoFormer, eq. 34). The parameter count equals
:func:`harness.accounting.param_counts` exactly.

Cross-layer attention (Brandon et al. 2024, arXiv 2405.12981, §2.2): producer layers
(``kv_layers[i] == i``) own ``wk``/``wv`` and a slot in the cache; consumer layers have neither
and attend over their producer's slot with their own queries.

A variant with multi-head latent attention builds :class:`harness.model.mla.LatentAttention` layers
instead. A layer with a sliding window attends to its last ``window`` positions, from a ring buffer
of that many positions (harness/model/kvcache.py); an 8-bit cache stores float8 values with float32
scales, which attention reads and dequantises itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import backends
from harness.backend_support import mla_forms, unsupported_reason
from harness.model.attention import attend_visible
from harness.model.chunked import PackedSlot, chunked_step, packed_query_shape
from harness.model.kvcache import KVCache, LayerCache, Visible, slot_tensors
from harness.model.layers import RMSNorm, Rotation, apply_rope, rope_angles
from harness.model.mla import LatentAttention
from harness.model.paged import PagedKVCache, PagedVisible, allocate, fill_synthetic, ragged_shifts
from harness.model.quant import FP8_DTYPES, fit_scale, quantize
from harness.scenario.schema import ModelSpec
from harness.variants import Variant

__all__ = ["Decoder", "KVCache", "RMSNorm", "Rotation", "apply_rope", "rope_angles"]

# Positions drawn at random per cache tensor by fill_cache_synthetic; the rest repeat them.
SYNTHETIC_BLOCK = 256
# Values drawn at random per weight tensor by init_weights_synthetic (64 KiB of float32); the rest
# repeat them.
SYNTHETIC_WEIGHTS = 16384


class Attention(nn.Module):
    """Query and output projections, plus K and V projections when the layer is a producer."""

    def __init__(self, d_model: int, variant: Variant, *, produces_kv: bool) -> None:
        super().__init__()
        self.n_heads = variant.n_heads
        self.n_kv_heads = variant.n_kv_heads
        self.head_dim = variant.head_dim
        self.wq = nn.Linear(d_model, variant.n_heads * variant.head_dim, bias=False)
        self.wk: nn.Linear | None = None
        self.wv: nn.Linear | None = None
        if produces_kv:
            self.wk = nn.Linear(d_model, variant.n_kv_heads * variant.head_dim, bias=False)
            self.wv = nn.Linear(d_model, variant.n_kv_heads * variant.head_dim, bias=False)
        self.wo = nn.Linear(variant.n_heads * variant.head_dim, d_model, bias=False)
        self.softmax_scale: float | None = None  # the default 1/sqrt(head_dim)

    def forward(self, x: Tensor, rotation: Rotation, slot: LayerCache, start_pos: int, backend: str) -> Tensor:
        batch_size, n_new, _ = x.shape
        q = self.wq(x).view(batch_size, n_new, self.n_heads, self.head_dim)  # [B, T, n_heads, head_dim]
        q = apply_rope(q, rotation).transpose(1, 2)  # [B, n_heads, T, head_dim]
        if self.wk is not None and self.wv is not None:
            k = self.wk(x).view(batch_size, n_new, self.n_kv_heads, self.head_dim)  # [B, T, n_kv_heads, head_dim]
            v = self.wv(x).view(batch_size, n_new, self.n_kv_heads, self.head_dim)  # [B, T, n_kv_heads, head_dim]
            # cache layout [B, n_kv_heads, held, head_dim]: positions start_pos .. start_pos + T - 1
            slot.store(apply_rope(k, rotation).transpose(1, 2), v.transpose(1, 2), start_pos)
        out = self.attend_cache(q, slot, start_pos, backend)  # [B, n_heads, T, head_dim]
        out = out.transpose(1, 2).reshape(batch_size, n_new, self.n_heads * self.head_dim)  # [B, T, n_heads*head_dim]
        return self.wo(out)

    def attend_cache(self, q: Tensor, slot: LayerCache, start_pos: int, backend: str) -> Tensor:
        """The attention op over the slot, for queries q [B, n_heads, T, head_dim] at positions start_pos ...
        (a chunked-prefill step's packed slot: part by part)."""
        if isinstance(slot, PackedSlot):
            return slot.attend_parts(q, lambda part, rows: self.attend_cache(part, rows, start_pos, backend))
        return attend_visible(q, slot.visible(start_pos, q.shape[2]), slot, backend=backend)

    def core_query_width(self, backend: str) -> int:
        return self.head_dim


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) · w3 x) (Shazeer 2020, "GLU Variants Improve Transformer", eq. 6)."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff, bias=False)  # gate
        self.w3 = nn.Linear(d_model, d_ff, bias=False)  # up
        self.w2 = nn.Linear(d_ff, d_model, bias=False)  # down

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """One pre-norm decoder layer."""

    def __init__(self, model: ModelSpec, variant: Variant, *, produces_kv: bool) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(model.d_model, model.norm_eps)
        self.attention: Attention | LatentAttention
        if variant.mla is not None:
            self.attention = LatentAttention(model.d_model, variant, produces_kv=produces_kv, norm_eps=model.norm_eps)
        else:
            self.attention = Attention(model.d_model, variant, produces_kv=produces_kv)
        self.ffn_norm = RMSNorm(model.d_model, model.norm_eps)
        self.feed_forward = FeedForward(model.d_model, model.d_ff)

    def forward(self, x: Tensor, rotation: Rotation, slot: LayerCache, start_pos: int, backend: str) -> Tensor:
        h = x + self.attention(self.attention_norm(x), rotation, slot, start_pos, backend)
        return h + self.feed_forward(self.ffn_norm(h))


class Decoder(nn.Module):
    """The decoder stack of one variant. ``backend`` picks the attention implementation and may be changed."""

    def __init__(self, model: ModelSpec, variant: Variant, *, backend: str = "eager") -> None:
        super().__init__()
        if variant.n_layers != model.n_layers:
            raise ValueError(f"variant {variant.name} maps {variant.n_layers} layers, the model has {model.n_layers}")
        self.spec = model
        self.variant = variant
        self.backend = backend
        self.tok_embeddings = nn.Embedding(model.vocab_size, model.d_model)
        self.layers = nn.ModuleList(
            Block(model, variant, produces_kv=variant.kv_layers[layer] == layer) for layer in range(model.n_layers)
        )
        self.norm = RMSNorm(model.d_model, model.norm_eps)
        self.output = nn.Linear(model.d_model, model.vocab_size, bias=False)

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, backend: str) -> None:
        """Any attention backend that can run this variant (and ``naive`` for MLA); ValueError with the reason."""
        try:
            backends.get(backend)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        reason = unsupported_reason(backend, self.variant)
        if reason is not None:
            raise ValueError(reason)
        self._backend = backend

    @property
    def device(self) -> torch.device:
        return self.output.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.output.weight.dtype

    @property
    def cache_dtype(self) -> torch.dtype:
        """The dtype of the cache: the variant's KV dtype, else the weights'."""
        return FP8_DTYPES[self.variant.kv_dtype] if self.variant.kv_dtype is not None else self.dtype

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Normal(0, 0.02) linear and embedding weights, unit norm weights, in place."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                module.weight.normal_(0.0, 0.02, generator=generator)
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)

    @torch.no_grad()
    def init_weights_synthetic(self, generator: torch.Generator | None = None) -> None:
        """What :meth:`init_weights` gives, for timing: each weight's first SYNTHETIC_WEIGHTS values are
        drawn from Normal(0, 0.02) and copied along the rest of it, so that initialising runs at memory
        speed rather than at the random generator's (which cost a quarter of a small cell's worker).
        The values have the same distribution and every byte is written; only their independence is
        lost, which no kernel's speed depends on. Nothing is allocated beyond the weights."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                flat = module.weight.view(-1)
                drawn = min(flat.numel(), SYNTHETIC_WEIGHTS)
                flat[:drawn].normal_(0.0, 0.02, generator=generator)
                while drawn < flat.numel():  # doubling copies of the part filled so far
                    step = min(drawn, flat.numel() - drawn)
                    flat[drawn : drawn + step].copy_(flat[:step])
                    drawn += step
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)

    def allocate_cache(
        self, batch_size: int, cache_len: int, *, page_seed: int = 0, lengths: Sequence[int] | None = None
    ) -> KVCache:
        """Zeroed slots for every producer layer, each holding cache_len positions, or its window's worth.

        K and V: [batch_size, n_kv_heads, held, head_dim] each; MLA: the latent [batch_size, 1, held,
        d_c + d_h^R], whose first d_c columns are the values (a view). An 8-bit cache gets scales of 1.
        A variant with a ``page_size`` gets pools of pages and block tables shuffled with ``page_seed``
        (harness/model/paged.py). A ragged batch gives each sequence's context in ``lengths`` (the longest
        cache_len - 1): decode steps at the longest's position write each sequence at its own
        (harness/lengths.py); a paged cache then holds only each sequence's pages.
        """
        variant, device, dtype = self.variant, self.device, self.cache_dtype
        if lengths is not None and (len(lengths) != batch_size or max(lengths) != cache_len - 1 or min(lengths) < 0):
            raise ValueError(f"a ragged batch of {batch_size} needs as many lengths, the longest {cache_len - 1}")
        if variant.page_size is not None:
            return allocate(variant, batch_size, cache_len, dtype=dtype, device=device, seed=page_seed, lengths=lengths)
        k, v, k_scale, v_scale, windows = [], [], [], [], []
        for producer in variant.producers:
            window = variant.windows[producer]
            held = cache_len if window is None else min(cache_len, window)
            windows.append(window)
            slot_k, slot_v, slot_k_scale, slot_v_scale = slot_tensors(variant, batch_size, held, device, dtype)
            k.append(slot_k)
            v.append(slot_v)
            if slot_k_scale is not None and slot_v_scale is not None:
                k_scale.append(slot_k_scale)
                v_scale.append(slot_v_scale)
        return KVCache(
            shifts=None if lengths is None else ragged_shifts(lengths, device),
            k=k,
            v=v,
            kv_layers=variant.kv_layers,
            positions=cache_len,
            windows=tuple(windows),
            k_scale=list(k_scale),
            v_scale=list(v_scale),
        )

    @torch.no_grad()
    def fill_cache_synthetic(self, cache: KVCache, length: int, generator: torch.Generator | None = None) -> None:
        """Standard-normal cache contents for positions [0, length) of every producer, without a forward pass.

        For long contexts where only timing matters: one random block of SYNTHETIC_BLOCK positions
        is drawn per tensor and copied along the sequence, so filling runs at memory speed rather
        than at the random generator's. A windowed slot holds only its last ``window`` positions, so it
        is filled up to its length. An 8-bit slot's scale is fitted to the drawn block. A ``generator``
        must live on the cache's device.
        """
        if not 0 <= length <= cache.cache_len:
            raise ValueError(f"cannot fill {length} positions of a cache of {cache.cache_len}")
        per_head = self.variant.kv_scale == "head"
        if isinstance(cache, PagedKVCache):
            fill_synthetic(cache, per_head, generator)  # every page: which positions a page holds is the table's
            return
        for tensor, scale in self._filled(cache):
            n_fill = min(length, tensor.shape[2])
            if n_fill == 0:  # a prefill's empty cache: nothing to fill
                continue
            n_block = min(n_fill, SYNTHETIC_BLOCK)
            block = tensor[:, :, :n_block]  # [B, heads, block, width]
            if scale is None:
                block.normal_(generator=generator)
            else:
                drawn = torch.empty(block.shape, device=tensor.device).normal_(generator=generator)
                scale.copy_(fit_scale(drawn, tensor.dtype, per_head))
                block.copy_(quantize(drawn, scale, tensor.dtype))
            for start in range(n_block, n_fill, n_block):
                end = min(start + n_block, n_fill)
                tensor[:, :, start:end].copy_(block[:, :, : end - start])

    @staticmethod
    def _filled(cache: KVCache) -> list[tuple[Tensor, Tensor | None]]:
        """Each tensor that owns cache values with its scale: K slots, then V slots that are not views of K."""
        out: list[tuple[Tensor, Tensor | None]] = []
        for index, slot in enumerate(cache.slots):
            out.append((cache.k[index], slot.k_scale))
        for index, slot in enumerate(cache.slots):
            if not slot.shares_values:
                out.append((cache.v[index], slot.v_scale))
        return out

    @torch.no_grad()
    def forward(self, tokens: Tensor, cache: KVCache, start_pos: int) -> Tensor:
        """Logits [B, T, vocab_size] for tokens [B, T] at positions start_pos .. start_pos + T - 1.

        Producers write their new K/V (or latents) into the cache at those positions before attending.
        Inference only: no autograd graph is kept, so the cache never holds one across steps.
        """
        n_new = tokens.shape[1]
        if start_pos < 0 or start_pos + n_new > cache.cache_len:
            raise ValueError(f"positions {start_pos}..{start_pos + n_new - 1} do not fit a cache of {cache.cache_len}")
        if tokens.shape[0] != cache.batch_size:
            raise ValueError(f"batch of {tokens.shape[0]} sequences for a cache of {cache.batch_size}")
        ragged = cache.sequence_positions(start_pos, n_new)  # [B, T] in a ragged batch
        if ragged is not None:
            rotation = ragged_rotation(ragged, self.variant.rope_dim, self.spec.rope_theta)
        else:
            positions = torch.arange(start_pos, start_pos + n_new, device=tokens.device)
            rotation = Rotation.of(rope_angles(positions, self.variant.rope_dim, self.spec.rope_theta))
        h = self.tok_embeddings(tokens)  # [B, T, d_model]
        try:
            for layer, block in enumerate(self.layers):
                h = block(h, rotation, cache.layer(layer), start_pos, self.backend)
        finally:
            cache.end_step()
        return self.output(self.norm(h))  # [B, T, vocab_size]

    def prefill(self, tokens: Tensor, cache: KVCache) -> Tensor:
        """Forward over a prompt [B, T] from position 0."""
        return self(tokens, cache, 0)

    def decode_step(self, tokens: Tensor, cache: KVCache, pos: int) -> Tensor:
        """Logits [B, T, vocab_size] for T new tokens per sequence, tokens [B, T], at positions ``pos`` ...
        (T = 1: a decode step; more: a verification step, causal within the new tokens). A chunked-prefill
        variant runs its packed step instead (harness/model/chunked.py): logits [1, chunk + B - 1, vocab_size]."""
        if self.variant.chunk is not None:
            return chunked_step(self, tokens, cache, pos)
        return self(tokens, cache, pos)

    def core_query_shape(self, batch_size: int, n_new: int | None = None) -> tuple[int, int, int, int]:
        """Shape of the query :meth:`core_attention` takes: [B, n_heads, n_new, width] (n_new default q_len; a
        prefill's is its prompt), width per the backend's form (head_dim; for MLA the absorbed d_c + d_h^R, or
        d_h + d_h^R for ``naive``)."""
        width = self._attention(0).core_query_width(self.backend)
        shape = (batch_size, self.variant.n_heads, self.variant.q_len if n_new is None else n_new, width)
        return shape if self.variant.chunk is None else packed_query_shape(shape, self.variant.chunk)

    def core_attention(self, q: Tensor, cache: KVCache, pos: int) -> Tensor:
        """The attention op alone, for each of the L layers, over what its producer's slot holds for position ``pos``.

        q: see :meth:`core_query_shape`. Consumers re-read their producer's cache, as in a decode step
        (paper §2.3). MLA's ``naive`` form decompresses the latent here, as it does in every step.
        Returns the last layer's output [B, n_heads, 1, value width].
        """
        out = q
        for layer_attention in self.core_attention_layers(q, cache, pos):
            out = layer_attention()
        return out

    def core_attention_layers(self, q: Tensor, cache: KVCache, pos: int) -> list[Callable[[], Tensor]]:
        """:meth:`core_attention` as one call per layer, in layer order (each returns that layer's output)."""

        chunk = self.variant.chunk
        slots = [slot if chunk is None else PackedSlot.of(slot, chunk) for slot in cache.slots]

        def layer_attention(layer: int) -> Callable[[], Tensor]:
            slot = slots[cache.index_of_layer(layer)]
            return lambda: self._attention(layer).attend_cache(q, slot, pos, self.backend)

        return [layer_attention(layer) for layer in range(self.variant.n_layers)]

    def supports(self, backend: str) -> str | None:
        """Why ``backend`` cannot run this variant on the decoder's device, or None if it can."""
        return unsupported_reason(backend, self.variant, self.device.type)

    def reference_attention(self, q: Tensor, cache: KVCache, pos: int) -> Tensor:
        """The last layer's attention op for q (:meth:`core_query_shape`) in the textbook form, one query head
        at a time so that no KV head is repeated ``group`` times: what every backend must agree with.

        MLA's ``naive`` form has its own query width and no cheaper reference; it is computed as it runs.
        """
        layer = self.variant.n_layers - 1
        slot = cache.layer(layer)
        if self.variant.chunk is not None:  # a chunked-prefill step's packed query: part by part
            packed = PackedSlot.of(slot, self.variant.chunk)
            return packed.attend_parts(q, lambda part, rows: self._reference(layer, part, rows, pos))
        return self._reference(layer, q, slot, pos)

    def _reference(self, layer: int, q: Tensor, slot: LayerCache, pos: int) -> Tensor:
        """:meth:`reference_attention` of ``layer`` over one slot."""
        attention = self._attention(layer)
        if self.backend in mla_forms():
            return attention.attend_cache(q, slot, pos, self.backend)
        visible = slot.visible(pos, q.shape[2])
        if isinstance(visible, PagedVisible):
            visible = visible.gathered()  # the positions in order: the reference reads no pages
        group = q.shape[1] // visible.k.shape[1]
        heads = []
        for head in range(q.shape[1]):
            kv = head // group
            one = LayerCache(
                visible.k[:, kv : kv + 1],
                visible.v[:, kv : kv + 1],
                None,
                _scale_of(slot.k_scale, kv),
                _scale_of(slot.v_scale, kv),
            )  # KV head kv alone: [B, 1, S, width]
            heads.append(
                attend_visible(
                    q[:, head : head + 1],
                    Visible(one.k, one.v, visible.start_pos, None, visible.lengths),
                    one,
                    backend="eager",
                    scale=attention.softmax_scale,
                )
            )  # each [B, 1, 1, value width]
        return torch.cat(heads, dim=1)  # [B, n_heads, 1, value width]

    def softmax_scale(self, layer: int) -> float:
        """The factor layer ``layer`` scales its scores by (1/sqrt(head_dim); MLA: 1/sqrt(d_h + d_h^R))."""
        scale = self._attention(layer).softmax_scale
        return scale if scale is not None else 1.0 / math.sqrt(self.variant.head_dim)

    def _attention(self, layer: int) -> Attention | LatentAttention:
        return cast(Block, self.layers[layer]).attention


def ragged_rotation(positions: Tensor, rope_dim: int, theta: float) -> Rotation:
    """The rotation of each sequence's own positions [B, T] (a ragged batch): cos and sin [B, T, 1, rope_dim / 2]."""
    angles = rope_angles(positions.flatten(), rope_dim, theta).view(*positions.shape, -1)  # [B, T, rope_dim/2]
    return Rotation(angles.cos()[:, :, None, :], angles.sin()[:, :, None, :])


def _scale_of(scale: Tensor | None, kv_head: int) -> Tensor | None:
    """The scale that applies to one KV head: the tensor's one scale, or that head's."""
    if scale is None or scale.numel() == 1:
        return scale
    return scale[kv_head : kv_head + 1]
