"""A group of worker processes that run together and stand or fall together: the ranks of one
tensor-parallel measurement.

The ranks of a group wait for each other in collectives, so one that fails or dies would leave the
others waiting until the collective's own timeout. :func:`run_ranks` starts every rank from the
runner's forkserver (harness/run/worker.py: torch already imported, the same one-line errors),
hands each a file store in a fresh folder to meet through (no port to find, nothing left behind), and
watches them all: the first rank that fails or dies ends the others, and a group that has not finished
within ``timeout_s`` is ended whole. No child outlives the call.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path

from harness.measure.protocol import RankRequest
from harness.run.worker import (
    KILL_WAIT_S,
    POLL_S,
    Function,
    IsolatedRunner,
    WorkerOutcome,
    _child_main,
    died,
    oom_kills,
)

STORE_NAME = "store"  # the file store's name in the group's folder


def _ended(rank: int, why: str, elapsed_s: float) -> WorkerOutcome:
    return WorkerOutcome("error", None, f"rank {rank} was ended: {why}", elapsed_s)


def run_ranks(
    workers: IsolatedRunner,
    fn: Function,
    requests: Sequence[RankRequest],
    timeout_s: float,
) -> list[WorkerOutcome]:
    """``fn(requests[r])`` with its ``rank``, ``store_path`` and ``timeout_s`` filled in, in one process per rank,
    all at once; each rank's outcome, in rank order. Never raises for what a rank does."""
    start = time.perf_counter()
    kills_before = oom_kills()
    context = workers.context
    outcomes: list[WorkerOutcome | None] = [None] * len(requests)
    with tempfile.TemporaryDirectory(prefix="attnbench-ranks-") as folder:
        store = str(Path(folder) / STORE_NAME)
        processes, receivers, lifelines = [], [], []
        try:
            for rank, request in enumerate(requests):
                receiver, sender = context.Pipe(duplex=False)
                lifeline_reader, lifeline = context.Pipe(duplex=False)  # a rank exits when this process dies
                lifelines.append(lifeline)
                task = dataclasses.replace(request, rank=rank, store_path=store, timeout_s=timeout_s)
                process = context.Process(target=_child_main, args=(sender, lifeline_reader, fn, task), daemon=True)
                process.start()
                sender.close()
                lifeline_reader.close()
                processes.append(process)
                receivers.append(receiver)
            while any(outcome is None for outcome in outcomes):
                for rank, (process, receiver) in enumerate(zip(processes, receivers, strict=True)):
                    if outcomes[rank] is None:
                        outcomes[rank] = _poll(process, receiver, start, kills_before)
                failed = _first_failure(outcomes)
                elapsed = time.perf_counter() - start
                if failed is not None:
                    why = f"rank {failed} ended with {outcomes[failed].status}"  # type: ignore[union-attr]
                    outcomes = [
                        o if r == failed or (o is not None and o.status == "ok") else _ended(r, why, elapsed)
                        for r, o in enumerate(outcomes)
                    ]
                elif elapsed > timeout_s:
                    limit = f"no answer within {timeout_s:g} s (measure.cell_timeout_s); the group was killed"
                    late = WorkerOutcome("timeout", None, limit, elapsed)
                    outcomes = [o if o is not None else late for o in outcomes]
                elif any(o is None for o in outcomes):
                    time.sleep(POLL_S)
        finally:
            for connection in receivers + lifelines:
                connection.close()
            for process in processes:
                if process.is_alive():
                    process.kill()
            for process in processes:
                process.join(KILL_WAIT_S)
    return [o for o in outcomes if o is not None]


def _first_failure(outcomes: Sequence[WorkerOutcome | None]) -> int | None:
    """The rank that failed first: the earliest the child says it ended (a rank whose peer left fails in a
    collective just after, and may be read first); a rank that died unannounced counts from when it was seen."""
    failures = [(r, o) for r, o in enumerate(outcomes) if o is not None and o.status != "ok"]
    if not failures:
        return None
    return min(failures, key=lambda item: (item[1].ended_at or 0.0, item[0]))[0]


def _poll(
    process: multiprocessing.process.BaseProcess, receiver: Connection, start: float, kills_before: int | None
) -> WorkerOutcome | None:
    """The rank's outcome once it answered or ended; None while it is still working."""
    if receiver.poll(0):
        try:
            status, value, error, exception, ended_at = receiver.recv()
        except EOFError:  # it closed its end without answering
            return _seen_dead(process, start, kills_before)
        return WorkerOutcome(status, value, error, time.perf_counter() - start, exception, ended_at)
    if not process.is_alive():
        return (
            _poll(process, receiver, start, kills_before)
            if receiver.poll(0)
            else _seen_dead(process, start, kills_before)
        )
    return None


def _seen_dead(process: multiprocessing.process.BaseProcess, start: float, kills_before: int | None) -> WorkerOutcome:
    """A rank that ended without answering, stamped when the parent saw it (it ended no later)."""
    return dataclasses.replace(died(process, start, kills_before), ended_at=time.monotonic())
