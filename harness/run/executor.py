"""What the runner asks of an executor: start a job where there is room, cancel what is left."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol

from harness.run.jobs import CellJob, CellOutcome, ExecutorName


class NoPlacement(Exception):
    """The job can run nowhere: recorded as that round's error; the run goes on."""


class Executor(Protocol):
    """Places jobs: in this process, or as tasks on a cluster. Never writes result files."""

    @property
    def name(self) -> ExecutorName: ...

    @property
    def device(self) -> str:
        """What the cells are measured on, as the workers take it: cpu, cuda or cuda:N."""
        ...

    def try_submit(self, job: CellJob, started: Callable[[], None]) -> Future[CellOutcome] | None:
        """Start ``job`` if there is room for it now (calling ``started`` as it does), else None (the runner
        tries again after an outcome arrives). Raises NoPlacement when it can run nowhere. A job that
        fails to run resolves to an outcome saying so; only a bug of the program raises from the future."""
        ...

    def cancel(self) -> None:
        """Cancel every job started and not finished (Ctrl-C)."""
        ...
