"""Worker requests (harness/measure/protocol.py) for tests that call worker functions directly or stand in
for a worker: a tiny float32 cell on the CPU, with the fields a test cares about changed."""

from __future__ import annotations

from typing import Any

from harness.measure.protocol import CellRequest, RankRequest
from harness.scenario.schema import ModelSpec
from harness.variants import Variant

TINY_MODEL = ModelSpec(d_model=64, n_layers=4, d_ff=128, vocab_size=97, dtype="float32")
TINY_VARIANT = Variant(name="H16-MHA", head_dim=16, n_heads=4, n_kv_heads=4, kv_layers=(0, 1, 2, 3))


def cell_request(**fields: Any) -> CellRequest:
    """A request for batch 1 at context 32 of TINY_VARIANT with sdpa on the CPU, ``fields`` changed."""
    base: dict[str, Any] = {
        "device": "cpu",
        "model": TINY_MODEL,
        "variant": TINY_VARIANT,
        "batch_size": 1,
        "context_len": 32,
        "dtype": "float32",
        "backend": "sdpa",
        "seed": 0,
    }
    return CellRequest(**(base | fields))


def rank_request(tp: int, **fields: Any) -> RankRequest:
    """:func:`cell_request` for one rank of a group of ``tp`` (ranks.py fills in the rank and the store)."""
    return RankRequest.of(cell_request(**fields), tp=tp, threads_per_rank=None)
