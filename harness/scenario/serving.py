"""Serving-shaped cells: the cache layouts a scenario's ``sweep.page_size`` crosses with every variant.

``sweep.page_size`` lists page sizes in positions, and ``"contiguous"`` for the static cache; absent, every
cell is contiguous. A paged form of a variant is the same attention configuration with its cache in
pages (harness/model/paged.py), named ``<variant>-P<page_size>``, so that results, resume, compare and the
report tell the layouts apart by variant name and pair each paged cell with its contiguous one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

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


def layouts(variant: Variant, page_sizes: Sequence[int | str] | None) -> list[Variant]:
    """The forms of ``variant`` a sweep measures, in the order of ``sweep.page_size`` (None: contiguous only)."""
    return [with_layout(variant, layout) for layout in (page_sizes or [CONTIGUOUS])]
