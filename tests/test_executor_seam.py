"""The runner over an executor that places cells on two kinds of hardware: one result file per target.

The executor here measures nothing: it answers each job at once with a synthetic round, as a Ray
task would return it, tagged with the node it "ran" on. What is tested is the runner's side of the
seam: files per target, later rounds on their first round's target, resume across targets.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from helpers_results import DEFAULT_ENVIRONMENT, make_cell
from helpers_tiny import tiny_scenario

from harness.results.store import load_result, result_files
from harness.run.jobs import CellJob, CellOutcome, ExecutorName, NodeInfo
from harness.run.runner import Runner, RunOptions

TINY = tiny_scenario(measure='metrics = ["decode"]\nrounds = 2\n')

NODES = {
    "H16-MHA": NodeInfo("gpu-a-80gb", {**DEFAULT_ENVIRONMENT, "target": "gpu-a-80gb"}, 2000.0),
    "H16-MQA-CLA2": NodeInfo("gpu-b-141gb", {**DEFAULT_ENVIRONMENT, "target": "gpu-b-141gb"}, 4800.0),
}


class TwoKinds:
    """Puts each variant's cells on a node of its own kind of hardware."""

    def __init__(self) -> None:
        self.jobs: list[CellJob] = []

    @property
    def name(self) -> ExecutorName:
        return "ray"

    @property
    def device(self) -> str:
        return "cuda"

    def try_submit(self, job: CellJob, started: Callable[[], None]) -> Future[CellOutcome]:
        started()
        self.jobs.append(job)
        node = NODES[job.cell.variant.name]
        cell = job.cell
        if job.previous is None:
            result = make_cell(cell.variant.name, cell.batch_size, cell.context_len, cell.dtype, cell.backend)
        else:
            result = job.previous.model_copy(update={"rounds_done": job.previous.rounds_done + 1})
        future: Future[CellOutcome] = Future()
        future.set_result(CellOutcome(job, result, node))
        return future

    def cancel(self) -> None:
        """Nothing is outstanding: every job is answered at once."""


def scenario(tmp_path: Path) -> str:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return str(path)


def test_cells_that_ran_on_two_kinds_of_hardware_go_to_one_file_per_target(tmp_path: Path) -> None:
    executor = TwoKinds()
    outcome = Runner(RunOptions(scenario=scenario(tmp_path), out_dir=tmp_path / "out"), executor=executor).run()
    files = {result.target: result for _, result in outcome.files}
    assert sorted(files) == ["gpu-a-80gb", "gpu-b-141gb"]
    assert {c.variant for c in files["gpu-a-80gb"].cells} == {"H16-MHA"}
    assert {c.variant for c in files["gpu-b-141gb"].cells} == {"H16-MQA-CLA2"}
    assert files["gpu-b-141gb"].peak_bandwidth_gbps == 4800.0  # the node's own peak
    assert all(c.rounds_done == 2 for r in files.values() for c in r.cells)
    # a later round is sent to the target its first round ran on
    assert all(job.target == NODES[job.cell.variant.name].target for job in executor.jobs if job.round_index == 1)
    paths = [path for path, _ in outcome.files]
    assert sorted(p.parent.name for p in paths) == ["gpu-a-80gb", "gpu-b-141gb"]
    assert len({p.name for p in paths}) == 1  # one run: one start time and commit in every file's name
    assert all(load_result(p).finished_utc is not None for p in paths)


def test_resume_continues_the_unfinished_file_of_every_target(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = TwoKinds()
    runner = Runner(RunOptions(scenario=scenario(tmp_path), out_dir=out, rounds=1), executor=first)
    cells = runner.begin()
    for cell in cells[:1] + cells[2:3]:  # one cell of each variant, then the run stops
        runner.measure_round(cell, 0)
    runner.close()
    assert len(result_files(out)) == 2
    again = TwoKinds()
    outcome = Runner(RunOptions(scenario=scenario(tmp_path), out_dir=out, resume=True, rounds=1), executor=again).run()
    assert sorted(str(p) for p, _ in outcome.files) == sorted(str(p) for p in result_files(out))
    assert len(again.jobs) == 2  # only the two cells not measured before
    assert sum(len(r.cells) for _, r in outcome.files) == 4
