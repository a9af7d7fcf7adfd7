"""A Llama-style decoder stack for one attention variant, with a static, producers-only KV cache.

Token embedding; per layer RMSNorm -> attention -> residual -> RMSNorm -> SwiGLU MLP -> residual;
final RMSNorm; untied LM head; no biases (Touvron et al. 2023, LLaMA, §2.2). Rotary position
embeddings on q and k (Su et al. 2021, RoFormer, eq. 34). The parameter count equals
:func:`harness.accounting.param_counts` exactly.

Cross-layer attention (Brandon et al. 2024, arXiv 2405.12981, §2.2): producer layers
(``kv_layers[i] == i``) own ``wk``/``wv`` and a slot in the cache; consumer layers have neither
and attend over their producer's slot with their own queries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.model.attention import BACKENDS, attend
from harness.scenario.schema import ModelSpec
from harness.variants import Variant

# Positions drawn at random per cache tensor by fill_cache_synthetic; the rest repeat them.
SYNTHETIC_BLOCK = 256


@dataclass
class KVCache:
    """Preallocated K and V per producer layer, each [batch_size, n_kv_heads, cache_len, head_dim].

    Static: written in place by position, never grown or concatenated.
    """

    k: list[Tensor]  # one per producer, in layer order
    v: list[Tensor]  # one per producer, in layer order
    kv_layers: tuple[int, ...]  # the variant's map: entry i is the layer whose KV layer i reads
    _slots: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        producers = [layer for layer, source in enumerate(self.kv_layers) if layer == source]
        if not len(self.k) == len(self.v) == len(producers):
            raise ValueError(
                f"{len(producers)} producer layers need as many K and V tensors, got {len(self.k)}, {len(self.v)}"
            )
        self._slots = tuple(producers.index(source) for source in self.kv_layers)

    def index_of_layer(self, layer: int) -> int:
        """The producer slot (index into ``k`` and ``v``) that ``layer`` reads."""
        return self._slots[layer]

    @property
    def nbytes(self) -> int:
        """Bytes of all cache tensors: kv_bytes_per_token · batch_size · cache_len (docs/design.md)."""
        return sum(t.element_size() * t.numel() for t in (*self.k, *self.v))

    @property
    def batch_size(self) -> int:
        return self.k[0].shape[0]

    @property
    def cache_len(self) -> int:
        return self.k[0].shape[2]


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · weight, computed in float32 (Zhang & Sennrich 2019, eq. 4)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_angles(positions: Tensor, head_dim: int, theta: float) -> Tensor:
    """Rotation angles [T, head_dim // 2] in float32: position · theta^(-2i/head_dim) (RoFormer, eq. 15)."""
    inv_freq = theta ** -(torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    return torch.outer(positions.float(), inv_freq)


@dataclass(frozen=True)
class Rotation:
    """cos and sin of the rotary angles of one step's positions, each [1, T, 1, head_dim // 2] in float32.

    Computed once per forward pass and shared by the q and k rotations of every layer, as gpt-fast
    shares its table: per-layer trigonometry would add 4 · n_layers small ops to every decode step.
    """

    cos: Tensor
    sin: Tensor

    @classmethod
    def of(cls, angles: Tensor) -> Rotation:
        """From angles [T, head_dim // 2] (see :func:`rope_angles`)."""
        return cls(angles.cos()[None, :, None, :], angles.sin()[None, :, None, :])


def apply_rope(x: Tensor, rotation: Rotation) -> Tensor:
    """Rotate adjacent pairs of x [B, T, heads, head_dim] by the step's rotation, in float32."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)  # [B, T, heads, head_dim/2, 2]
    cos, sin = rotation.cos, rotation.sin  # [1, T, 1, head_dim/2]
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)  # [B, T, heads, head_dim/2, 2]
    return rotated.flatten(-2).type_as(x)  # [B, T, heads, head_dim]


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

    def forward(
        self, x: Tensor, rotation: Rotation, cache_k: Tensor, cache_v: Tensor, start_pos: int, backend: str
    ) -> Tensor:
        batch_size, n_new, _ = x.shape
        q = self.wq(x).view(batch_size, n_new, self.n_heads, self.head_dim)  # [B, T, n_heads, head_dim]
        q = apply_rope(q, rotation).transpose(1, 2)  # [B, n_heads, T, head_dim]
        if self.wk is not None and self.wv is not None:
            k = self.wk(x).view(batch_size, n_new, self.n_kv_heads, self.head_dim)  # [B, T, n_kv_heads, head_dim]
            v = self.wv(x).view(batch_size, n_new, self.n_kv_heads, self.head_dim)  # [B, T, n_kv_heads, head_dim]
            # cache layout [B, n_kv_heads, cache_len, head_dim]: write positions start_pos .. start_pos + T - 1
            cache_k[:, :, start_pos : start_pos + n_new] = apply_rope(k, rotation).transpose(1, 2)
            cache_v[:, :, start_pos : start_pos + n_new] = v.transpose(1, 2)
        out = attend(q, cache_k, cache_v, start_pos=start_pos, backend=backend)  # [B, n_heads, T, head_dim]
        out = out.transpose(1, 2).reshape(batch_size, n_new, self.n_heads * self.head_dim)  # [B, T, n_heads*head_dim]
        return self.wo(out)


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
        self.attention = Attention(model.d_model, variant, produces_kv=produces_kv)
        self.ffn_norm = RMSNorm(model.d_model, model.norm_eps)
        self.feed_forward = FeedForward(model.d_model, model.d_ff)

    def forward(
        self, x: Tensor, rotation: Rotation, cache_k: Tensor, cache_v: Tensor, start_pos: int, backend: str
    ) -> Tensor:
        h = x + self.attention(self.attention_norm(x), rotation, cache_k, cache_v, start_pos, backend)
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
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        self._backend = backend

    @property
    def device(self) -> torch.device:
        return self.output.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.output.weight.dtype

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Normal(0, 0.02) linear and embedding weights, unit norm weights, in place."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                module.weight.normal_(0.0, 0.02, generator=generator)
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)

    def allocate_cache(self, batch_size: int, cache_len: int) -> KVCache:
        """Zeroed K and V for every producer layer, [batch_size, n_kv_heads, cache_len, head_dim] each."""
        shape = (batch_size, self.variant.n_kv_heads, cache_len, self.variant.head_dim)
        n_producers = self.variant.n_kv_layers
        return KVCache(
            k=[torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(n_producers)],
            v=[torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(n_producers)],
            kv_layers=self.variant.kv_layers,
        )

    @torch.no_grad()
    def fill_cache_synthetic(self, cache: KVCache, length: int, generator: torch.Generator | None = None) -> None:
        """Standard-normal K and V at positions [0, length) of every producer, without a forward pass.

        For long contexts where only timing matters: one random block of SYNTHETIC_BLOCK positions
        is drawn per tensor and copied along the sequence, so filling runs at memory speed rather
        than at the random generator's. A ``generator`` must live on the cache's device.
        """
        if not 0 <= length <= cache.cache_len:
            raise ValueError(f"cannot fill {length} positions of a cache of {cache.cache_len}")
        for tensor in (*cache.k, *cache.v):
            block = tensor[:, :, : min(length, SYNTHETIC_BLOCK)]  # [B, n_kv_heads, block, head_dim]
            block.normal_(generator=generator)
            for start in range(block.shape[2], length, block.shape[2]):
                end = min(start + block.shape[2], length)
                tensor[:, :, start:end].copy_(block[:, :, : end - start])

    @torch.no_grad()
    def forward(self, tokens: Tensor, cache: KVCache, start_pos: int) -> Tensor:
        """Logits [B, T, vocab_size] for tokens [B, T] at positions start_pos .. start_pos + T - 1.

        Producers write their new K/V into the cache at those positions before attending. Inference
        only: no autograd graph is kept, so the cache never holds one across steps.
        """
        n_new = tokens.shape[1]
        if start_pos < 0 or start_pos + n_new > cache.cache_len:
            raise ValueError(f"positions {start_pos}..{start_pos + n_new - 1} do not fit a cache of {cache.cache_len}")
        if tokens.shape[0] != cache.batch_size:
            raise ValueError(f"batch of {tokens.shape[0]} sequences for a cache of {cache.batch_size}")
        positions = torch.arange(start_pos, start_pos + n_new, device=tokens.device)
        rotation = Rotation.of(rope_angles(positions, self.variant.head_dim, self.spec.rope_theta))
        h = self.tok_embeddings(tokens)  # [B, T, d_model]
        for layer, block in enumerate(self.layers):
            slot = cache.index_of_layer(layer)
            h = block(h, rotation, cache.k[slot], cache.v[slot], start_pos, self.backend)
        return self.output(self.norm(h))  # [B, T, vocab_size]

    def prefill(self, tokens: Tensor, cache: KVCache) -> Tensor:
        """Forward over a prompt [B, T] from position 0."""
        return self(tokens, cache, 0)

    def decode_step(self, tokens: Tensor, cache: KVCache, pos: int) -> Tensor:
        """Logits [B, 1, vocab_size] for one new token per sequence, tokens [B, 1], at position ``pos``."""
        return self(tokens, cache, pos)

    def core_attention(self, q: Tensor, cache: KVCache, pos: int) -> Tensor:
        """The attention op alone, for every one of the L layers, over positions 0 .. pos of its producer's cache.

        q: [B, n_heads, 1, head_dim]. Consumers re-read their producer's cache, as in a decode step
        (paper §2.3). Returns the last layer's output [B, n_heads, 1, head_dim].
        """
        out = q
        for layer_attention in self.core_attention_layers(q, cache, pos):
            out = layer_attention()
        return out

    def core_attention_layers(self, q: Tensor, cache: KVCache, pos: int) -> list[Callable[[], Tensor]]:
        """:meth:`core_attention` as one call per layer, in layer order (each returns that layer's output)."""

        def layer_attention(slot: int) -> Callable[[], Tensor]:
            return lambda: attend(q, cache.k[slot], cache.v[slot], start_pos=pos, backend=self.backend)

        return [layer_attention(cache.index_of_layer(layer)) for layer in range(self.variant.n_layers)]
