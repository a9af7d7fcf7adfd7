"""The measurement run: a scenario's cells, each round measured by an executor, saved as it goes.

    load scenario -> [local: target + fingerprint + peak bandwidth (workers)] -> for each cell round:
    CellJob -> executor (local: this process; ray: a task on a cluster) -> CellOutcome ->
    the result file of the target it ran on

What a round measures is harness/execute/cellround.py, the same on every executor; the runner plans
the jobs, in round-major order (every cell's round 1, then every cell's round 2, ...), and is the one
writer of result files: one per hardware target the cells ran on. A file is rewritten atomically after
every round, so an interrupted run (Ctrl-C, a killed process) loses no finished cell; ``resume``
continues the newest unfinished file of the same scenario per target. Every worker call has a time
limit (``measure.cell_timeout_s``): a hung device ends that cell as ``timeout`` and the run goes on.
Nothing here imports torch or touches CUDA: the workers do.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.errors import RunFailure, UserError
from harness.execute.cellround import max_batch_key
from harness.execute.executor import Executor, NoPlacement
from harness.execute.jobs import CellJob, CellOutcome, NodeInfo
from harness.execute.local import LocalExecutor
from harness.execute.shards import shard_cells
from harness.hardware import is_cuda, resolve_device
from harness.measure import cell as cell_worker
from harness.measure import stability
from harness.measure.worker import IsolatedRunner, WorkerOutcome
from harness.results.schema import CellResult, GitInfo, MaxBatch, Pairing, RunResult, ScenarioRef, Shard
from harness.results.store import load_result, result_filename, result_files, save_result
from harness.scenario import Cell, LoadedScenario, expand_cells, load_scenario


@dataclass(frozen=True)
class RunOptions:
    scenario: str = "scenarios/default.toml"
    device: str = "auto"
    out_dir: Path = Path("results")
    quick: bool = False
    resume: bool = False
    rerun_unstable: bool = False  # with resume: measure again the cells the newest run found unstable
    rounds: int | None = None  # measurement rounds, instead of the scenario's measure.rounds
    shard: Shard | None = None  # measure only this shard of the cells (harness/execute/shards.py)


@dataclass
class RunProgress:
    """Callbacks the command line uses to show progress; the runner itself prints nothing."""

    start: Callable[[int, int], None] = lambda total, done: None  # cells in all, cells already done
    cell_started: Callable[[Cell], None] = lambda cell: None
    cell_finished: Callable[[Cell, CellResult], None] = lambda cell, result: None
    # a cell that did not finish "ok" is not measured in later rounds: those rounds count as done
    rounds_skipped: Callable[[Cell, int], None] = lambda cell, n: None


@dataclass
class ResultFile:
    """One target's result file of this run, and where each of its cells is in it."""

    path: Path
    result: RunResult
    index: dict[tuple[str, int, int, str, str], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {c.key: i for i, c in enumerate(self.result.cells)}


@dataclass
class RunOutcome:
    path: Path  # the first target's file (the only one unless cells ran on several kinds of hardware)
    result: RunResult
    failed_cells: list[CellResult] = field(default_factory=list)
    files: list[tuple[Path, RunResult]] = field(default_factory=list)  # every target's file, first one first

    @property
    def exit_code(self) -> int:
        """1 when a cell failed unexpectedly (an error or a timeout, not an out-of-memory), else 0."""
        return 1 if self.failed_cells else 0

    @property
    def failed_checks(self) -> dict[str, list[CellResult]]:
        """Cells by the name of each self-check they failed."""
        by_name: dict[str, list[CellResult]] = {}
        for _, result in self.files or [(self.path, self.result)]:
            for cell in result.cells:
                for name in dict.fromkeys(cell.checks_failed):
                    by_name.setdefault(name, []).append(cell)
        return by_name


def git_info(cwd: Path | None = None) -> GitInfo:
    """The commit of the working tree and whether tracked files differ from it."""

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return GitInfo(commit=None, short=None, dirty=None)
    status = git("status", "--porcelain", "--untracked-files=no")
    return GitInfo(
        commit=commit,
        short=git("rev-parse", "--short", "HEAD"),
        dirty=None if status is None else bool(status),
        branch=git("rev-parse", "--abbrev-ref", "HEAD"),
    )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _find_resumable(
    out_dir: Path,
    target: str,
    loaded: LoadedScenario,
    device: str,
    *,
    finished_too: bool = False,
    shard: Shard | None = None,
) -> tuple[Path, RunResult] | None:
    """The newest unfinished result of this scenario (same content) and shard on this target, if any;
    with ``finished_too``, the newest one whether finished or not."""
    folder = out_dir / target
    if not folder.is_dir():
        return None
    for path in reversed(result_files(folder)):
        result = load_result(path)
        same = result.scenario.sha256 == loaded.content_sha256 and result.device == device and result.shard == shard
        if same and (finished_too or result.finished_utc is None):
            return path, result
    return None


def _resumable_targets(out_dir: Path) -> list[str]:
    """Targets with a result folder under ``out_dir``, in name order."""
    if not out_dir.is_dir():
        return []
    return sorted(p.name for p in out_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


FAILED_STATUSES = ("error", "timeout")  # cell outcomes that make a run exit 1 (out-of-memory does not)


class Runner:
    """Measures the cells of one scenario and keeps one result file per hardware target current.

    Without an ``executor`` the cells run on this machine's ``options.device``, one at a time.
    """

    def __init__(self, options: RunOptions, progress: RunProgress | None = None, executor: Executor | None = None):
        self.options = options
        self.progress = progress or RunProgress()
        self.loaded = load_scenario(options.scenario)
        self.executor = executor
        self.device = executor.device if executor is not None else resolve_device(options.device)
        self.device_kind = "cuda" if is_cuda(self.device) else "cpu"
        self.workers = IsolatedRunner()
        self.timeout_s = self.loaded.scenario.measure.cell_timeout_s
        self.rounds = options.rounds or self.loaded.scenario.measure.rounds
        self._max_batch: dict[tuple[str, tuple[str, str, int, str]], MaxBatch] = {}  # by target and max_batch_key
        self._started = datetime.now(UTC)
        self._git: GitInfo | None = None
        # the run being measured, set by begin(): one file per target, the first also as path/result
        self.files: dict[str, ResultFile] = {}
        self.path: Path = Path()
        self.result: RunResult
        self._where: dict[tuple[str, int, int, str, str], str] = {}  # cell key -> the target whose file holds it
        self._failed: list[CellResult] = []

    def run(self) -> RunOutcome:
        """Every round of every cell, then the run's assessment: the whole run."""
        cells = self.begin()
        self.sweep(cells)
        return self.finish()

    def begin(self, pairing: Pairing | None = None) -> list[Cell]:
        """Open (or reopen) the result files and, measuring locally, probe the peak; the cells to measure,
        in scenario order.

        :meth:`run` then measures every round of every cell; a driver that orders the measurements
        itself (``attnbench ab``, interleaving two revisions) calls :meth:`measure_round` and
        :meth:`finish` directly. ``pairing`` marks the file as one side of such a comparison.
        """
        if self.executor is None:
            self._begin_local(pairing)
        else:
            self._reopen_remote()
        cells = expand_cells(self.loaded.scenario, self.loaded.variants)
        rounds = self.rounds
        if self.options.shard is not None:
            cells = shard_cells(self.loaded, cells, self.options.shard, rounds)
        # a failed cell is not measured again in later rounds, so it counts as done for all of them
        existing = [c for f in self.files.values() for c in f.result.cells]
        done = sum(min(c.rounds_done, rounds) if c.status == "ok" else rounds for c in existing)
        self.progress.start(len(cells) * rounds, done)
        self._failed = [c for c in existing if c.status in FAILED_STATUSES]
        return cells

    def _begin_local(self, pairing: Pairing | None) -> None:
        target, environment = self._describe()
        path, result = self._open_result(target, environment)
        if pairing is not None:
            result.pairing = pairing
        if result.peak_bandwidth_gbps is None:
            peak = self._peak(target, environment)
            result.environment["peak_bandwidth"] = peak
            result.peak_bandwidth_gbps = max(peak["read_gbps"], peak["copy_gbps"])
        save_result(result, path)
        self._add_file(target, path, result)
        node = NodeInfo(target, result.environment, result.peak_bandwidth_gbps)
        self.executor = LocalExecutor(self.workers, node, self.device)

    def _reopen_remote(self) -> None:
        """Cells run where the executor puts them: files open as targets report, and with --resume the
        unfinished file of this scenario of every target under the results folder is continued."""
        if not self.options.resume:
            return
        out_dir = self.options.out_dir
        for target in _resumable_targets(out_dir):
            if self.options.rerun_unstable:
                found = _find_resumable(
                    out_dir, target, self.loaded, self.device_kind, finished_too=True, shard=self.options.shard
                )
                if found is not None:
                    found = self._without_unstable(*found)
            else:
                found = _find_resumable(out_dir, target, self.loaded, self.device_kind, shard=self.options.shard)
            if found is not None:
                self._add_file(target, *found)
        if not self.files:
            what = "run" if self.options.rerun_unstable else "unfinished run"
            raise UserError(
                f"no {what} of scenario {self.loaded.scenario.name!r} (same file content) on any target to resume",
                source=str(out_dir),
            )

    def _add_file(self, target: str, path: Path, result: RunResult) -> ResultFile:
        file = ResultFile(path, result)
        if not self.files:
            self.path, self.result = path, result
        self.files[target] = file
        for cell in result.cells:
            self._where[cell.key] = target
            if cell.metrics is not None and cell.metrics.max_batch is not None:
                key = (cell.variant, cell.dtype, cell.context_len, cell.backend)
                self._max_batch[(target, key)] = cell.metrics.max_batch
        return file

    def existing(self, cell: Cell) -> CellResult | None:
        """The cell as a result file holds it, if it was measured before."""
        target = self._where.get(cell.key)
        if target is None:
            return None
        file = self.files[target]
        return file.result.cells[file.index[cell.key]]

    def _next_round(self, cell: Cell) -> int | None:
        """The round of ``cell`` to measure next; None when all are done or the cell failed."""
        existing = self.existing(cell)
        if existing is None:
            return 0
        if existing.status != "ok" or existing.rounds_done >= self.rounds:
            return None
        return existing.rounds_done

    def job(self, cell: Cell, round_index: int) -> CellJob:
        """The job that measures round ``round_index`` of ``cell``."""
        key = max_batch_key(cell)
        return CellJob(
            scenario=self.loaded,
            cell=cell,
            round_index=round_index,
            previous=self.existing(cell) if round_index > 0 else None,
            device=self.device,
            quick=self.options.quick,
            max_batch={target: found for (target, k), found in self._max_batch.items() if k == key},
            target=self._where.get(cell.key) if round_index > 0 else None,
        )

    def measure_round(self, cell: Cell, round_index: int) -> CellResult | None:
        """Measure round ``round_index`` (from 0) of ``cell`` and save the file; None when that round is
        done already or the cell failed in an earlier one."""
        existing = self.existing(cell)
        if existing is not None and (existing.status != "ok" or existing.rounds_done > round_index):
            return None
        started = self._start(self.job(cell, round_index))
        if started is None:
            assert self.executor is not None
            raise RuntimeError(f"the {self.executor.name} executor has no room for a job with none running")
        return started if isinstance(started, CellResult) else self._record(started.result())

    def sweep(self, cells: list[Cell]) -> None:
        """Every remaining round of every cell, as many at once as the executor takes, in round-major order.

        A cell's next round is planned when its previous one arrives; a first round whose max batch
        another cell's running first round is searching waits for it (one search per target). Ctrl-C
        cancels the executor's outstanding jobs; every finished round is saved already.
        """
        assert self.executor is not None, "begin() first"
        position = {cell.key: i for i, cell in enumerate(cells)}
        ready = {(r, position[c.key]) for c in cells if (r := self._next_round(c)) is not None}
        running: dict[Future[CellOutcome], tuple[int, int]] = {}
        try:
            while ready or running:
                for round_index, i in sorted(ready):
                    searching = [cells[j] for r, j in running.values() if r == 0]
                    if round_index == 0 and self._searching(cells[i], searching):
                        continue
                    started = self._start(self.job(cells[i], round_index))
                    if started is None:
                        continue
                    ready.discard((round_index, i))
                    if not isinstance(started, CellResult):  # else recorded at once: it could run nowhere
                        running[started] = (round_index, i)
                        if started.done():  # measured already (the local executor): record it before going on
                            break
                if not running:
                    if ready:
                        raise RuntimeError(f"the {self.executor.name} executor took none of {len(ready)} jobs")
                    break
                done = [f for f in running if f.done()] or list(wait(list(running), return_when=FIRST_COMPLETED)[0])
                for future in sorted(done, key=running.__getitem__):
                    round_index, i = running.pop(future)
                    measured = self._record(future.result())
                    if measured.status == "ok" and round_index + 1 < self.rounds:
                        ready.add((round_index + 1, i))
        except BaseException:
            self.executor.cancel()
            raise

    def _searching(self, cell: Cell, first_rounds: list[Cell]) -> bool:
        """Whether a running first round of another cell is searching the max batch ``cell`` would search."""
        if "max_batch" not in self.loaded.scenario.measure.selected_metrics:
            return False
        key = max_batch_key(cell)
        if any(k == key for _, k in self._max_batch):
            return False
        return any(max_batch_key(other) == key for other in first_rounds)

    def _start(self, job: CellJob) -> Future[CellOutcome] | CellResult | None:
        """Hand ``job`` to the executor: its future, None when it has no room now, or the cell as recorded
        when the job can run nowhere (a later round whose target is gone: that round's error)."""
        assert self.executor is not None
        try:
            return self.executor.try_submit(job, lambda: self.progress.cell_started(job.cell))
        except NoPlacement as exc:
            previous, target = job.previous, job.target
            if previous is None or target is None:
                raise RunFailure(f"{job.label} can run nowhere: {exc}", source=self.executor.name) from None
            failed = previous.model_copy(update={"status": "error", "error": f"round {job.round_index + 1}: {exc}"})
            return self._record(CellOutcome(job, failed, NodeInfo(target, {}, None)))

    def _record(self, outcome: CellOutcome) -> CellResult:
        """Put a measured round into its target's file and save it; the cell as it now stands."""
        job, result = outcome.job, outcome.result
        target = job.target or outcome.node.target
        file = self.files.get(target) or self._add_file(target, *self._new_result(outcome.node))
        cell = job.cell
        if cell.key in file.index:
            file.result.cells[file.index[cell.key]] = result
        else:
            file.index[cell.key] = len(file.result.cells)
            file.result.cells.append(result)
        self._where[cell.key] = target
        if job.round_index == 0 and result.metrics is not None and result.metrics.max_batch is not None:
            self._max_batch.setdefault((target, max_batch_key(cell)), result.metrics.max_batch)
        save_result(file.result, file.path)
        if result.status in FAILED_STATUSES:
            self._failed.append(result)
        self.progress.cell_finished(cell, result)
        if result.status != "ok" and job.round_index + 1 < self.rounds:
            self.progress.rounds_skipped(cell, self.rounds - job.round_index - 1)
        return result

    def finish(self) -> RunOutcome:
        """Assess every cell's stability against its file's other cells, mark the files finished, save them."""
        for file in self.files.values():
            stability.assess_run(file.result)
            file.result.finished_utc = _now()
            save_result(file.result, file.path)
        files = [(f.path, f.result) for f in self.files.values()]
        if not files:
            raise RunFailure("no cell was measured, so no result file was written", source=self.options.scenario)
        return RunOutcome(files[0][0], files[0][1], self._failed, files)

    def _call(self, fn: Callable[[dict[str, Any]], dict[str, Any]], payload: dict[str, Any]) -> WorkerOutcome:
        return self.workers.call(fn, payload, timeout_s=self.timeout_s)

    def _describe(self) -> tuple[str, dict[str, Any]]:
        """Target id and fingerprint, taken in a worker: this process never initialises CUDA."""
        outcome = self._call(cell_worker.describe_machine, {"device": self.device})
        if outcome.status != "ok" or outcome.value is None:
            raise RunFailure(f"describing the device failed: {outcome.error}", source=self.device)
        return outcome.value["target"], outcome.value["environment"]

    def _open_result(self, target: str, environment: dict[str, Any]) -> tuple[Path, RunResult]:
        out_dir = self.options.out_dir
        if self.options.resume and self.options.rerun_unstable:
            return self._reopen_unstable(out_dir, target)
        if self.options.resume:
            found = _find_resumable(out_dir, target, self.loaded, self.device_kind, shard=self.options.shard)
            if found is None:
                raise UserError(
                    f"no unfinished run of scenario {self.loaded.scenario.name!r} (same file content) "
                    f"for target {target} to resume",
                    source=str(out_dir / target),
                )
            return found
        return self._create(target, environment)

    def _create(self, target: str, environment: dict[str, Any]) -> tuple[Path, RunResult]:
        """A new result file for ``target``: every file of one run has the run's start time and commit."""
        if self._git is None:
            self._git = git_info()
        git, started, shard = self._git, self._started, self.options.shard
        part = f"shard-{shard.index}-of-{shard.count}" if shard is not None else None
        path = self.options.out_dir / target / result_filename(started, git.short, part)
        if path.exists():  # two runs started within one second: never overwrite
            raise UserError("exists already; wait a second and run again", source=str(path))
        scenario = self.loaded.scenario
        result = RunResult(
            target=target,
            environment=environment,
            git=git,
            scenario=ScenarioRef(
                name=scenario.name,
                source=self.loaded.source,
                sha256=self.loaded.content_sha256,
                description=scenario.description,
                model=scenario.model.model_dump(),
                measure=scenario.measure.model_dump(),
            ),
            device=self.device_kind,
            quick=self.options.quick,
            started_utc=started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            shard=shard,
        )
        save_result(result, path)
        return path, result

    def _new_result(self, node: NodeInfo) -> tuple[Path, RunResult]:
        """The file of a target whose first cell just arrived, with that node's fingerprint and peak."""
        path, result = self._create(node.target, node.environment)
        result.peak_bandwidth_gbps = node.peak_gbps
        return path, result

    def _reopen_unstable(self, out_dir: Path, target: str) -> tuple[Path, RunResult]:
        """The newest run of this scenario on this target, finished or not, with its unstable cells
        removed (they are measured again, every round, into the same file)."""
        found = _find_resumable(
            out_dir, target, self.loaded, self.device_kind, finished_too=True, shard=self.options.shard
        )
        if found is None:
            raise UserError(
                f"no run of scenario {self.loaded.scenario.name!r} (same file content) for target {target} "
                "to re-measure unstable cells of",
                source=str(out_dir / target),
            )
        return self._without_unstable(*found)

    @staticmethod
    def _without_unstable(path: Path, result: RunResult) -> tuple[Path, RunResult]:
        kept = [cell for cell in result.cells if not cell.unstable]
        result = result.model_copy(update={"cells": kept, "finished_utc": None})
        save_result(result, path)
        return path, result

    def _peak(self, target: str, environment: dict[str, Any]) -> dict[str, Any]:
        outcome = self._call(
            cell_worker.probe_peak, {"target": target, "device": self.device, "environment": environment}
        )
        if outcome.status != "ok" or outcome.value is None:
            raise RunFailure(f"the peak bandwidth probe failed: {outcome.error}", source=target)
        return outcome.value
