"""Measurements a scenario asks for beyond the decode cell, each in workers of its own (no torch here):

- ``train_step`` (in ``measure.metrics``): one training step of the cell's batch, for its memory
  (harness/measure/train_step.py);
- ``sweep.tp``: the cell's decode step sharded over each tensor-parallel degree, one process per rank
  (harness/measure/tp_rank.py, launched by harness/measure/ranks.py).

The runner calls :func:`train_step` and :func:`tensor_parallel` after a cell's first round and stores
what they return in the cell's metrics; a failure here is recorded there and never fails the cell.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness import accounting
from harness.backend_support import training_problem
from harness.measure import train_step as train_step_worker
from harness.measure.worker import WorkerOutcome
from harness.results.schema import TrainStep
from harness.scenario import Cell

Call = Callable[[Callable[[dict[str, Any]], dict[str, Any]], dict[str, Any]], WorkerOutcome]


def train_step(call: Call, cell: Cell, payload: dict[str, Any]) -> TrainStep:
    """The ``train_step`` metric of ``cell``, measured in a worker through ``call`` (the runner's, with its time
    limit); ``payload`` is the cell's worker payload."""
    variant, dtype = cell.variant, cell.dtype
    base: dict[str, Any] = {
        "tokens": cell.batch_size * cell.context_len,
        "kv_activation_bytes_expected": accounting.train_kv_activation_bytes(
            variant, dtype, cell.batch_size, cell.context_len
        ),
    }
    reason = training_problem(variant)
    if reason is not None:
        return TrainStep(status="unsupported", error=reason, **base)
    outcome = call(train_step_worker.measure_train_step, payload)
    if outcome.status != "ok" or outcome.value is None:
        return TrainStep(status=outcome.status, error=outcome.error, **base)
    return TrainStep(status="ok", **base, **outcome.value)
