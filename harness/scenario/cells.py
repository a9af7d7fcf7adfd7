"""Expansion of a scenario into cells: variant (in each cache layout) x batch_size x context_len x dtype x backend."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from harness.cellkey import CellKey
from harness.scenario.schema import Scenario
from harness.scenario.serving import layouts
from harness.variants import Variant


@dataclass(frozen=True)
class Cell:
    """One measurable point of a scenario."""

    variant: Variant
    batch_size: int
    context_len: int  # tokens already in the cache when the decode step runs
    dtype: str
    backend: str

    @property
    def key(self) -> CellKey:
        """What identifies the cell within a scenario (used to match results and resume runs)."""
        return CellKey(self.variant.name, self.batch_size, self.context_len, self.dtype, self.backend)

    @property
    def label(self) -> str:
        return self.key.label


def expand_cells(scenario: Scenario, variants: tuple[Variant, ...]) -> list[Cell]:
    """All cells in a stable order: variant-major (each variant in the order of ``sweep.page_size``'s layouts,
    each in the order of ``sweep.lengths``' mixes, each at each ``sweep.q_len``, then the layout's prefill form
    with ``sweep.prefill`` and chunked-prefill forms of ``sweep.prefill_chunk``), then dtype, backend, context,
    batch."""
    dtypes = scenario.sweep.dtype or [scenario.model.dtype]
    sweep, seed = scenario.sweep, scenario.measure.seed
    laid_out = [
        form
        for variant in variants
        for form in layouts(
            variant, sweep.page_size, sweep.lengths, seed, sweep.q_len, sweep.prefill, sweep.prefill_chunk
        )
    ]
    return [
        Cell(variant, batch, context, dtype, backend)
        for variant, dtype, backend, context, batch in itertools.product(
            laid_out, dtypes, scenario.sweep.backend, scenario.sweep.context_len, scenario.sweep.batch_size
        )
    ]
