"""Measurements a scenario asks for beyond the decode cell, each in workers of its own (no torch here):

- ``train_step`` (in ``measure.metrics``): one training step of the cell's batch, for its memory
  (harness/measure/train_step.py);
- ``sweep.tp``: the cell's decode step sharded over each tensor-parallel degree, one process per rank
  (harness/measure/tp_rank.py, launched by harness/run/ranks.py).

The runner calls :func:`train_step` and :func:`tensor_parallel` after a cell's first round and stores
what they return in the cell's metrics; a failure here is recorded there and never fails the cell.
Both run with the runner's time limit (``measure.cell_timeout_s``): per worker, and per group of ranks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from harness import accounting
from harness.backend_support import training_problem
from harness.measure.protocol import CellRequest, Entry, NotEnoughDevices, RankRequest, Request
from harness.parallel import kv_heads_per_rank, kv_replication, rank_variant, tp_problem
from harness.results.schema import TPMeasurement, TPRank, TrainStep
from harness.results.summary import summarize
from harness.run.ranks import run_ranks
from harness.run.worker import IsolatedRunner, WorkerOutcome
from harness.scenario import Cell
from harness.scenario.schema import ModelSpec

Call = Callable[[Entry, Request], WorkerOutcome]


def train_step(call: Call, cell: Cell, request: CellRequest) -> TrainStep:
    """The ``train_step`` metric of ``cell``, measured in a worker through ``call`` (the runner's, with its time
    limit); ``request`` is the cell's worker request."""
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
    outcome = call(Entry.MEASURE_TRAIN_STEP, request)
    if outcome.status != "ok" or outcome.value is None:
        return TrainStep(status=outcome.status, error=outcome.error, **base)
    return TrainStep(status="ok", **base, **outcome.value)


def tensor_parallel(
    workers: IsolatedRunner,
    timeout_s: float,
    model: ModelSpec,
    cell: Cell,
    request: CellRequest,
    degrees: Sequence[int],
) -> list[TPMeasurement]:
    """The cell's decode step sharded over each degree in ``degrees``, each rank a process of its own.

    On CPU the machine's cores are shared out among the ranks (at least one thread each), as a
    multi-device machine gives each rank its own device; the result says how many each had.
    """
    variant, dtype = cell.variant, cell.dtype
    cuda = request.device.startswith("cuda")
    out = []
    for tp in degrees:
        base: dict[str, Any] = {
            "tp": tp,
            "kv_heads_per_rank": kv_heads_per_rank(variant, tp),
            "kv_replication": kv_replication(variant, tp),
            "threads_per_rank": None if cuda else max(1, (os.cpu_count() or 1) // tp),
        }
        problem = tp_problem(model, variant, tp)
        if problem is not None:
            out.append(TPMeasurement(status="unsupported", error=f"{variant.name} at tp {tp}: {problem}", **base))
            continue
        local = rank_variant(variant, tp)
        base["kv_cache_bytes_per_rank_expected"] = accounting.kv_cache_bytes(
            local, dtype, cell.batch_size, cell.context_len
        )
        task = RankRequest.of(request, tp=tp, threads_per_rank=base["threads_per_rank"])
        outcomes = run_ranks(workers, Entry.MEASURE_RANK, [task] * tp, timeout_s)
        out.append(_combined(outcomes, base))
    return out


def _combined(outcomes: list[WorkerOutcome], base: dict[str, Any]) -> TPMeasurement:
    """One measurement from its ranks' outcomes: the first failure that was not a rank ended for another's
    failure, or every rank's bytes and the slowest rank's time per step."""
    failed = [(rank, o) for rank, o in enumerate(outcomes) if o.status != "ok" or o.value is None]
    if failed:
        causes = [(rank, o) for rank, o in failed if not (o.error or "").startswith(f"rank {rank} was ended")]
        rank, cause = (causes or failed)[0]
        status = "unsupported" if cause.exception == NotEnoughDevices.__name__ else cause.status
        return TPMeasurement(status=status, error=f"rank {rank}: {cause.error}", **base)
    values = [o.value for o in outcomes if o.value is not None]
    slowest = [max(step) for step in zip(*(v["seconds"] for v in values), strict=True)]
    latency = summarize(slowest).model_copy(update={"timer": "perf_counter", "inner_reps": 1})
    return TPMeasurement(
        status="ok",
        comm_backend=values[0]["comm_backend"],
        ranks=[
            TPRank(rank=v["rank"], kv_cache_bytes=v["kv_cache_bytes"], peak_memory_bytes=v["peak_memory_bytes"])
            for v in values
        ],
        decode_latency_s=latency,
        **base,
    )
