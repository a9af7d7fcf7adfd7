"""The Ray executor on a local two-node Ray cluster with fake GPUs of two types (A100: 1, H100: 2).

The cells measure on the CPU (there is no GPU here) while each task asks Ray for one of the fake GPUs,
so Ray's GPU assignment, the routing by type and the bookkeeping of placements are real. One cluster
serves the whole module: starting Ray costs seconds.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from helpers_tiny import TINY

from harness.errors import UserError
from harness.results.schema import Placement, RunResult
from harness.results.store import load_result, result_files
from harness.run.jobs import CellJob, CellOutcome, NodeInfo
from harness.run.runner import Runner, RunOptions, RunProgress

pytestmark = pytest.mark.ray

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """Node ids by fake GPU type, of a cluster the module's tests share."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    os.environ["ATTNBENCH_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "attnbench-cache")
    started = time.perf_counter()
    head = {"num_cpus": 1, "num_gpus": 1, "resources": {"accelerator_type:A100": 1}, "object_store_memory": 80 * MIB}
    nodes = Cluster(initialize_head=True, head_node_args=head)
    nodes.add_node(num_cpus=1, num_gpus=2, resources={"accelerator_type:H100": 1}, object_store_memory=80 * MIB)
    ray.init(address=nodes.address, logging_level="warning", log_to_driver=False)
    # the tests' task wrappers travel by value: the Ray workers cannot import this module
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    print(f"\nRay cluster of two nodes up in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    by_type = {}
    for entry in ray.nodes():
        for key in entry["Resources"]:
            if key.startswith("accelerator_type:"):
                by_type[key.removeprefix("accelerator_type:")] = entry["NodeID"]
    yield by_type
    ray.shutdown()
    nodes.shutdown()


def executor(**kwargs):
    from harness.run.raytasks import RayExecutor

    return RayExecutor(device="cpu", gpu_per_cell=True, **kwargs)


def run(tmp_path: Path, out: str, **kwargs) -> RunResult:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    progress = kwargs.pop("progress", None)
    placing = {k: kwargs.pop(k) for k in ("gpu_type", "task") if k in kwargs}
    options = RunOptions(scenario=str(scenario), out_dir=tmp_path / out, quick=True, **kwargs)
    return Runner(options, progress, executor(**placing)).run().result


def overlaps(placements: list[Placement]) -> list[tuple[Placement, Placement]]:
    """Pairs of rounds that ran at once on one (node, GPU)."""
    spans = sorted(placements, key=lambda p: (p.node_id, p.device_id, p.started_utc))
    return [
        (a, b)
        for a, b in itertools.pairwise(spans)
        if (a.node_id, a.device_id) == (b.node_id, b.device_id)
        and datetime.fromisoformat(b.started_utc) < datetime.fromisoformat(a.finished_utc)
    ]


def test_cells_on_ray_never_share_a_gpu_and_match_a_local_run(cluster: dict[str, str], tmp_path: Path) -> None:
    on_ray = run(tmp_path, "ray")
    placements = [p for c in on_ray.cells for p in c.placement]
    assert len(placements) == 4 and {p.executor for p in placements} == {"ray"}
    assert {p.node_id for p in placements} <= set(cluster.values())
    assert all(p.device_id in {"0", "1"} for p in placements)  # the GPU Ray assigned, as the workers saw it
    assert overlaps(placements) == []
    local = Runner(RunOptions(scenario=str(tmp_path / "tiny.toml"), out_dir=tmp_path / "local", quick=True)).run()
    fields = ("variant", "batch_size", "context_len", "head_dim", "n_kv_heads", "kv_bytes_per_token", "params_total")
    assert sorted(tuple(getattr(c, f) for f in fields) for c in on_ray.cells) == sorted(
        tuple(getattr(c, f) for f in fields) for c in local.result.cells
    )
    assert [c.status for c in on_ray.cells] == ["ok"] * 4
    assert on_ray.target == local.result.target and on_ray.peak_bandwidth_gbps is not None


def test_a_gpu_type_routes_every_cell_to_nodes_of_that_type(cluster: dict[str, str], tmp_path: Path) -> None:
    result = run(tmp_path, "h100", gpu_type="H100")
    assert {p.node_id for c in result.cells for p in c.placement} == {cluster["H100"]}


def test_a_gpu_type_no_node_has_fails_at_once_listing_what_the_cluster_has(cluster: dict[str, str]) -> None:
    started = time.perf_counter()
    with pytest.raises(UserError) as info:
        executor(gpu_type="B200")
    assert time.perf_counter() - started < 10  # no task was started, nothing waited for
    assert str(info.value) == (
        "--gpu-type: no node of the cluster has GPU type 'B200'; it has 2 nodes: A100 (1 node, 1 GPUs), "
        "H100 (1 node, 2 GPUs)"
    )


def crash_first_attempt_of_b1(job: CellJob, node: NodeInfo) -> CellOutcome:
    """A Ray task that dies by SIGKILL (as the OOM killer ends it) on its first attempt at the b1 MHA cell."""
    from harness.run.raytasks import run_job

    if job.cell.label.startswith("H16-MHA b1") and job.attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return run_job(job, node)


def crash_always_at_b2(job: CellJob, node: NodeInfo) -> CellOutcome:
    from harness.run.raytasks import run_job

    if job.cell.label.startswith("H16-MHA b2"):
        os.kill(os.getpid(), signal.SIGKILL)
    return run_job(job, node)


def test_a_crashed_task_is_retried_once_and_recorded(cluster: dict[str, str], tmp_path: Path) -> None:
    result = run(tmp_path, "crash", task=crash_first_attempt_of_b1)
    (cell,) = [c for c in result.cells if c.variant == "H16-MHA" and c.batch_size == 1]
    assert cell.status == "ok"
    (placement,) = cell.placement
    assert placement.attempt == 2 and placement.retried_after is not None and "crashed" in placement.retried_after
    assert [c.status for c in result.cells if c is not cell] == ["ok"] * 3


def test_a_task_that_crashes_twice_is_recorded_as_killed_and_the_run_goes_on(
    cluster: dict[str, str], tmp_path: Path
) -> None:
    result = run(tmp_path, "crash2", task=crash_always_at_b2)
    statuses = {(c.variant, c.batch_size): c.status for c in result.cells}
    assert statuses == {
        ("H16-MHA", 1): "ok",
        ("H16-MHA", 2): "killed",
        ("H16-MQA-CLA2", 1): "ok",
        ("H16-MQA-CLA2", 2): "ok",
    }
    (killed,) = [c for c in result.cells if c.status == "killed"]
    assert killed.error is not None and "crashed again" in killed.error


def test_resume_on_ray_skips_the_finished_cells(cluster: dict[str, str], tmp_path: Path) -> None:
    finished: list[str] = []

    def stop_after_two(cell: object, result: object) -> None:
        finished.append("cell")
        if len(finished) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "resume", progress=RunProgress(cell_finished=stop_after_two))
    (path,) = result_files(tmp_path / "resume")
    partial = load_result(path)
    assert len(partial.cells) == 2 and partial.finished_utc is None
    resumed = run(tmp_path, "resume", resume=True)
    assert len(resumed.cells) == 4 and resumed.finished_utc is not None
    before = {c.key: c.placement for c in partial.cells}
    assert all(c.placement == before[c.key] for c in resumed.cells if c.key in before)  # not measured again
