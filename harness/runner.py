"""The measurement run: a scenario's cells, each measured in an isolated worker, saved as it goes.

    load scenario -> target + fingerprint + peak bandwidth (workers) -> for each cell:
    [auto: choose the backend (worker)] -> measure (worker) -> metrics + self-checks ->
    max batch (search of worker probes, once per variant/dtype/context/backend) -> result file

The result file is rewritten atomically after every cell, so an interrupted run (Ctrl-C, a
killed process) loses no finished cell; ``resume`` continues the newest unfinished file of the
same scenario and target. A stop signal (:class:`~harness.signals.Interrupted`) ends the worker
and is recorded in the file (``interruptions``). While a run writes its file it holds a lock on
it (``.<file>.lock``), so that no ``--resume`` elsewhere writes it too; a new run's file name is
claimed before it is written, so that two runs never overwrite each other. The folder is checked
writable, with room for the file, before anything is measured; a save that fails later (a full
disk) stops the run with the last good file in place. Every worker call has a time limit
(``measure.cell_timeout_s``): a hung device ends that cell as ``timeout`` and the run goes on.
Nothing here imports torch or touches CUDA: the workers do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import accounting
from harness.backend_support import unsupported_reason
from harness.errors import RunFailure, UserError
from harness.hardware import is_cuda, resolve_device
from harness.inputs import MIB
from harness.measure import cell as cell_worker
from harness.measure import derive, opt_in, stability
from harness.measure.maxbatch import Probe, SearchResult, boundary_uncertainty, search_max_batch
from harness.measure.worker import IsolatedRunner, WorkerOutcome
from harness.results.lock import AdvisoryLock, file_lock
from harness.results.schema import (
    CellMetrics,
    CellResult,
    Check,
    GitInfo,
    HostLoad,
    Interruption,
    MaxBatch,
    Pairing,
    RunResult,
    ScenarioRef,
)
from harness.results.store import check_writable, claim_result_path, load_result, result_files, save_result
from harness.scenario import Cell, LoadedScenario, expand_cells, load_scenario
from harness.scenario.schema import MeasureSpec
from harness.signals import Interrupted
from harness.variants import Variant

# --quick: timing windows short enough for smoke runs and CI, still >= min_samples samples each.
QUICK_WARMUP_S = 0.05
QUICK_MIN_TIME_S = 0.05


@dataclass(frozen=True)
class RunOptions:
    scenario: str = "scenarios/default.toml"
    device: str = "auto"
    out_dir: Path = Path("results")
    quick: bool = False
    resume: bool = False
    rerun_unstable: bool = False  # with resume: measure again the cells the newest run found unstable
    rounds: int | None = None  # measurement rounds, instead of the scenario's measure.rounds


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
    path: Path
    result: RunResult
    failed_cells: list[CellResult] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """1 when a cell failed unexpectedly (an error or a timeout, not an out-of-memory), else 0."""
        return 1 if self.failed_cells else 0

    @property
    def failed_checks(self) -> dict[str, list[CellResult]]:
        """Cells by the name of each self-check they failed."""
        by_name: dict[str, list[CellResult]] = {}
        for cell in self.result.cells:
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


def timing_settings(measure: MeasureSpec, quick: bool) -> dict[str, Any]:
    warmup_s, min_time_s = measure.warmup_s, measure.min_time_s
    if quick:
        warmup_s, min_time_s = min(warmup_s, QUICK_WARMUP_S), min(min_time_s, QUICK_MIN_TIME_S)
    return {
        "warmup_s": warmup_s,
        "min_time_s": min_time_s,
        "min_samples": measure.min_samples,
        "max_samples": measure.max_samples,
    }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _find_resumable(
    out_dir: Path, target: str, loaded: LoadedScenario, device: str, *, finished_too: bool = False
) -> tuple[Path, RunResult] | None:
    """The newest unfinished result of this scenario (same content) on this target, if any; with
    ``finished_too``, the newest one whether finished or not."""
    folder = out_dir / target
    if not folder.is_dir():
        return None
    for path in reversed(result_files(folder)):
        result = load_result(path)
        same = result.scenario.sha256 == loaded.content_sha256 and result.device == device
        if same and (finished_too or result.finished_utc is None):
            return path, result
    return None


# Cell outcomes that make a run exit 1. Out-of-memory does not, nor does a worker killed without a
# word (``killed``: a SIGKILL the cgroup did not count as an OOM kill, or where it keeps no count;
# its error names the likely cause).
FAILED_STATUSES = ("error", "timeout")


def needed_bytes(cells: int, rounds: int, max_samples: int) -> int:
    """Room a run's result file needs, generously: about 8 KiB per cell and round beside its samples
    (a few tens of bytes each, per timed part), twice over for the atomic rewrite, plus 1 MiB."""
    per_round = 8 * 1024 + 100 * max_samples
    return 2 * (cells * rounds * per_round) + MIB


def cache_bytes(environment: dict[str, Any], device: str) -> int | None:
    """The cache a cold sample is flushed of: the GPU's L2, else the CPU's last-level cache."""
    keys = ("l2_cache_bytes",) if device == "cuda" else ("cpu_l3_cache_bytes", "cpu_l2_cache_bytes")
    sizes = [environment.get(key) for key in keys]
    return next((int(size) for size in sizes if isinstance(size, int) and size > 0), None)


class Runner:
    """Measures the cells of one scenario on one device and keeps the result file current."""

    def __init__(self, options: RunOptions, progress: RunProgress | None = None) -> None:
        self.options = options
        self.progress = progress or RunProgress()
        self.loaded = load_scenario(options.scenario)
        self.device = resolve_device(options.device)
        self.device_kind = "cuda" if is_cuda(self.device) else "cpu"
        self.workers = IsolatedRunner()
        self.timeout_s = self.loaded.scenario.measure.cell_timeout_s
        self.rounds = options.rounds or self.loaded.scenario.measure.rounds
        self._max_batch: dict[tuple[str, str, int, str], MaxBatch] = {}
        self._environment: dict[str, Any] = {}
        # the run being measured, set by begin()
        self.path: Path = Path()
        self.result: RunResult
        self._index: dict[tuple[str, int, int, str, str], int] = {}
        self._failed: list[CellResult] = []
        self.result_path: Path | None = None  # the result file, once begin() has opened it
        self._lock: AdvisoryLock | None = None  # held on the result file from begin() to close()

    def run(self) -> RunOutcome:
        """Every round of every cell, round after round, then the run's assessment: the whole run.

        A stop signal is recorded in the file (:meth:`record_interruption`) and raised again."""
        try:
            cells = self.begin()
            # Round after round over all cells, each time in a new process: the rounds of one cell are
            # spread over the whole run, so their spread shows the machine's drift, not just its jitter.
            for round_index in range(self.rounds):
                for cell in cells:
                    self.measure_round(cell, round_index)
            return self.finish()
        except Interrupted as stop:
            self.record_interruption(stop)
            raise
        finally:
            self.close()

    def begin(self, pairing: Pairing | None = None) -> list[Cell]:
        """Open (or reopen) the result file and probe the peak; the cells to measure, in scenario order.

        :meth:`run` then measures every round of every cell; a driver that orders the measurements
        itself (``attnbench ab``, interleaving two revisions) calls :meth:`measure_round` and
        :meth:`finish` directly, and :meth:`close` if it stops before finishing. ``pairing`` marks the
        file as one side of such a comparison.
        """
        scenario = self.loaded.scenario
        cells = expand_cells(scenario, self.loaded.variants)
        rounds = self.rounds
        check_writable(self.options.out_dir, needed_bytes(len(cells), rounds, scenario.measure.max_samples))
        target, environment = self._describe()
        self.path, self.result = self._open_result(target, environment)
        self.result_path = self.path
        if pairing is not None:
            self.result.pairing = pairing
        self._environment = self.result.environment
        if self.result.peak_bandwidth_gbps is None:
            peak = self._peak(target, environment)
            self.result.environment["peak_bandwidth"] = peak
            self.result.peak_bandwidth_gbps = max(peak["read_gbps"], peak["copy_gbps"])
        self._save()
        for c in self.result.cells:
            if c.metrics is not None and c.metrics.max_batch is not None:
                self._max_batch[(c.variant, c.dtype, c.context_len, c.backend)] = c.metrics.max_batch
        self._index = {c.key: i for i, c in enumerate(self.result.cells)}
        # a failed cell is not measured again in later rounds, so it counts as done for all of them
        done = sum(min(c.rounds_done, rounds) if c.status == "ok" else rounds for c in self.result.cells)
        self.progress.start(len(cells) * rounds, done)
        self._failed = [c for c in self.result.cells if c.status in FAILED_STATUSES]
        return cells

    def measure_round(self, cell: Cell, round_index: int) -> CellResult | None:
        """Measure round ``round_index`` (from 0) of ``cell`` and save the file; None when that round is
        done already or the cell failed in an earlier one."""
        result, rounds = self.result, self.rounds
        existing = result.cells[self._index[cell.key]] if cell.key in self._index else None
        if existing is not None and (existing.status != "ok" or existing.rounds_done > round_index):
            return None
        self.progress.cell_started(cell)
        if existing is None:
            cell_result = self._measure(cell, result.peak_bandwidth_gbps)
            self._index[cell.key] = len(result.cells)
            result.cells.append(cell_result)
        else:
            cell_result = self._repeat(cell, existing, result.peak_bandwidth_gbps)
            result.cells[self._index[cell.key]] = cell_result
        self._save()
        if cell_result.status in FAILED_STATUSES:
            self._failed.append(cell_result)
        self.progress.cell_finished(cell, cell_result)
        if cell_result.status != "ok" and round_index + 1 < rounds:
            self.progress.rounds_skipped(cell, rounds - round_index - 1)
        return cell_result

    def finish(self) -> RunOutcome:
        """Assess every cell's stability against the run's, mark the file finished, save it."""
        stability.assess_run(self.result)
        self.result.finished_utc = _now()
        self._save()
        self.close()
        return RunOutcome(self.path, self.result, self._failed)

    def record_interruption(self, stop: Interrupted) -> None:
        """Note the signal that stopped the run in its file (nothing before the file exists). The file
        stays unfinished, for ``--resume``; a save that fails leaves the last good one."""
        if self.result_path is None:
            return
        self.result.interruptions.append(Interruption(utc=_now(), signal=stop.name, cells_done=len(self.result.cells)))
        # if this save fails, the file on disk is the last one saved: every finished cell, without the note
        with contextlib.suppress(OSError):
            save_result(self.result, self.path)

    def close(self) -> None:
        """Let go of the result file's lock; the runner measures nothing more."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _save(self) -> None:
        """Save the result file; RunFailure, with the last good file left in place, when it cannot."""
        try:
            save_result(self.result, self.path)
        except OSError as exc:
            raise RunFailure(
                f"could not save the result ({exc.strerror or exc}); the file keeps what was saved before it, "
                f"every cell measured before this one: make room and continue with --resume",
                source=str(self.path),
            ) from None

    def _take(self, path: Path) -> None:
        """Lock ``path`` for this run (LockHeld, naming the holder's pid, when another run has it)."""
        lock = file_lock(path, "run")
        lock.acquire()
        self._lock = lock

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
        if self.options.resume:
            return self._reopen(out_dir, target, unstable=self.options.rerun_unstable)
        git = git_info()
        started = datetime.now(UTC)
        path = claim_result_path(out_dir / target, started, git.short)
        self._take(path)
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
        )
        try:
            save_result(result, path)
        except OSError as exc:
            path.unlink(missing_ok=True)  # the claimed, still empty name
            raise RunFailure(f"could not save the result: {exc.strerror or exc}", source=str(path)) from None
        return path, result

    def _reopen(self, out_dir: Path, target: str, *, unstable: bool) -> tuple[Path, RunResult]:
        """The run to continue: the newest unfinished run of this scenario on this target; with
        ``unstable``, the newest one finished or not, with its unstable cells removed (they are measured
        again, every round, into the same file). Locked, then read again: what another run wrote
        before it let go is what this one continues."""
        found = _find_resumable(out_dir, target, self.loaded, self.device_kind, finished_too=unstable)
        if found is None:
            what = "to re-measure unstable cells of" if unstable else "to resume"
            kind = "run" if unstable else "unfinished run"
            raise UserError(
                f"no {kind} of scenario {self.loaded.scenario.name!r} (same file content) for target {target} {what}",
                source=str(out_dir / target),
            )
        path = found[0]
        self._take(path)
        result = load_result(path)
        if result.finished_utc is not None and not unstable:
            raise UserError("another run finished this file meanwhile; nothing to resume", source=str(path))
        if unstable:
            kept = [cell for cell in result.cells if not cell.unstable]
            result = result.model_copy(update={"cells": kept, "finished_utc": None})
            self.result = result
            self.path = path
            self._save()
        return path, result

    def _peak(self, target: str, environment: dict[str, Any]) -> dict[str, Any]:
        outcome = self._call(
            cell_worker.probe_peak, {"target": target, "device": self.device, "environment": environment}
        )
        if outcome.status != "ok" or outcome.value is None:
            raise RunFailure(f"the peak bandwidth probe failed: {outcome.error}", source=target)
        return outcome.value

    def _payload(self, cell: Cell, backend: str | None = None) -> dict[str, Any]:
        scenario = self.loaded.scenario
        return {
            "device": self.device,
            "model": scenario.model.model_dump(),
            "variant": cell_worker.variant_payload(cell.variant),
            "batch_size": cell.batch_size,
            "context_len": cell.context_len,
            "dtype": cell.dtype,
            "backend": backend or cell.backend,
            "seed": scenario.measure.seed,
            "metrics": list(scenario.measure.selected_metrics),
            "timing": timing_settings(scenario.measure, self.options.quick),
            "cold": scenario.measure.cold,
            "energy_window_s": scenario.measure.energy_window_s,
            "repeat": False,
            "graphs": True,
        }

    def _measure_in_worker(self, payload: dict[str, Any]) -> WorkerOutcome:
        """measure_cell in a worker; once more with CUDA graphs off if a failed capture broke the first one."""
        outcome = self._call(cell_worker.measure_cell, payload)
        if outcome.exception == "GraphCaptureStateError":
            return self._call(cell_worker.measure_cell, payload | {"graphs": False})
        return outcome

    def _checks(self, cell: Cell, worker: list[Check], metrics: CellMetrics | None, peak: float | None) -> list[Check]:
        vendor = self._environment.get("vendor_peak_bandwidth_gbps")
        return derive.cell_checks(
            worker,
            metrics,
            loaded=self.loaded,
            cell=cell,
            peak_gbps=peak,
            vendor_gbps=float(vendor) if isinstance(vendor, int | float) else None,
            cache_bytes=cache_bytes(self._environment, self.device_kind),
            device=self.device_kind,
        )

    def _measure(self, cell: Cell, peak_gbps: float | None) -> CellResult:
        start = time.perf_counter()
        model = self.loaded.scenario.model
        v, dtype = cell.variant, cell.dtype
        base = {
            "variant": v.name,
            "batch_size": cell.batch_size,
            "context_len": cell.context_len,
            "dtype": dtype,
            "backend": cell.backend,
            "head_dim": v.head_dim,
            "n_heads": v.n_heads,
            "n_kv_heads": v.n_kv_heads,
            "n_kv_layers": v.n_kv_layers,
            "kv_layers": list(v.kv_layers),
            "params_total": accounting.param_counts(model, v).total,
            "kv_bytes_per_token": accounting.kv_bytes_per_token(v, dtype),
            **cache_fields(v, dtype, cell.context_len),
        }
        # a backend that cannot run this variant here is not measured under its name: say why instead
        reason = unsupported_reason(cell.backend, v, self.device_kind)
        if reason is not None:
            return CellResult(
                **base,
                status="unsupported",
                error=reason,
                elapsed_s=time.perf_counter() - start,
                metrics=derive.derive_metrics(self.loaded, cell, {}, peak_gbps),  # the accounting still applies
            )
        backend, auto_latencies = cell.backend, None
        if cell.backend == "auto":  # resolved in a worker of its own, so that the cell measures what it reports
            chosen = self._call(cell_worker.choose_auto_backend, self._payload(cell))
            if chosen.status != "ok" or chosen.value is None:
                return CellResult(
                    **base,
                    status=chosen.status,
                    error=f"choosing the backend for 'auto': {chosen.error}",
                    elapsed_s=time.perf_counter() - start,
                )
            backend, auto_latencies = chosen.value["backend"], chosen.value["latencies_s"]
        outcome = self._measure_in_worker(self._payload(cell, backend))
        metrics, worker_checks = None, []
        if outcome.status == "ok" and outcome.value is not None:
            measured = dict(outcome.value)
            worker_checks = [Check.model_validate(c) for c in measured.pop("checks", [])]
            metrics = derive.derive_metrics(self.loaded, cell, measured, peak_gbps)
            metrics.auto_latencies_s = auto_latencies
            if "max_batch" in self.loaded.scenario.measure.selected_metrics:
                metrics.max_batch = self._max_batch_for(cell, backend)
            if "train_step" in self.loaded.scenario.measure.selected_metrics:
                metrics.train_step = opt_in.train_step(self._call, cell, self._payload(cell, backend))
            if self.loaded.scenario.sweep.tp != [1]:
                metrics.tp = opt_in.tensor_parallel(
                    self.workers,
                    self.timeout_s,
                    model,
                    cell,
                    self._payload(cell, backend),
                    self.loaded.scenario.sweep.tp,
                )
        elif outcome.status in ("oom", "killed"):  # the accounting still says what the cell would have needed
            metrics = derive.derive_metrics(self.loaded, cell, {}, peak_gbps)
        checks = self._checks(cell, worker_checks, metrics, peak_gbps) if outcome.status == "ok" else []
        return CellResult(
            **base,
            backend_used=backend,
            status=outcome.status,
            error=outcome.error,
            elapsed_s=time.perf_counter() - start,
            metrics=metrics,
            checks=checks,
            checks_failed=[c.name for c in checks if not c.passed],
            host_load=_host_load(outcome),
        )

    def _repeat(self, cell: Cell, previous: CellResult, peak_gbps: float | None) -> CellResult:
        """A later round: time the cell again in a new process, as the first round did, and pool the samples."""
        start = time.perf_counter()
        assert previous.metrics is not None  # an ok cell has metrics (RunResult validation)
        payload = self._payload(cell, previous.backend_used or cell.backend) | {
            "repeat": True,
            "inner_reps": derive.inner_reps(previous.metrics),
        }
        outcome = self._measure_in_worker(payload)
        if outcome.status != "ok" or outcome.value is None:
            return previous.model_copy(
                update={"status": outcome.status, "error": f"round {previous.rounds_done + 1}: {outcome.error}"}
            )
        metrics, raised = derive.pool_round(previous.metrics, outcome.value["samples"], cell.batch_size, peak_gbps)
        round_checks = [Check.model_validate(c) for c in outcome.value.get("checks", [])]
        label = f"round {previous.rounds_done + 1}: "
        worker = [c for c in previous.checks if c.name not in derive.DERIVED_CHECKS]
        worker += [c.model_copy(update={"detail": label + c.detail}) for c in round_checks if not c.passed] + raised
        checks = self._checks(cell, worker, metrics, peak_gbps)
        return previous.model_copy(
            update={
                "metrics": metrics,
                "rounds_done": previous.rounds_done + 1,
                "elapsed_s": previous.elapsed_s + time.perf_counter() - start,
                "checks": checks,
                "checks_failed": [c.name for c in checks if not c.passed],
                "host_load": previous.host_load + _host_load(outcome),
            }
        )

    def _max_batch_for(self, cell: Cell, backend: str) -> MaxBatch:
        key = (cell.variant.name, cell.dtype, cell.context_len, cell.backend)
        if key not in self._max_batch:
            self._max_batch[key] = self._search_max_batch(cell, backend)
        return self._max_batch[key]

    def _search_max_batch(self, cell: Cell, backend: str) -> MaxBatch:
        """The largest batch under the budget, probed with ``backend``: the one the cell reports."""
        scenario = self.loaded.scenario
        budget = scenario.measure.memory_budget
        assert budget is not None  # max_batch is only selected with a budget (MeasureSpec)
        model, v, dtype, context = scenario.model, cell.variant, cell.dtype, cell.context_len
        predicted = accounting.predicted_max_batch(model, v, dtype, context, budget)
        per_sequence = accounting.bytes_per_sequence(model, v, dtype, context)
        payload = self._payload(cell, backend) | {"budget_bytes": budget}

        def probe_in_worker(batch: int) -> Probe:
            outcome = self._call(cell_worker.probe_batch, payload | {"batch_size": batch})
            if outcome.status == "ok" and outcome.value is not None:
                return Probe(batch, bool(outcome.value["fits"]), int(outcome.value["peak_bytes"]), "ok")
            if outcome.status == "oom":
                return Probe(batch, False, None, "oom")
            if outcome.status == "killed":  # most often the out-of-memory killer: the batch does not fit
                return Probe(batch, False, None, f"killed: {outcome.error}")
            return Probe(batch, False, None, f"{outcome.status}: {outcome.error}")

        probe = probe_in_worker if is_cuda(self.device) else _guard_host_memory(probe_in_worker, budget)
        found: SearchResult = search_max_batch(probe, predicted, budget, per_sequence)
        measured = found.measured
        probes, uncertainty = list(found.probes), 0 if is_cuda(self.device) else None
        if measured is not None and not is_cuda(self.device):
            # A resident set moves by a few pages between identical processes: probe the boundary again
            # and turn the spread of peaks at one batch into sequences.
            again = [probe(measured), probe(measured + 1)] if measured > 0 else []
            probes += again
            uncertainty = boundary_uncertainty(probes, measured, per_sequence)
        return MaxBatch(
            budget_bytes=budget,
            predicted=predicted,
            measured=measured,
            error_fraction=(predicted - measured) / measured if measured else None,
            probes=[
                {"batch_size": p.batch_size, "fits": p.fits, "peak_bytes": p.peak_bytes, "status": p.status}
                for p in probes
            ]
            + ([{"note": found.note}] if found.note else []),
            uncertainty=uncertainty,
        )


def _host_load(outcome: WorkerOutcome) -> list[HostLoad]:
    """The host load a measuring worker read around its timed windows (none where it could not)."""
    load = (outcome.value or {}).get("host_load")
    return [HostLoad.model_validate(load)] if load else []


def cache_fields(variant: Variant, dtype: str, context_len: int) -> dict[str, Any]:
    """The CellResult fields that say what a variant caches (see harness/results/schema.py)."""
    return {
        "attention": variant.attention,
        "spelling": variant.describe(),
        "layer_windows": list(variant.layer_windows) if variant.is_windowed else None,
        "kv_dtype": variant.kv_dtype,
        "kv_scale": variant.kv_scale if variant.kv_dtype is not None else None,
        "mla": dataclasses.asdict(variant.mla) if variant.mla is not None else None,
        "kv_bytes_per_sequence": accounting.kv_bytes_per_sequence(variant, dtype, context_len),
    }


def _guard_host_memory(probe: Callable[[int], Probe], budget: int) -> Callable[[int], Probe]:
    """On CPU a probe cannot be capped like the CUDA allocator; refuse a budget the host lacks."""
    import psutil

    available = int(psutil.virtual_memory().available)
    if budget > 0.8 * available:

        def refuse(batch: int) -> Probe:
            return Probe(batch, False, None, f"error: budget {budget} B exceeds 80% of available host memory")

        return refuse
    return probe
