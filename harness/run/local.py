"""The local executor: each job runs in this process, its worker calls in isolated child processes."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

from harness.run.cellround import measure_cell_round
from harness.run.jobs import CellJob, CellOutcome, ExecutorName, NodeInfo, Where, WorkerCaller


class LocalExecutor:
    """One job at a time, measured before :meth:`try_submit` returns (an exception propagates as it would
    from a plain call: Ctrl-C stops the run there)."""

    def __init__(self, workers: WorkerCaller, node: NodeInfo, device: str) -> None:
        self.workers = workers
        self.node = node
        self._device = device
        self._where = Where.here()

    @property
    def name(self) -> ExecutorName:
        return "local"

    @property
    def device(self) -> str:
        return self._device

    def try_submit(self, job: CellJob, started: Callable[[], None]) -> Future[CellOutcome]:
        started()
        result = measure_cell_round(job, self.node, self.workers, self._where)
        future: Future[CellOutcome] = Future()
        future.set_result(CellOutcome(job, result, self.node))
        return future

    def cancel(self) -> None:
        """Nothing is ever outstanding: a job is finished when try_submit returns."""
