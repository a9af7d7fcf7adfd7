"""The Ray executor: one Ray task per measurement round of a cell, placed on a node of the cluster.

    connect -> the cluster's nodes (GPU type filter: fails at once when none fits) ->
    describe + probe the peak of every node once (a task per node, in parallel) ->
    per job: a node with room (CUDA: a free GPU, ``num_gpus=1``; CPU: the whole node) -> task ->
    the round measured by cellround in isolated workers on that node -> CellOutcome to the runner

A task runs the same isolated workers as a local run (a fresh process per worker call, forked from
the Ray worker's forkserver), so no CUDA context outlives a cell; Ray sets ``CUDA_VISIBLE_DEVICES``
to the GPU it assigned, and the driver never touches CUDA. Tasks are pinned to a node (node
affinity), and the executor starts no more tasks on a node than it has room for, so no two cells
ever share a GPU, nor, on CPUs, a host. A lost Ray worker (a crash, a SIGKILL) or node is retried
once on a node of the same target; Ray's out-of-memory killer is an ``oom`` and never retried.
Ray is imported only here, and only when ``--executor ray`` is asked for.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

from harness.errors import RunFailure, UserError
from harness.run.cellround import lost_round, measure_cell_round
from harness.run.executor import NoPlacement
from harness.run.jobs import CellJob, CellOutcome, ExecutorName, NodeInfo, Where
from harness.run.node import describe_node as describe_this_node
from harness.run.worker import IsolatedRunner

ACCELERATOR_PREFIX = "accelerator_type:"  # the resource Ray gives a node for its GPU type
INSTALL_HINT = "pip install -e '.[ray]'"


def import_ray() -> Any:
    """The ray module, or a one-line UserError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(f"needs Ray, which is not installed: {INSTALL_HINT}", field="--executor ray") from None
    return ray


def describe_node(device: str, timeout_s: float) -> NodeInfo:
    """This node's target, fingerprint and measured peak bandwidth (harness/run/node.py), in a Ray task."""
    return describe_this_node(IsolatedRunner(), device, None, timeout_s)


def run_job(job: CellJob, node: NodeInfo) -> CellOutcome:
    """One round of a cell on this node (the body of a Ray task)."""
    import ray

    where = Where("ray", ray.get_runtime_context().get_node_id(), os.environ.get("CUDA_VISIBLE_DEVICES"))
    return CellOutcome(job, measure_cell_round(job, node, IsolatedRunner(), where), node)


@dataclass
class Node:
    """A node of the cluster as the executor schedules onto it."""

    node_id: str
    host: str
    cpus: int
    gpus: int
    gpu_type: str | None
    info: NodeInfo | None = None
    running: int = 0
    lost: bool = False


def cluster_nodes(ray: Any) -> list[Node]:
    """The cluster's live nodes, by node id."""
    nodes = []
    for entry in ray.nodes():
        if not entry.get("Alive"):
            continue
        resources: dict[str, float] = entry.get("Resources", {})
        types = [k.removeprefix(ACCELERATOR_PREFIX) for k in resources if k.startswith(ACCELERATOR_PREFIX)]
        nodes.append(
            Node(
                node_id=entry["NodeID"],
                host=entry.get("NodeManagerHostname", ""),
                cpus=int(resources.get("CPU", 0)),
                gpus=int(resources.get("GPU", 0)),
                gpu_type=types[0] if types else None,
            )
        )
    return sorted(nodes, key=lambda n: n.node_id)


def describe_cluster(nodes: list[Node]) -> str:
    """What the cluster has, in a few words: ``2 nodes: H100 (1 node, 8 GPUs), no GPU (1 node, 64 CPUs)``."""
    kinds: dict[str, tuple[int, int, int]] = {}
    for node in nodes:
        name = node.gpu_type or ("GPUs of no stated type" if node.gpus else "no GPU")
        count, gpus, cpus = kinds.get(name, (0, 0, 0))
        kinds[name] = (count + 1, gpus + node.gpus, cpus + node.cpus)
    parts = [
        f"{name} ({count} node{'s' if count > 1 else ''}, " + (f"{gpus} GPUs)" if gpus else f"{cpus} CPUs)")
        for name, (count, gpus, cpus) in sorted(kinds.items())
    ]
    return f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}: " + ", ".join(parts)


class RayExecutor:
    """Places each job on a node of a Ray cluster with room for it (module doc)."""

    def __init__(
        self,
        *,
        address: str | None = None,
        gpu_type: str | None = None,
        device: str = "auto",
        gpu_per_cell: bool | None = None,
        timeout_s: float = 600.0,
        task: Callable[[CellJob, NodeInfo], CellOutcome] = run_job,
    ) -> None:
        """``device``: what the workers measure on (auto: cuda when the cluster has GPUs). ``gpu_per_cell``:
        whether a task asks Ray for one GPU (default: when measuring on cuda)."""
        ray = import_ray()
        self._ray = ray
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, logging_level="warning", log_to_driver=False)
        nodes = cluster_nodes(ray)
        if device == "auto":
            device = "cuda" if any(n.gpus for n in nodes) else "cpu"
        # A task's one GPU is cuda:0 inside it (Ray sets CUDA_VISIBLE_DEVICES); torch needs the index.
        self._device = "cuda:0" if device.startswith("cuda") else "cpu"
        self.gpu_per_cell = self._device != "cpu" if gpu_per_cell is None else gpu_per_cell
        usable = [n for n in nodes if (n.gpus > 0 if self.gpu_per_cell else n.cpus > 0)]
        if gpu_type is not None:
            usable = [n for n in usable if n.gpu_type == gpu_type]
        if not usable:
            wanted = f"GPU type {gpu_type!r}" if gpu_type else ("a GPU" if self.gpu_per_cell else "a CPU")
            raise UserError(
                f"no node of the cluster has {wanted}; it has {describe_cluster(nodes)}",
                field="--gpu-type" if gpu_type else "--executor ray",
            )
        self.nodes = {n.node_id: n for n in usable}
        self._task = ray.remote(max_retries=0)(task)
        self._lock = threading.Lock()
        self._refs: dict[Any, CellJob] = {}
        self._probe(timeout_s)

    @property
    def name(self) -> ExecutorName:
        return "ray"

    @property
    def device(self) -> str:
        return self._device

    def _placement(self, node: Node) -> dict[str, Any]:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        resources: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1} if self.gpu_per_cell else {"num_cpus": node.cpus}
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node.node_id, soft=False), **resources}

    def _probe(self, timeout_s: float) -> None:
        """Describe every node and probe its peak once, all at once; a node that fails is left out."""
        describe = self._ray.remote(max_retries=0)(describe_node)
        refs = {
            n.node_id: describe.options(**self._placement(n)).remote(self._device, timeout_s)
            for n in self.nodes.values()
        }
        errors = []
        for node_id, ref in refs.items():
            try:
                self.nodes[node_id].info = self._ray.get(ref)
            except Exception as exc:  # a node that cannot describe itself measures nothing
                errors.append(f"{self.nodes[node_id].host}: {_first_line(exc)}")
                del self.nodes[node_id]
        if not self.nodes:
            raise RunFailure(f"no node could describe its device: {'; '.join(errors)}", source="--executor ray")

    def targets(self) -> set[str]:
        return {n.info.target for n in self.nodes.values() if n.info is not None and not n.lost}

    def try_submit(self, job: CellJob, started: Callable[[], None]) -> Future[CellOutcome] | None:
        with self._lock:
            fitting = [
                n for n in self.nodes.values() if not n.lost and (job.target is None or _target(n) == job.target)
            ]
            if not fitting:
                raise NoPlacement(f"no live node of target {job.target} is left in the cluster")
            free = [n for n in fitting if n.running < (n.gpus if self.gpu_per_cell else 1)]
            if not free:
                return None
            node = min(free, key=lambda n: (n.running, n.node_id))
            node.running += 1
        started()
        future: Future[CellOutcome] = Future()
        self._submit(job, node, future)
        return future

    def _submit(self, job: CellJob, node: Node, future: Future[CellOutcome]) -> None:
        assert node.info is not None
        ref = self._task.options(**self._placement(node)).remote(job, node.info)
        with self._lock:
            self._refs[ref] = job
        ref.future().add_done_callback(lambda done: self._arrived(done, ref, job, node, future))

    def _arrived(self, done: Future[Any], ref: Any, job: CellJob, node: Node, future: Future[CellOutcome]) -> None:
        exceptions = self._ray.exceptions
        with self._lock:
            self._refs.pop(ref, None)
            node.running -= 1
        try:
            future.set_result(done.result())
            return
        except exceptions.OutOfMemoryError as exc:  # Ray's memory monitor killed the task: never retried
            outcome = lost_round(job, "oom", f"Ray's memory monitor killed the task: {_first_line(exc)}")
        except (exceptions.WorkerCrashedError, exceptions.NodeDiedError, exceptions.ObjectLostError) as exc:
            lost = isinstance(exc, (exceptions.NodeDiedError, exceptions.ObjectLostError))
            if lost:
                node.lost = True
            what = f"node {node.host} lost" if lost else f"the Ray worker on {node.host} crashed"
            if job.attempt == 1:
                self._retry(replace(job, attempt=2, retried_after=f"{what}: {_first_line(exc)}"), node, future)
                return
            outcome = lost_round(job, "error" if lost else "killed", f"{what} again (after {job.retried_after})")
        except exceptions.TaskCancelledError:
            future.cancel()
            return
        except BaseException as exc:  # a bug of the program: the runner raises it
            future.set_exception(exc)
            return
        assert node.info is not None
        future.set_result(CellOutcome(job, outcome, node.info))

    def _retry(self, job: CellJob, lost_on: Node, future: Future[CellOutcome]) -> None:
        """Run ``job`` again on a live node of the same target (the same node when it is still up)."""
        with self._lock:
            live = [n for n in self.nodes.values() if not n.lost and _target(n) == _target(lost_on)]
            node = lost_on if not lost_on.lost else (live[0] if live else None)
            if node is not None:
                node.running += 1
        if node is None:
            assert lost_on.info is not None
            future.set_result(
                CellOutcome(job, lost_round(job, "error", f"{job.retried_after}; no node left"), lost_on.info)
            )
            return
        self._submit(job, node, future)

    def cancel(self) -> None:
        """Cancel every task not finished yet (Ctrl-C): their workers are killed."""
        with self._lock:
            refs = list(self._refs)
        for ref in refs:
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # already finished, or its node is gone: nothing left to cancel
                continue


def _target(node: Node) -> str | None:
    return node.info.target if node.info is not None else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
