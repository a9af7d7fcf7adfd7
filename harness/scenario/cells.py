"""Expansion of a scenario into cells: variant x batch_size x context_len x dtype x backend."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from harness.cellkey import CellKey
from harness.scenario.schema import Scenario
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
    """All cells in a stable order: variant-major, then dtype, backend, context, batch."""
    dtypes = scenario.sweep.dtype or [scenario.model.dtype]
    return [
        Cell(variant, batch, context, dtype, backend)
        for variant, dtype, backend, context, batch in itertools.product(
            variants, dtypes, scenario.sweep.backend, scenario.sweep.context_len, scenario.sweep.batch_size
        )
    ]
