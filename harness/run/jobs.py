"""The typed, picklable contract between the runner and an executor: a job in, an outcome out."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from harness.measure.protocol import Entry, Request
from harness.results.schema import CellResult, MaxBatch, Placement
from harness.run.worker import WorkerOutcome
from harness.scenario import Cell, LoadedScenario

ExecutorName = Literal["local", "ray"]


class WorkerCaller(Protocol):
    """Runs the worker function ``entry`` names on ``request`` in an isolated worker (harness/run/worker.py's
    IsolatedRunner)."""

    def call(
        self, entry: Entry, request: Request, timeout_s: float | None = None
    ) -> WorkerOutcome: ...  # pragma: no cover - a protocol


@dataclass(frozen=True)
class CellJob:
    """One measurement round of one cell, with everything the node that runs it needs."""

    scenario: LoadedScenario  # the model, the variant and the measure settings (timing, budget, metrics)
    cell: Cell
    round_index: int  # from 0
    previous: CellResult | None  # the cell after its earlier rounds; None for round 0
    device: str  # as the workers take it: cpu, cuda or cuda:N
    quick: bool  # --quick: short timing windows
    # one side of an interleaved comparison (attnbench ab): each round takes the fixed window, since the
    # pairing of many short rounds, not one round's interval, decides (harness/run/cellround.py)
    paired: bool = False
    # the max batch of this cell's (variant, dtype, context, backend) where some node measured it, by target:
    # a node of a listed target reuses it instead of searching again
    max_batch: dict[str, MaxBatch] = field(default_factory=dict)
    # the target the cell's earlier rounds ran on: later rounds must run there too (samples are pooled)
    target: str | None = None
    # calls per warm sample, by metric, for round 0 to time with instead of calibrating its own: an
    # interleaved comparison hands the side measured first's to the other, so both time alike
    inner_reps: dict[str, int] | None = None
    attempt: int = 1  # 2 when an earlier attempt was lost with its worker or node
    retried_after: str | None = None  # how that attempt ended

    @property
    def label(self) -> str:
        return f"{self.cell.label} round {self.round_index + 1}"


@dataclass(frozen=True)
class NodeInfo:
    """A node's hardware as its workers saw it: target id, fingerprint and measured peak bandwidth."""

    target: str
    environment: dict[str, Any]  # harness.hardware.fingerprint, with the peak probe under "peak_bandwidth"
    peak_gbps: float | None  # the larger of the read and copy probes: what bandwidth fractions divide by

    @property
    def device_uuid(self) -> str | None:
        uuid = self.environment.get("gpu_uuid") or self.environment.get("cuda_uuid")
        return str(uuid) if uuid else None


@dataclass(frozen=True)
class Where:
    """What an executor knows of where a job runs; the round's Placement adds process and times."""

    executor: ExecutorName
    node_id: str
    device_id: str | None  # CUDA_VISIBLE_DEVICES as the workers see it

    @staticmethod
    def here(executor: ExecutorName = "local", node_id: str | None = None) -> Where:
        return Where(executor, node_id or socket.gethostname(), os.environ.get("CUDA_VISIBLE_DEVICES"))


@dataclass(frozen=True)
class CellOutcome:
    """A measured round (its placement appended to ``result.placement``) and the node it ran on."""

    job: CellJob
    result: CellResult
    node: NodeInfo


def utc_now() -> str:
    """The time now in UTC to the microsecond, as placements record it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def placement(where: Where, job: CellJob, node: NodeInfo, started_utc: str) -> Placement:
    return Placement(
        executor=where.executor,
        node_id=where.node_id,
        host=socket.gethostname(),
        device=job.device,
        device_id=where.device_id,
        device_uuid=node.device_uuid,
        pid=os.getpid(),
        started_utc=started_utc,
        finished_utc=utc_now(),
        attempt=job.attempt,
        retried_after=job.retried_after,
        peak_bandwidth_gbps=node.peak_gbps,
    )
