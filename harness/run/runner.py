"""The measurement run: a scenario's cells, each round measured by an executor, saved as it goes.

    load scenario -> [local: target + fingerprint + peak bandwidth (workers)] -> for each cell round:
    CellJob -> executor (local: this process; ray: a task on a cluster) -> CellOutcome ->
    the result file of the target it ran on

What a round measures is harness/run/cellround.py, the same on every executor; the runner plans
the jobs, in round-major order (every cell's round 1, then every cell's round 2, ...), and is the one
writer of result files: one per hardware target the cells ran on. A file is rewritten atomically after
every round, so an interrupted run (Ctrl-C, a killed process) loses no finished cell; ``resume``
continues the newest unfinished file of the same scenario per target. A stop signal
(:class:`~harness.signals.Interrupted`) ends the worker and is recorded in every file of the run
(``interruptions``). Files are claimed, locked while written and saved as harness/run/runfiles.py says;
the folder is checked writable, with room for the files, before anything is measured, and a save
that fails later (a full disk) stops the run with the last good file in place. Every worker call has
a time limit (``measure.cell_timeout_s``): a hung device ends that cell as ``timeout`` and the run
goes on. Nothing here touches CUDA, nor imports torch: the rounds name the worker functions by their
entry points and hand them typed requests (harness/measure/protocol.py); only the workers import and
run them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.cellkey import CellKey
from harness.errors import RunFailure, UserError
from harness.hardware import is_cuda, resolve_device
from harness.predict.record import CellPredictor
from harness.results import stability
from harness.results.schema import CellResult, Interruption, MaxBatch, Pairing, RunResult, Shard
from harness.results.store import check_writable, load_result
from harness.run import runfiles
from harness.run.executor import Executor, NoPlacement
from harness.run.jobs import CellJob, CellOutcome, NodeInfo
from harness.run.local import LocalExecutor
from harness.run.node import describe, peak_gbps, probe_matmul, probe_peak
from harness.run.runfiles import ResultFile, RunIdentity, git_info, needed_bytes
from harness.run.shards import shard_cells
from harness.run.worker import IsolatedRunner
from harness.scenario import Cell, expand_cells, load_scenario
from harness.signals import Interrupted


@dataclass(frozen=True)
class RunOptions:
    scenario: str = "scenarios/default.toml"
    device: str = "auto"
    out_dir: Path = Path("results")
    quick: bool = False
    resume: bool = False
    rerun_unstable: bool = False  # with resume: measure again the cells the newest run found unstable
    rounds: int | None = None  # measurement rounds, instead of the scenario's measure.rounds
    shard: Shard | None = None  # measure only this shard of the cells (harness/run/shards.py)
    # calibrate every cell's calls per warm sample afresh, rather than reuse the newest earlier finished
    # result's of this scenario (runfiles.calibrated_earlier)
    recalibrate: bool = False


@dataclass
class RunProgress:
    """Callbacks the command line uses to show progress; the runner itself prints nothing."""

    start: Callable[[int, int], None] = lambda total, done: None  # cells in all, cells already done
    cell_started: Callable[[Cell], None] = lambda cell: None
    cell_finished: Callable[[Cell, CellResult], None] = lambda cell, result: None
    # a cell that did not finish "ok" is not measured in later rounds: those rounds count as done
    rounds_skipped: Callable[[Cell, int], None] = lambda cell, n: None


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


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Cell outcomes that make a run exit 1. Out-of-memory does not, nor does a worker killed without a
# word (``killed``: a SIGKILL the cgroup did not count as an OOM kill, or where it keeps no count;
# its error names the likely cause).
FAILED_STATUSES = ("error", "timeout")


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
        self._max_batch: dict[tuple[str, tuple[str, str, int, str]], MaxBatch] = {}  # by target and max_batch_group
        self._identity: RunIdentity | None = None
        # the run being measured, set by begin(): one file per target, the first also as path/result
        self.files: dict[str, ResultFile] = {}
        self.path: Path = Path()
        self.result: RunResult
        self._where: dict[CellKey, str] = {}  # cell key -> the target whose file holds it
        self._failed: list[CellResult] = []
        self._reps: dict[CellKey, dict[str, int]] = {}  # calls per warm sample of an earlier run, per cell
        self._paired = False  # begin() with a pairing: one side of an interleaved comparison
        self._predictor = CellPredictor(options.out_dir, self.loaded)  # each cell's prediction and its error

    @property
    def result_path(self) -> Path | None:
        """The (first) result file, once begin() has opened one."""
        return self.path if self.files else None

    def run(self) -> RunOutcome:
        """Every round of every cell, then the run's assessment: the whole run.

        A stop signal is recorded in the files (:meth:`record_interruption`) and raised again."""
        try:
            cells = self.begin()
            self.sweep(cells)
            return self.finish()
        except Interrupted as stop:
            self.record_interruption(stop)
            raise
        finally:
            self.close()

    def begin(self, pairing: Pairing | None = None) -> list[Cell]:
        """Open (or reopen) the result files and, measuring locally, probe the peak; the cells to measure,
        in scenario order.

        :meth:`run` then measures every round of every cell; a driver that orders the measurements
        itself (``attnbench ab``, interleaving two revisions) calls :meth:`measure_round` and
        :meth:`finish` directly, and :meth:`close` if it stops before finishing. ``pairing`` marks the
        file as one side of such a comparison.
        """
        scenario = self.loaded.scenario
        cells = expand_cells(scenario, self.loaded.variants)
        rounds = self.rounds
        if self.options.shard is not None:
            cells = shard_cells(self.loaded, cells, self.options.shard, rounds)
        check_writable(self.options.out_dir, needed_bytes(len(cells), rounds, scenario.measure.max_samples))
        if self.executor is None:
            self._begin_local(pairing, cells)
        else:
            self._reopen_remote()
        # a failed cell is not measured again in later rounds, so it counts as done for all of them
        existing = [c for f in self.files.values() for c in f.result.cells]
        done = sum(min(c.rounds_done, rounds) if c.status == "ok" else rounds for c in existing)
        self.progress.start(len(cells) * rounds, done)
        self._failed = [c for c in existing if c.status in FAILED_STATUSES]
        return cells

    def _run_identity(self) -> RunIdentity:
        """What every file of this run shares; taken once, so that all its files name one start and commit."""
        if self._identity is None:
            self._identity = RunIdentity(
                self.loaded, self.device_kind, self.options.quick, datetime.now(UTC), git_info(), self.options.shard
            )
        return self._identity

    def _begin_local(self, pairing: Pairing | None, cells: list[Cell]) -> None:
        threads = self.loaded.scenario.measure.threads  # the fingerprint records the threads cells run with
        target, environment = describe(self.workers, self.device, threads, self.timeout_s)
        self._predictor.model(target)  # a broken calibration.json stops the run here, before anything is measured
        out_dir, resume = self.options.out_dir, self.options.resume
        if resume:
            reopened = runfiles.reopen(
                out_dir, target, self._run_identity(), unstable=self.options.rerun_unstable, required=True
            )
            assert reopened is not None  # required: a UserError otherwise
            file = self._add_file(target, reopened)
        else:
            file = self._add_file(target, runfiles.create(out_dir, target, environment, self._run_identity()))
        result = file.result
        if pairing is not None:
            result.pairing = pairing
            self._paired = True
        self._reuse_calibration(out_dir / target, file, cells)
        if result.peak_bandwidth_gbps is None:
            peak = self._peak(target, result.environment)
            result.environment["peak_bandwidth"] = peak
            result.peak_bandwidth_gbps = peak_gbps(peak)
        if "peak_matmul" not in result.environment:
            matmul = probe_matmul(self.workers, self.device, target, result.environment, self.timeout_s)
            result.environment["peak_matmul"] = matmul
        file.save()
        here = NodeInfo(target, result.environment, result.peak_bandwidth_gbps)
        self.executor = LocalExecutor(self.workers, here, self.device)

    def _reuse_calibration(self, folder: Path, file: ResultFile, cells: list[Cell]) -> None:
        """Let first rounds of ``cells`` time with the calls per sample of the newest earlier finished run of this
        scenario in ``folder`` (recorded as ``inner_reps_from`` when it has one of them; a resumed run keeps the
        file it recorded), so that two runs compare alike cell by cell; not with ``recalibrate``. Cells it
        lacks calibrate their own."""
        result = file.result
        if result.inner_reps_from is not None:  # resumed: its cells still to measure take them from there too
            recorded = folder / result.inner_reps_from
            self._reps = runfiles.calls_per_sample(load_result(recorded)) if recorded.is_file() else {}
            return
        if self.options.recalibrate or self.options.resume:
            return
        found = runfiles.calibrated_earlier(folder, result, file.path)
        keys = {cell.key for cell in cells}
        if found is not None and keys & found[1].keys():  # another shard's file, say, may have none of them
            result.inner_reps_from = found[0].name
            self._reps = {key: reps for key, reps in found[1].items() if key in keys}

    def _reopen_remote(self) -> None:
        """Cells run where the executor puts them: files open as targets report, and with --resume the
        file of this scenario to continue on every target under the results folder is reopened."""
        if not self.options.resume:
            return
        out_dir, unstable = self.options.out_dir, self.options.rerun_unstable
        for target in runfiles.target_folders(out_dir):
            found = runfiles.reopen(out_dir, target, self._run_identity(), unstable=unstable, required=False)
            if found is not None:
                self._add_file(target, found)
        if not self.files:
            what = "run" if unstable else "unfinished run"
            raise UserError(
                f"no {what} of scenario {self.loaded.scenario.name!r} (same file content) on any target to resume",
                source=str(out_dir),
            )

    def _add_file(self, target: str, file: ResultFile) -> ResultFile:
        if not self.files:
            self.path, self.result = file.path, file.result
        self.files[target] = file
        for cell in file.result.cells:
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
        key = cell.key.max_batch_group
        return CellJob(
            scenario=self.loaded,
            cell=cell,
            round_index=round_index,
            previous=self.existing(cell) if round_index > 0 else None,
            device=self.device,
            quick=self.options.quick,
            paired=self._paired,
            max_batch={target: found for (target, k), found in self._max_batch.items() if k == key},
            target=self._where.get(cell.key) if round_index > 0 else None,
            inner_reps=self._reps.get(cell.key) if round_index == 0 else None,
        )

    def measure_round(
        self, cell: Cell, round_index: int, inner_reps: dict[str, int] | None = None
    ) -> CellResult | None:
        """Measure round ``round_index`` (from 0) of ``cell`` and save the file; None when that round is
        done already or the cell failed in an earlier one. ``inner_reps`` (calls per warm sample, by
        metric) makes round 0 time with those instead of calibrating its own; later rounds repeat round 0's."""
        existing = self.existing(cell)
        if existing is not None and (existing.status != "ok" or existing.rounds_done > round_index):
            return None
        job = self.job(cell, round_index)
        if inner_reps and round_index == 0:
            job = replace(job, inner_reps=dict(inner_reps))
        started = self._start(job)
        if started is None:
            assert self.executor is not None
            raise RuntimeError(f"the {self.executor.name} executor has no room for a job with none running")
        return started if isinstance(started, CellResult) else self._record(started.result())

    def sweep(self, cells: list[Cell]) -> None:
        """Every remaining round of every cell, as many at once as the executor takes, in round-major order.

        Round after round over all cells, each time in a new process: the rounds of one cell are spread
        over the whole run, so their spread shows the machine's drift, not just its jitter. A cell's next
        round is planned when its previous one arrives; a first round whose max batch another cell's
        running first round is searching waits for it (one search per target). A stop (Ctrl-C) cancels
        the executor's outstanding jobs; every finished round is saved already.
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
        key = cell.key.max_batch_group
        if any(k == key for _, k in self._max_batch):
            return False
        return any(other.key.max_batch_group == key for other in first_rounds)

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
        file = self.files.get(target) or self._add_file(target, self._new_file(outcome.node))
        cell = job.cell
        result = self._predictor.annotate(target, file.result.environment, cell, result)
        if cell.key in file.index:
            file.result.cells[file.index[cell.key]] = result
        else:
            file.index[cell.key] = len(file.result.cells)
            file.result.cells.append(result)
        self._where[cell.key] = target
        if job.round_index == 0 and result.metrics is not None and result.metrics.max_batch is not None:
            self._max_batch.setdefault((target, cell.key.max_batch_group), result.metrics.max_batch)
        file.save()
        if result.status in FAILED_STATUSES:
            self._failed.append(result)
        self.progress.cell_finished(cell, result)
        if result.status != "ok" and job.round_index + 1 < self.rounds:
            self.progress.rounds_skipped(cell, self.rounds - job.round_index - 1)
        return result

    def _new_file(self, node: NodeInfo) -> ResultFile:
        """The file of a target whose first cell just arrived, with that node's fingerprint and peak."""
        file = runfiles.create(self.options.out_dir, node.target, node.environment, self._run_identity())
        file.result.peak_bandwidth_gbps = node.peak_gbps
        return file

    def finish(self) -> RunOutcome:
        """Assess every cell's stability against its file's other cells, mark the files finished, save them."""
        for file in self.files.values():
            stability.assess_run(file.result)
            file.result.finished_utc = _now()
            file.save()
        self.close()
        files = [(f.path, f.result) for f in self.files.values()]
        if not files:
            raise RunFailure("no cell was measured, so no result file was written", source=self.options.scenario)
        return RunOutcome(files[0][0], files[0][1], self._failed, files)

    def record_interruption(self, stop: Interrupted) -> None:
        """Note the signal that stopped the run in each of its files (nothing before a file exists). The
        files stay unfinished, for ``--resume``; a save that fails leaves the last good one."""
        for file in self.files.values():
            cells_done = len(file.result.cells)
            file.result.interruptions.append(Interruption(utc=_now(), signal=stop.name, cells_done=cells_done))
            # if this save fails, the file on disk is the last one saved: every finished cell, without the note
            with contextlib.suppress(OSError):
                file.save()

    def close(self) -> None:
        """Let go of the result files' locks; the runner measures nothing more."""
        for file in self.files.values():
            file.release()

    def _peak(self, target: str, environment: dict[str, Any]) -> dict[str, Any]:
        return probe_peak(self.workers, self.device, target, environment, self.timeout_s)
