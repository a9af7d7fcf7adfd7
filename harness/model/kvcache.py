"""The static KV cache: one slot per producer layer, written in place, never grown or concatenated.

A slot holds, per sequence, K and V of every KV head ([B, n_kv_heads, held, head_dim] each), or for
multi-head latent attention the latent and rotary key ([B, 1, held, d_c + d_h^R]) whose first d_c
columns are also the values (a view, not a copy). ``held`` is the cache length, or for a layer with a
sliding window at most ``window`` positions: a ring buffer in which position p lives in slot
p mod window, so a decode step past the window overwrites the oldest position in place. Keys are
stored after their rotary embedding, so a position keeps its true rotation wherever it sits.

An 8-bit slot stores float8 values and float32 scales (harness/model/quant.py); writes quantise
with the slot's scale, readers dequantise inside attention.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from harness.model.quant import is_fp8, quantize
from harness.variants import Variant


@dataclass(frozen=True)
class Visible:
    """What the new queries of one step attend over, as ``attend`` takes it.

    Without a mask: k, v [B, heads, S, width] of which positions 0 .. start_pos + T - 1 are read,
    causal within the new tokens. With a mask (a windowed layer's multi-token step): exactly the
    positions the queries may see, and ``mask`` [T, S] says which each query sees. In a ragged decode
    step (harness/lengths.py) ``lengths`` [B] says how many of the first positions sequence b attends;
    ``start_pos`` then counts for the longest.
    """

    k: Tensor
    v: Tensor
    start_pos: int
    mask: Tensor | None = None
    lengths: Tensor | None = None


@dataclass
class LayerCache:
    """One producer's slot."""

    k: Tensor  # [B, heads, held, k_width]
    v: Tensor  # [B, heads, held, v_width]; MLA: a view of k[..., :d_c]
    window: int | None  # None: global, every position kept
    k_scale: Tensor | None = None  # float32 [1] or [heads], for an 8-bit slot
    v_scale: Tensor | None = None
    # A windowed producer's multi-token step: K and V of the positions it needs (the ring's last
    # window - 1 positions before the step, in position order, then the step's own), for itself
    # and its consumers, since writing the step into the ring overwrites what earlier queries see.
    # Set by store(), cleared by the decoder at the end of the forward pass.
    pending: tuple[Tensor, Tensor, int] | None = field(default=None, repr=False)
    # A ragged batch: int64 [B], how many positions sequence b is behind the step's start_pos (which is the
    # longest sequence's position); None when every sequence is at start_pos.
    shifts: Tensor | None = field(default=None, repr=False)

    @property
    def held(self) -> int:
        return self.k.shape[2]

    @property
    def shares_values(self) -> bool:
        """Whether v is a view of k (MLA's latent serves as keys and values)."""
        return self.v.untyped_storage().data_ptr() == self.k.untyped_storage().data_ptr()

    def quantized(self, k_new: Tensor, v_new: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """New K and V as the slot stores them: quantised with its scales for an 8-bit slot, else as given."""
        if self.k_scale is not None:
            k_new = quantize(k_new, self.k_scale, self.k.dtype)
        if v_new is not None and self.v_scale is not None:
            v_new = quantize(v_new, self.v_scale, self.v.dtype)
        return k_new, v_new

    def store(self, k_new: Tensor, v_new: Tensor | None, start_pos: int) -> None:
        """Write new positions start_pos .. start_pos + T - 1: k_new [B, heads, T, k_width], v_new likewise
        (None where v is a view of k). An 8-bit slot quantises them with its scales."""
        k_new, v_new = self.quantized(k_new, v_new)
        n_new = k_new.shape[2]
        if self.shifts is not None:
            slots = self.ragged_positions(start_pos, n_new)  # [B]
            if self.window is not None:
                slots = slots % self.window
            rows = torch.arange(k_new.shape[0], device=k_new.device)
            self.k[rows, :, slots] = k_new[:, :, 0]  # [B, heads, width] at each sequence's own slot
            if v_new is not None:
                self.v[rows, :, slots] = v_new[:, :, 0]
            return
        if self.window is None:
            self.k[:, :, start_pos : start_pos + n_new] = k_new
            if v_new is not None:
                self.v[:, :, start_pos : start_pos + n_new] = v_new
            return
        if n_new > 1:
            history_k, history_v, first = self._history(start_pos)
            new_v = v_new if v_new is not None else k_new[..., : self.v.shape[-1]]
            self.pending = (torch.cat((history_k, k_new), dim=2), torch.cat((history_v, new_v), dim=2), first)
        self._write_ring(self.k, k_new, start_pos)
        if v_new is not None:
            self._write_ring(self.v, v_new, start_pos)

    def _write_ring(self, ring: Tensor, new: Tensor, start_pos: int) -> None:
        """Keep the last ``held`` of the new positions, position p in slot p mod window (at most one wrap)."""
        window, n_new = self.window, new.shape[2]
        assert window is not None
        first = max(start_pos, start_pos + n_new - self.held)
        count = start_pos + n_new - first
        slot = first % window
        head = min(count, self.held - slot)
        offset = first - start_pos
        ring[:, :, slot : slot + head] = new[:, :, offset : offset + head]
        if count > head:
            ring[:, :, : count - head] = new[:, :, offset + head : offset + count]

    def _history(self, start_pos: int) -> tuple[Tensor, Tensor, int]:
        """K and V of positions max(0, start_pos - window + 1) .. start_pos - 1 in position order, and the first."""
        assert self.window is not None
        first = max(0, start_pos - self.window + 1)
        slots = torch.arange(first, start_pos, device=self.k.device) % self.window
        return self.k.index_select(2, slots), self.v.index_select(2, slots), first

    def ragged_positions(self, start_pos: int, n_new: int) -> Tensor:
        """Each sequence's position in a ragged decode step: start_pos - shifts, int64 [B]."""
        assert self.shifts is not None
        if n_new != 1:
            raise ValueError(f"a ragged batch takes one new token per sequence, got {n_new}")
        return start_pos - self.shifts

    def visible(self, start_pos: int, n_new: int) -> Visible:
        """What queries at positions start_pos .. start_pos + n_new - 1 attend over (after the step's store)."""
        if self.shifts is not None:
            lengths = self.ragged_positions(start_pos, n_new) + 1  # [B]
            n_valid = start_pos + 1
            if self.window is not None:  # a ring fills from slot 0 and then holds only positions in the window
                lengths, n_valid = lengths.clamp(max=self.held), min(n_valid, self.held)
            return Visible(self.k[:, :, :n_valid], self.v[:, :, :n_valid], n_valid - 1, None, lengths)
        if self.window is None:
            return Visible(self.k, self.v, start_pos)
        if n_new == 1:
            # every position the ring holds is within the window of the newest one
            n_valid = min(start_pos + 1, self.held)
            return Visible(self.k[:, :, :n_valid], self.v[:, :, :n_valid], n_valid - 1)
        assert self.pending is not None, "a windowed slot's multi-token step reads what its producer stored"
        k, v, first = self.pending
        return Visible(k, v, start_pos, window_mask(start_pos, n_new, first, k.shape[2], self.window, k.device))


def slot_tensors(
    variant: Variant, rows: int, positions: int, device: torch.device | str, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """One producer's zeroed K, V and (8-bit caches only) scales of 1: ``rows`` of ``positions`` each.

    A contiguous slot has a row per sequence; a paged pool (harness/model/paged.py) a row per page.
    K and V: [rows, n_kv_heads, positions, head_dim] each; MLA: the latent [rows, 1, positions,
    d_c + d_h^R] as K and its first d_c columns as V (a view). Scales: one per KV head or one in all
    (``kv_scale``); MLA's values share the latent's scale.
    """
    if variant.mla is not None:
        latent = torch.zeros(rows, 1, positions, variant.mla.latent_width, device=device, dtype=dtype)
        k, v = latent, latent[..., : variant.mla.kv_lora_rank]
    else:
        shape = (rows, variant.n_kv_heads, positions, variant.head_dim)
        k, v = torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)
    if variant.kv_dtype is None:
        return k, v, None, None
    n_scales = variant.n_kv_heads if variant.kv_scale == "head" else 1
    k_scale = torch.ones(n_scales, device=device)
    return k, v, k_scale, k_scale if variant.mla is not None else torch.ones(n_scales, device=device)


def window_mask(start_pos: int, n_new: int, first: int, n_keys: int, window: int, device: torch.device) -> Tensor:
    """Boolean [n_new, n_keys]: query at position t sees key at position j iff t - window < j <= t
    (the last ``window`` positions, itself included: Jiang et al. 2023, "Mistral 7B", §2)."""
    query_pos = torch.arange(start_pos, start_pos + n_new, device=device)[:, None]
    key_pos = torch.arange(first, first + n_keys, device=device)[None, :]
    return (key_pos <= query_pos) & (key_pos > query_pos - window)


@dataclass
class KVCache:
    """Preallocated cache slots, one per producer layer, in layer order.

    ``k`` and ``v`` list every slot's tensors (see :class:`LayerCache`); ``positions`` is the logical
    length (the most positions one step may address), which windowed slots hold only the last of.
    """

    k: list[Tensor]  # one per producer, in layer order
    v: list[Tensor]  # one per producer, in layer order (MLA: views of k)
    kv_layers: tuple[int, ...]  # the variant's map: entry i is the layer whose KV layer i reads
    positions: int | None = None  # logical cache length; default the slots' length
    windows: tuple[int | None, ...] = ()  # per slot; () means all global
    k_scale: list[Tensor | None] = field(default_factory=list)  # per slot, for an 8-bit cache
    v_scale: list[Tensor | None] = field(default_factory=list)
    shifts: Tensor | None = None  # a ragged batch: int64 [B], positions each sequence is behind the longest
    _slots: tuple[int, ...] = field(init=False, repr=False)
    _layers: list[LayerCache] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        producers = [layer for layer, source in enumerate(self.kv_layers) if layer == source]
        if not len(self.k) == len(self.v) == len(producers):
            raise ValueError(
                f"{len(producers)} producer layers need as many K and V tensors, got {len(self.k)}, {len(self.v)}"
            )
        self._slots = tuple(producers.index(source) for source in self.kv_layers)
        n = len(producers)
        windows = self.windows or (None,) * n
        k_scale = self.k_scale or [None] * n
        v_scale = self.v_scale or [None] * n
        if self.positions is None:
            self.positions = self.k[0].shape[2]
        self._layers = [
            LayerCache(self.k[i], self.v[i], windows[i], k_scale[i], v_scale[i], shifts=self.shifts) for i in range(n)
        ]

    def index_of_layer(self, layer: int) -> int:
        """The producer slot (index into ``k`` and ``v``) that ``layer`` reads."""
        return self._slots[layer]

    def layer(self, layer: int) -> LayerCache:
        """The slot ``layer`` reads."""
        return self._layers[self._slots[layer]]

    @property
    def slots(self) -> list[LayerCache]:
        return list(self._layers)

    def tensors(self) -> list[Tensor]:
        """Every tensor that owns cache storage, once: K slots, then V slots that are not views of K, then scales."""
        seen: set[int] = set()
        out = []
        scales = [s for s in (*self.k_scale, *self.v_scale) if s is not None]
        for tensor in (*self.k, *self.v, *scales):
            key = tensor.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                out.append(tensor)
        return out

    @property
    def nbytes(self) -> int:
        """Bytes of all cache storage, scales included, views counted once: harness.accounting.kv_cache_bytes."""
        return sum(t.untyped_storage().nbytes() for t in self.tensors())

    @property
    def batch_size(self) -> int:
        return self.k[0].shape[0]

    def sequence_positions(self, start_pos: int, n_new: int) -> Tensor | None:
        """Each sequence's positions of a step at start_pos, int64 [B, n_new], in a ragged batch; else None."""
        if self.shifts is None:
            return None
        steps = torch.arange(n_new, device=self.shifts.device)
        return start_pos - self.shifts[:, None] + steps[None, :]

    @property
    def cache_len(self) -> int:
        """The logical length: positions 0 .. cache_len - 1 may be written."""
        assert self.positions is not None
        return self.positions

    @property
    def quantized(self) -> bool:
        return any(is_fp8(t.dtype) for t in self.k)

    def end_step(self) -> None:
        """Drop what a multi-token step kept for its windowed slots."""
        for slot in self._layers:
            slot.pending = None
