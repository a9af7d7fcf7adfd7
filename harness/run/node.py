"""A node described once, by its own workers: its target id, fingerprint and measured peak bandwidth.

Both the local runner and a Ray task per node describe a node this way; the parent never initialises
CUDA, so each step runs in an isolated worker. A step that fails is a :class:`RunFailure`: without the
node's target nothing can be filed, and without its peak no bandwidth fraction can be given.
"""

from __future__ import annotations

from typing import Any

from harness.errors import RunFailure
from harness.measure.protocol import Entry, MachineRequest, PeakRequest
from harness.run.jobs import NodeInfo, WorkerCaller


def describe(
    workers: WorkerCaller, device: str, threads: int | None, timeout_s: float | None
) -> tuple[str, dict[str, Any]]:
    """The target id and fingerprint of ``device``, with the torch threads the measuring workers take."""
    request = MachineRequest(device=device, threads=threads)
    outcome = workers.call(Entry.DESCRIBE_MACHINE, request, timeout_s=timeout_s)
    if outcome.status != "ok" or outcome.value is None:
        raise RunFailure(f"describing the device failed: {outcome.error}", source=device)
    return outcome.value["target"], outcome.value["environment"]


def probe_peak(
    workers: WorkerCaller, device: str, target: str, environment: dict[str, Any], timeout_s: float | None
) -> dict[str, Any]:
    """The target's peak bandwidth probe (cached per target by the worker: harness/measure/bandwidth.py)."""
    request = PeakRequest(target=target, device=device, environment=environment)
    outcome = workers.call(Entry.PROBE_PEAK, request, timeout_s=timeout_s)
    if outcome.status != "ok" or outcome.value is None:
        raise RunFailure(f"the peak bandwidth probe failed: {outcome.error}", source=target)
    return outcome.value


def probe_matmul(
    workers: WorkerCaller, device: str, target: str, environment: dict[str, Any], timeout_s: float | None
) -> dict[str, Any] | None:
    """The target's peak matmul rate per dtype (cached per target: harness/measure/matmul_peak.py); None when the
    probe failed, which leaves only the FLOP/s fractions out."""
    request = PeakRequest(target=target, device=device, environment=environment)
    outcome = workers.call(Entry.PROBE_MATMUL, request, timeout_s=timeout_s)
    return outcome.value if outcome.status == "ok" else None


def peak_gbps(peak: dict[str, Any]) -> float:
    """What bandwidth fractions divide by: the larger of the read and copy probes."""
    return max(float(peak["read_gbps"]), float(peak["copy_gbps"]))


def describe_node(workers: WorkerCaller, device: str, threads: int | None, timeout_s: float | None) -> NodeInfo:
    """The node's target, its fingerprint with the peak probes under ``peak_bandwidth`` and ``peak_matmul``, and its
    peak bandwidth."""
    target, environment = describe(workers, device, threads, timeout_s)
    peak = probe_peak(workers, device, target, environment, timeout_s)
    matmul = probe_matmul(workers, device, target, environment, timeout_s)
    return NodeInfo(target, {**environment, "peak_bandwidth": peak, "peak_matmul": matmul}, peak_gbps(peak))
