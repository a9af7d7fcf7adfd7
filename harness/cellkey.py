"""A cell's identity: the one key by which a scenario's cells, a result's cells and a run's files are matched.

A cell is one point of a scenario's sweep: variant x batch size x context length x dtype x backend.
Every place that matches cells (resuming, merging shards, comparing, reports across targets) uses
:class:`CellKey`, in this one order. It is a named tuple, so it hashes, sorts and compares as the
plain tuple of its fields.
"""

from __future__ import annotations

from typing import NamedTuple


class CellKey(NamedTuple):
    variant: str  # the variant's name, e.g. H128-GQA4-CLA2
    batch_size: int
    context_len: int
    dtype: str
    backend: str  # as the scenario names it (``auto`` included), not the backend it resolved to

    @property
    def label(self) -> str:
        """``H128-MHA b4 ctx1024 bfloat16 sdpa``: the cell in one line of text."""
        return f"{self.variant} b{self.batch_size} ctx{self.context_len} {self.dtype} {self.backend}"

    @property
    def max_batch_group(self) -> tuple[str, str, int, str]:
        """The cells that share one max batch: the same variant, dtype, context and backend (any batch size)."""
        return (self.variant, self.dtype, self.context_len, self.backend)
