"""Paged KV caches: each producer's K/V (or MLA latent) in a pool of pages, a block table per sequence.

As serving engines keep them (Kwon et al. 2023, "Efficient Memory Management for Large Language Model
Serving with PagedAttention", §4.1): a pool ``[n_pages, heads, page_size, width]`` per cache tensor and a
block table ``[B, width_in_pages]`` of int64 page indices per producer; position t of sequence b lives
in page ``block_table[b, (t // page_size) mod width_in_pages]`` at offset ``t mod page_size``. The
pages of one sequence are scattered over the pool: the allocation is a seeded random permutation of
the pool, as an engine's free list looks after many sequences have come and gone.

- A CLA consumer reads its producer's pages through the producer's block table (one slot per
  producer, as for a contiguous cache).
- MLA's latent is paged like K (its values are a view of the latent's first d_c columns, page by page).
- A float8 cache keeps float8 pages; its scales are per tensor or per KV head, not per position, so
  they stay one small tensor beside the pool.
- A windowed layer keeps a ring of the pages its window can touch (harness/pages.py): position t's
  table entry is (t // page_size) mod the ring's width, so a step past the ring's end writes over the
  page whose positions have all left the window.

Every sequence holds whole pages, so the last page of each is partly unused (last-page waste): the
pool is what is allocated and accounted (harness/accounting.py), the positions a step attends are
what it reads.

Backends read pages through :class:`PagedVisible`: ``native`` passes the pool and block table to its
kernel (harness/model/native.py), which reads each page in place; ``eager`` and MLA's ``naive`` gather
the positions they attend into a contiguous copy first (:meth:`PagedVisible.gathered`), as a textbook
paged implementation does, and that copy is part of their step. Backends that read only a contiguous
cache are refused (harness/backend_support.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from harness.model.kvcache import KVCache, LayerCache, Visible, slot_tensors
from harness.model.quant import fit_scale, quantize
from harness.pages import pages_per_sequence
from harness.variants import Variant

# Positions drawn at random per pool by fill_synthetic (rounded to whole pages); the rest repeat them.
SYNTHETIC_POSITIONS = 256


@dataclass(frozen=True)
class PagedVisible(Visible):
    """What the new queries of a step attend over in a paged slot, without copying it.

    ``k`` and ``v`` are the pools [n_pages, heads, page_size, width]; each sequence attends positions
    ``first .. stop - 1`` through ``block_table``; ``start_pos`` counts from ``first`` (the queries are
    the last ``stop - first - start_pos`` of those positions), as in :class:`Visible`.
    """

    block_table: Tensor | None = None  # [B, width_in_pages] int64
    page_size: int = 0
    first: int = 0
    stop: int = 0
    # A ragged decode step: int64 [B] each, the positions firsts[b] .. stops[b] - 1 sequence b attends
    # (``first`` and ``stop`` are then the widest span's bounds, unused).
    firsts: Tensor | None = None
    stops: Tensor | None = None

    def gathered(self) -> Visible:
        """The attended positions copied out of the pages in position order: k, v [B, heads, n, width]. In a
        ragged step n is the longest span, and ``lengths`` says how many of them each sequence attends."""
        assert self.block_table is not None
        if self.firsts is None or self.stops is None:
            positions = torch.arange(self.first, self.stop, device=self.k.device)  # [n]
            lengths = None
        else:
            lengths = self.stops - self.firsts  # [B]
            steps = torch.arange(int(lengths.max()), device=self.k.device)
            positions = torch.minimum(self.firsts[:, None] + steps[None, :], self.stops[:, None] - 1)  # [B, n]
        pages, offsets = page_locations(self.block_table, self.page_size, positions)
        k = self.k[pages, :, offsets].transpose(1, 2)  # [B, n, heads, width] -> [B, heads, n, width]
        v = self.v[pages, :, offsets].transpose(1, 2)
        start_pos = self.start_pos if lengths is None else k.shape[2] - 1
        return Visible(k, v, start_pos, None, lengths)

    def spans(self) -> tuple[Tensor, Tensor]:
        """Per sequence, the first and one-past-last position attended: int64 [B] each (the native kernel's)."""
        if self.firsts is not None and self.stops is not None:
            return self.firsts, self.stops
        assert self.block_table is not None
        batch_size, device = self.block_table.shape[0], self.block_table.device
        starts = torch.full((batch_size,), self.first, dtype=torch.int64, device=device)
        return starts, torch.full_like(starts, self.stop)


def page_locations(block_table: Tensor, page_size: int, positions: Tensor) -> tuple[Tensor, Tensor]:
    """Pages and offsets of positions [n] (every sequence's) or [B, n] (each sequence its own): table entry
    (t // page_size) mod width, offset t mod page_size. Pages [B, n]; offsets as ``positions``."""
    entries = torch.div(positions, page_size, rounding_mode="floor") % block_table.shape[1]
    pages = block_table[:, entries] if positions.dim() == 1 else block_table.gather(1, entries)
    return pages, positions % page_size


@dataclass
class PagedLayerCache(LayerCache):
    """One producer's pages: ``k`` and ``v`` are pools [n_pages, heads, page_size, width] (MLA: v a view of k)."""

    block_table: Tensor = field(default_factory=lambda: torch.zeros(1, 1, dtype=torch.int64))  # [B, width_in_pages]
    page_size: int = 1

    @property
    def held(self) -> int:
        """Positions one sequence's pages span: the ring of a windowed slot, or the whole history."""
        return self.block_table.shape[1] * self.page_size

    def _write(self, pool: Tensor, new: Tensor, positions: Tensor) -> None:
        """Write new [B, heads, n, width] at positions [n] of every sequence, or [B, n] of each its own."""
        pages, offsets = page_locations(self.block_table, self.page_size, positions)  # [B, n], [n] or [B, n]
        pool[pages, :, offsets] = new.transpose(1, 2)  # [B, n, heads, width]

    def store(self, k_new: Tensor, v_new: Tensor | None, start_pos: int) -> None:
        """Write positions start_pos .. start_pos + T - 1 into their pages (quantised for an 8-bit slot).
        A windowed slot keeps the last ``held`` of them, and for a multi-token step the history its
        queries need, before the ring is written over (as :meth:`LayerCache.store`)."""
        k_new, v_new = self.quantized(k_new, v_new)
        n_new = k_new.shape[2]
        if self.shifts is not None:
            positions = self.ragged_positions(start_pos, n_new)[:, None]  # [B, 1]
            self._write(self.k, k_new, positions)
            if v_new is not None:
                self._write(self.v, v_new, positions)
            return
        if self.window is not None and n_new > 1:
            history_k, history_v, first_kept = self._history(start_pos)
            new_v = v_new if v_new is not None else k_new[..., : self.v.shape[-1]]
            self.pending = (torch.cat((history_k, k_new), dim=2), torch.cat((history_v, new_v), dim=2), first_kept)
        first = start_pos if self.window is None else max(start_pos, start_pos + n_new - self.held)
        offset = first - start_pos
        positions = torch.arange(first, start_pos + n_new, device=self.k.device)  # [n]
        self._write(self.k, k_new[:, :, offset:], positions)
        if v_new is not None:
            self._write(self.v, v_new[:, :, offset:], positions)

    def _history(self, start_pos: int) -> tuple[Tensor, Tensor, int]:
        """K and V of positions max(0, start_pos - window + 1) .. start_pos - 1 in position order, and the first."""
        assert self.window is not None
        first = max(0, start_pos - self.window + 1)
        view = PagedVisible(
            self.k, self.v, 0, None, None, self.block_table, self.page_size, first, start_pos
        ).gathered()
        return view.k, view.v, first

    def visible(self, start_pos: int, n_new: int) -> Visible:
        """The pages queries at start_pos .. start_pos + n_new - 1 attend over (after the step's store): every
        position so far, or for a windowed decode step the window's last positions; a windowed multi-token
        step attends what :meth:`store` kept (a mask says which position each query sees)."""
        if self.shifts is not None:
            stops = self.ragged_positions(start_pos, n_new) + 1  # [B]
            firsts = stops.new_zeros(stops.shape) if self.window is None else (stops - self.window).clamp(min=0)
            table = self.block_table
            page = self.page_size
            return PagedVisible(
                self.k, self.v, start_pos, block_table=table, page_size=page, firsts=firsts, stops=stops
            )
        if self.window is not None and n_new > 1:
            return super().visible(start_pos, n_new)
        stop = start_pos + n_new
        first = 0 if self.window is None else max(0, stop - self.window)
        return PagedVisible(
            self.k, self.v, start_pos - first, None, None, self.block_table, self.page_size, first, stop
        )


@dataclass
class PagedKVCache(KVCache):
    """A :class:`KVCache` whose slots are pages: ``k``, ``v`` are pools; ``block_tables`` one per producer."""

    block_tables: list[Tensor] = field(default_factory=list)  # per producer, [B, width_in_pages] int64
    page_size: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.block_tables) != len(self.k):
            raise ValueError(f"{len(self.k)} producer pools need as many block tables, got {len(self.block_tables)}")
        self._layers = [
            PagedLayerCache(
                slot.k,
                slot.v,
                slot.window,
                slot.k_scale,
                slot.v_scale,
                shifts=self.shifts,
                block_table=table,
                page_size=self.page_size,
            )
            for slot, table in zip(self._layers, self.block_tables, strict=True)
        ]

    def tensors(self) -> list[Tensor]:
        """Every tensor that owns cache storage, once: pools, scales, then block tables."""
        return [*super().tensors(), *self.block_tables]

    @property
    def batch_size(self) -> int:
        return self.block_tables[0].shape[0]

    @property
    def n_pages(self) -> int:
        """Pages of all producers' pools together."""
        return sum(pool.shape[0] for pool in self.k)


def allocate(
    variant: Variant,
    batch_size: int,
    cache_len: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
    seed: int = 0,
    lengths: Sequence[int] | None = None,
) -> PagedKVCache:
    """Zeroed pools and shuffled block tables for every producer of ``variant`` (``variant.page_size`` set).

    Each producer's pool has exactly the pages its sequences hold (harness/pages.py: whole pages per
    sequence, a windowed producer its ring); producer i's pages are dealt to the sequences in the order
    of a random permutation seeded with ``seed + i``, so no sequence's pages are adjacent by design.
    An 8-bit cache gets scales of 1, as a contiguous one does. A ragged batch (``lengths``: each sequence's
    context, the longest cache_len - 1) holds each sequence's own pages; a block-table row is as wide as
    the longest sequence's, a shorter one's unused entries repeating its last page (never read).
    """
    page_size = variant.page_size
    if page_size is None:
        raise ValueError(f"variant {variant.name} has no page_size: its cache is contiguous")
    k, v, tables, k_scale, v_scale, windows = [], [], [], [], [], []
    for index, producer in enumerate(variant.producers):
        window = variant.windows[producer]
        windows.append(window)
        width = pages_per_sequence(window, cache_len, page_size)
        own = (
            [width] * batch_size if lengths is None else [pages_per_sequence(window, n + 1, page_size) for n in lengths]
        )
        n_pages = sum(own)
        order = torch.randperm(n_pages, generator=torch.Generator().manual_seed(seed + index))
        tables.append(_deal(order, own, width).to(device))  # [B, width_in_pages]
        pool_k, pool_v, pool_k_scale, pool_v_scale = slot_tensors(variant, n_pages, page_size, device, dtype)
        k.append(pool_k)
        v.append(pool_v)
        if pool_k_scale is not None and pool_v_scale is not None:
            k_scale.append(pool_k_scale)
            v_scale.append(pool_v_scale)
    return PagedKVCache(
        shifts=None if lengths is None else ragged_shifts(lengths, device),
        k=k,
        v=v,
        kv_layers=variant.kv_layers,
        positions=cache_len,
        windows=tuple(windows),
        k_scale=list(k_scale),
        v_scale=list(v_scale),
        block_tables=tables,
        page_size=page_size,
    )


def _deal(order: Tensor, own: list[int], width: int) -> Tensor:
    """Block-table rows [len(own), width]: sequence b takes the next own[b] pages of ``order``, the rest of its
    row repeating its last page."""
    rows, start = [], 0
    for count in own:
        pages = order[start : start + count]
        rows.append(torch.cat((pages, pages[-1:].expand(width - count))))
        start += count
    return torch.stack(rows)


def ragged_shifts(lengths: Sequence[int], device: torch.device) -> Tensor:
    """How many positions each sequence is behind the longest: int64 [B] (the cache's ``shifts``)."""
    longest = max(lengths)
    return torch.tensor([longest - n for n in lengths], dtype=torch.int64, device=device)


@torch.no_grad()
def fill_synthetic(cache: PagedKVCache, per_head: bool, generator: torch.Generator | None = None) -> None:
    """Standard-normal contents for every page of every pool, for timing: the first SYNTHETIC_POSITIONS
    positions' worth of pages are drawn and copied along the pool. An 8-bit pool's scale is fitted to the
    drawn pages. Every page is written, the partly used last pages included."""
    for index, slot in enumerate(cache.slots):
        pools = [(cache.k[index], slot.k_scale)]
        if not slot.shares_values:
            pools.append((cache.v[index], slot.v_scale))
        for pool, scale in pools:
            n_pages = pool.shape[0]
            n_block = min(n_pages, max(1, SYNTHETIC_POSITIONS // cache.page_size))
            block = pool[:n_block]  # [pages, heads, page_size, width]
            if scale is None:
                block.normal_(generator=generator)
            else:
                drawn = torch.empty(block.shape, device=pool.device).normal_(generator=generator)
                scale.copy_(fit_scale(drawn, pool.dtype, per_head))
                block.copy_(quantize(drawn, scale, pool.dtype))
            for start in range(n_block, n_pages, n_block):
                end = min(start + n_block, n_pages)
                pool[start:end].copy_(block[: end - start])
