"""Serving-shaped cells: the cache layouts and length mixes a scenario's sweep crosses with every variant.

``sweep.page_size`` lists page sizes in positions, and ``"contiguous"`` for the static cache; absent, every
cell is contiguous. A paged form of a variant is the same attention configuration with its cache in
pages (harness/model/paged.py), named ``<variant>-P<page_size>``. ``sweep.lengths`` lists how a batch's
context lengths are spread (harness/lengths.py); a ragged form is named ``<variant>-longtail``,
``-uniform`` or ``-fixed(1,0.5)`` after its mix, before any page suffix (``H128-GQA8-longtail-P16``).
``sweep.q_len`` lists new tokens per sequence per step; a form with more than one is named
``<variant>-T<q_len>`` after everything else (``H128-GQA8-P16-T4``). ``sweep.prefill`` adds, per cache
layout, a prefill form named ``<variant>-prefill`` (after any page suffix): its step is the whole prompt of
``context_len`` tokens per sequence over an empty cache, whose latency is the time to first token.
``sweep.prefill_chunk`` adds, per cache layout and chunk size C, a chunked-prefill form named ``<variant>-chunk<C>``:
sequence 0 adds C prompt tokens beside one decode token of each other sequence (harness/model/chunked.py).
Results, resume, compare and the report tell the forms apart by variant name and pair each paged, ragged
or multi-token cell with its contiguous, uniform, one-token one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from harness.lengths import LengthMix
from harness.variants import Variant

CONTIGUOUS = "contiguous"


def paged_name(name: str, page_size: int) -> str:
    """The name of a variant's form with its cache in pages of ``page_size`` positions."""
    return f"{name}-P{page_size}"


def with_layout(variant: Variant, layout: int | str) -> Variant:
    """``variant`` with its cache in pages of ``layout`` positions, or itself for ``"contiguous"``."""
    if layout == CONTIGUOUS:
        return variant
    if not isinstance(layout, int) or isinstance(layout, bool):
        raise ValueError(f"a cache layout is a page size or {CONTIGUOUS!r}, got {layout!r}")
    return dataclasses.replace(variant, name=paged_name(variant.name, layout), page_size=layout)


def length_mix(spec: str | Sequence[float], seed: int) -> LengthMix:
    """A ``sweep.lengths`` entry as a :class:`LengthMix` drawing with ``seed``."""
    if isinstance(spec, str):
        return LengthMix(spec, seed=seed)
    return LengthMix("fixed", tuple(float(f) for f in spec), seed=seed)


def with_lengths(variant: Variant, mix: LengthMix) -> Variant:
    """``variant`` in batches spread by ``mix``, or itself for ``same``."""
    if not mix.ragged:
        return variant
    return dataclasses.replace(variant, name=f"{variant.name}-{mix.label}", lengths=mix)


def with_q_len(variant: Variant, q_len: int) -> Variant:
    """``variant`` stepping q_len new tokens per sequence, named ``<variant>-T<q_len>``; itself for 1."""
    if q_len == 1:
        return variant
    return dataclasses.replace(variant, name=f"{variant.name}-T{q_len}", q_len=q_len)


def with_prefill(variant: Variant) -> Variant:
    """``variant`` prefilling a whole prompt in one step, named ``<variant>-prefill``."""
    return dataclasses.replace(variant, name=f"{variant.name}-prefill", prefill=True)


def with_chunk(variant: Variant, chunk: int) -> Variant:
    """``variant`` in chunked-prefill steps of ``chunk`` prompt tokens, named ``<variant>-chunk<chunk>``."""
    return dataclasses.replace(variant, name=f"{variant.name}-chunk{chunk}", chunk=chunk)


def form_suffix(
    page_size: int | None, length_mix: str | None, q_len: int | None, prefill: bool | None, chunk: int | None
) -> str:
    """What a serving form adds to its variant's name, from a cell's fields: ``-longtail-P16-T4``,
    ``-P128-chunk16``, ``-prefill``; empty for a contiguous, uniform, one-token decode. The order the
    ``with_*`` functions above name a form in: length mix, then pages, then the step."""
    suffix = f"-{length_mix}" if length_mix else ""
    suffix += paged_name("", page_size) if page_size is not None else ""
    if prefill:
        return suffix + "-prefill"
    if chunk is not None:
        return suffix + f"-chunk{chunk}"
    return suffix + (f"-T{q_len}" if q_len is not None and q_len > 1 else "")


def layouts(
    variant: Variant,
    page_sizes: Sequence[int | str] | None,
    lengths: Sequence[str | Sequence[float]] | None = None,
    seed: int = 0,
    q_lens: Sequence[int] = (1,),
    prefill: bool = False,
    chunks: Sequence[int] = (),
) -> list[Variant]:
    """The forms of ``variant`` a sweep measures: each cache layout of ``sweep.page_size`` (None: contiguous
    only), each in each length mix of ``sweep.lengths`` (None: same), each at each ``sweep.q_len``, in that
    order, and with ``prefill`` the layout's prefill form after them, then its chunked-prefill form for each of
    ``chunks`` (a prompt is one length per batch)."""
    mixes = [length_mix(spec, seed) for spec in (lengths or ["same"])]
    forms = []
    for layout in page_sizes or [CONTIGUOUS]:
        forms += [
            with_q_len(with_layout(with_lengths(variant, mix), layout), q_len) for mix in mixes for q_len in q_lens
        ]
        if prefill:
            forms.append(with_prefill(with_layout(variant, layout)))
        forms += [with_chunk(with_layout(variant, layout), chunk) for chunk in chunks]
    return forms
