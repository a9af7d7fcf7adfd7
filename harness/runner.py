"""The measurement run: a scenario's cells, each measured in an isolated worker, saved as it goes.

    load scenario -> target + fingerprint + peak bandwidth -> for each cell: measure (worker),
    max batch (search of worker probes, once per variant/dtype/context/backend) -> result file

The result file is rewritten atomically after every cell, so an interrupted run (Ctrl-C, a
killed process) loses no finished cell; ``resume`` continues the newest unfinished file of the
same scenario and target. Nothing here imports torch: the workers do.
"""

from __future__ import annotations

import dataclasses
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import accounting
from harness.backend_support import unsupported_reason
from harness.errors import UserError
from harness.hardware import detect_target, fingerprint, is_cuda, resolve_device
from harness.measure import cell as cell_worker
from harness.measure.maxbatch import Probe, SearchResult, search_max_batch
from harness.measure.stats import summarize
from harness.measure.worker import IsolatedRunner, WorkerOutcome
from harness.results.schema import CellMetrics, CellResult, GitInfo, MaxBatch, RunResult, ScenarioRef, Summary
from harness.results.store import load_result, result_filename, result_files, save_result
from harness.scenario import Cell, LoadedScenario, expand_cells, load_scenario
from harness.scenario.schema import MeasureSpec
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
        """1 when a cell failed unexpectedly (an error, not an out-of-memory), else 0."""
        return 1 if self.failed_cells else 0


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


def _find_resumable(out_dir: Path, target: str, loaded: LoadedScenario, device: str) -> tuple[Path, RunResult] | None:
    """The newest unfinished result of this scenario (same content) on this target, if any."""
    folder = out_dir / target
    if not folder.is_dir():
        return None
    for path in reversed(result_files(folder)):
        result = load_result(path)
        if result.finished_utc is None and result.scenario.sha256 == loaded.content_sha256 and result.device == device:
            return path, result
    return None


class Runner:
    """Measures the cells of one scenario on one device and keeps the result file current."""

    def __init__(self, options: RunOptions, progress: RunProgress | None = None) -> None:
        self.options = options
        self.progress = progress or RunProgress()
        self.loaded = load_scenario(options.scenario)
        self.device = resolve_device(options.device)
        self.workers = IsolatedRunner()
        self._max_batch: dict[tuple[str, str, int, str], MaxBatch] = {}

    def run(self) -> RunOutcome:
        scenario = self.loaded.scenario
        target = detect_target(self.device)
        environment = fingerprint(self.device)
        path, result = self._open_result(target, environment)
        if result.peak_bandwidth_gbps is None:
            peak = self._peak(target, environment)
            result.environment["peak_bandwidth"] = peak
            result.peak_bandwidth_gbps = max(peak["read_gbps"], peak["copy_gbps"])
            save_result(result, path)
        for c in result.cells:
            if c.metrics is not None and c.metrics.max_batch is not None:
                self._max_batch[(c.variant, c.dtype, c.context_len, c.backend)] = c.metrics.max_batch
        cells = expand_cells(scenario, self.loaded.variants)
        rounds = scenario.measure.rounds
        index = {c.key: i for i, c in enumerate(result.cells)}
        # a failed cell is not measured again in later rounds, so it counts as done for all of them
        done = sum(min(c.rounds_done, rounds) if c.status == "ok" else rounds for c in result.cells)
        self.progress.start(len(cells) * rounds, done)
        failed = [c for c in result.cells if c.status == "error"]
        # Round after round over all cells, each time in a new process: the rounds of one cell are
        # spread over the whole run, so their spread shows the machine's drift, not just its jitter.
        for round_index in range(rounds):
            for cell in cells:
                existing = result.cells[index[cell.key]] if cell.key in index else None
                if existing is not None and (existing.status != "ok" or existing.rounds_done > round_index):
                    continue
                self.progress.cell_started(cell)
                if existing is None:
                    cell_result = self._measure(cell, result.peak_bandwidth_gbps)
                    index[cell.key] = len(result.cells)
                    result.cells.append(cell_result)
                else:
                    cell_result = self._repeat(cell, existing, result.peak_bandwidth_gbps)
                    result.cells[index[cell.key]] = cell_result
                save_result(result, path)
                if cell_result.status == "error":
                    failed.append(cell_result)
                self.progress.cell_finished(cell, cell_result)
                if cell_result.status != "ok" and round_index + 1 < rounds:
                    self.progress.rounds_skipped(cell, rounds - round_index - 1)
        result.finished_utc = _now()
        save_result(result, path)
        return RunOutcome(path, result, failed)

    def _open_result(self, target: str, environment: dict[str, Any]) -> tuple[Path, RunResult]:
        out_dir = self.options.out_dir
        if self.options.resume:
            found = _find_resumable(out_dir, target, self.loaded, "cuda" if is_cuda(self.device) else "cpu")
            if found is None:
                raise UserError(
                    f"no unfinished run of scenario {self.loaded.scenario.name!r} (same file content) "
                    f"for target {target} to resume",
                    source=str(out_dir / target),
                )
            return found
        git = git_info()
        started = datetime.now(UTC)
        path = out_dir / target / result_filename(started, git.short)
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
            device="cuda" if is_cuda(self.device) else "cpu",
            quick=self.options.quick,
            started_utc=started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        save_result(result, path)
        return path, result

    def _peak(self, target: str, environment: dict[str, Any]) -> dict[str, Any]:
        outcome = self.workers.call(
            cell_worker.probe_peak, {"target": target, "device": self.device, "environment": environment}
        )
        if outcome.status != "ok" or outcome.value is None:
            raise RuntimeError(f"peak bandwidth probe failed: {outcome.error}")
        return outcome.value

    def _payload(self, cell: Cell) -> dict[str, Any]:
        scenario = self.loaded.scenario
        return {
            "device": self.device,
            "model": scenario.model.model_dump(),
            "variant": cell_worker.variant_payload(cell.variant),
            "batch_size": cell.batch_size,
            "context_len": cell.context_len,
            "dtype": cell.dtype,
            "backend": cell.backend,
            "seed": scenario.measure.seed,
            "metrics": list(scenario.measure.selected_metrics),
            "timing": timing_settings(scenario.measure, self.options.quick),
            "cold": scenario.measure.cold,
            "repeat": False,
        }

    def _measure(self, cell: Cell, peak_gbps: float | None) -> CellResult:
        start = time.perf_counter()
        model = self.loaded.scenario.model
        v, dtype, batch, context = cell.variant, cell.dtype, cell.batch_size, cell.context_len
        # a backend that cannot run this variant here is not measured under its name: say why instead
        reason = unsupported_reason(cell.backend, v, "cuda" if is_cuda(self.device) else "cpu")
        if reason is None:
            outcome = self.workers.call(cell_worker.measure_cell, self._payload(cell))
        else:
            outcome = WorkerOutcome("error", None, reason, 0.0)
        status = outcome.status if reason is None else "unsupported"
        metrics = None
        if outcome.status == "ok" and outcome.value is not None:
            measured = dict(outcome.value)
            for metric, values in measured.pop("samples").items():
                measured[metric] = pooled_summary(None, values)
            metrics = derive_metrics(self.loaded, cell, measured, peak_gbps)
            if "max_batch" in self.loaded.scenario.measure.selected_metrics:
                metrics.max_batch = self._max_batch_for(cell)
        elif status in ("oom", "unsupported"):  # the accounting still says what the cell would have needed
            metrics = derive_metrics(self.loaded, cell, {}, peak_gbps)
        return CellResult(
            variant=v.name,
            batch_size=batch,
            context_len=context,
            dtype=dtype,
            backend=cell.backend,
            backend_used=(outcome.value or {}).get("backend_used"),
            head_dim=v.head_dim,
            n_heads=v.n_heads,
            n_kv_heads=v.n_kv_heads,
            n_kv_layers=v.n_kv_layers,
            kv_layers=list(v.kv_layers),
            params_total=accounting.param_counts(model, v).total,
            kv_bytes_per_token=accounting.kv_bytes_per_token(v, dtype),
            **cache_fields(v, dtype, context),
            status=status,
            error=outcome.error,
            elapsed_s=time.perf_counter() - start,
            metrics=metrics,
        )

    def _repeat(self, cell: Cell, previous: CellResult, peak_gbps: float | None) -> CellResult:
        """A later round: time the cell again in a new process and pool the samples."""
        start = time.perf_counter()
        payload = self._payload(cell) | {"repeat": True, "backend": previous.backend_used or cell.backend}
        outcome = self.workers.call(cell_worker.measure_cell, payload)
        if outcome.status != "ok" or outcome.value is None or previous.metrics is None:
            return previous.model_copy(
                update={"status": outcome.status, "error": f"round {previous.rounds_done + 1}: {outcome.error}"}
            )
        metrics = previous.metrics.model_copy()
        for metric, values in outcome.value["samples"].items():
            setattr(metrics, metric, pooled_summary(getattr(metrics, metric), values))
        apply_bandwidths(metrics, cell.batch_size, peak_gbps)
        return previous.model_copy(
            update={
                "metrics": metrics,
                "rounds_done": previous.rounds_done + 1,
                "elapsed_s": previous.elapsed_s + time.perf_counter() - start,
            }
        )

    def _max_batch_for(self, cell: Cell) -> MaxBatch:
        key = (cell.variant.name, cell.dtype, cell.context_len, cell.backend)
        if key not in self._max_batch:
            self._max_batch[key] = self._search_max_batch(cell)
        return self._max_batch[key]

    def _search_max_batch(self, cell: Cell) -> MaxBatch:
        scenario = self.loaded.scenario
        budget = scenario.measure.memory_budget
        assert budget is not None  # max_batch is only selected with a budget (MeasureSpec)
        model, v, dtype, context = scenario.model, cell.variant, cell.dtype, cell.context_len
        predicted = accounting.predicted_max_batch(model, v, dtype, context, budget)
        per_sequence = accounting.bytes_per_sequence(model, v, dtype, context)
        payload = self._payload(cell) | {"budget_bytes": budget}

        def probe_in_worker(batch: int) -> Probe:
            outcome: WorkerOutcome = self.workers.call(cell_worker.probe_batch, payload | {"batch_size": batch})
            if outcome.status == "ok" and outcome.value is not None:
                return Probe(batch, bool(outcome.value["fits"]), int(outcome.value["peak_bytes"]), "ok")
            if outcome.status == "oom":
                return Probe(batch, False, None, "oom")
            return Probe(batch, False, None, f"error: {outcome.error}")

        probe = probe_in_worker if is_cuda(self.device) else _guard_host_memory(probe_in_worker, budget)
        found: SearchResult = search_max_batch(probe, predicted, budget, per_sequence)
        measured = found.measured
        return MaxBatch(
            budget_bytes=budget,
            predicted=predicted,
            measured=measured,
            error_fraction=(predicted - measured) / measured if measured else None,
            probes=[
                {"batch_size": p.batch_size, "fits": p.fits, "peak_bytes": p.peak_bytes, "status": p.status}
                for p in found.probes
            ]
            + ([{"note": found.note}] if found.note else []),
        )


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


def derive_metrics(
    loaded: LoadedScenario, cell: Cell, measured: dict[str, Any], peak_gbps: float | None
) -> CellMetrics:
    """Combine a worker's measurements with the accounting into the cell's metrics."""
    model = loaded.scenario.model
    v, dtype, batch, context = cell.variant, cell.dtype, cell.batch_size, cell.context_len
    fields = {k: measured.get(k) for k in CellMetrics.model_fields if k in measured}
    metrics = CellMetrics(
        **fields,
        bytes_per_step=accounting.bytes_per_step(model, v, dtype, batch, context),
        attention_bytes_per_step=accounting.attention_bytes_per_step(v, dtype, batch, context),
        flops_per_step=accounting.flops_per_step(model, v, batch, context),
        kv_cache_bytes_expected=accounting.kv_cache_bytes(v, dtype, batch, context),
    )
    apply_bandwidths(metrics, batch, peak_gbps)
    return metrics


def apply_bandwidths(metrics: CellMetrics, batch_size: int, peak_gbps: float | None) -> None:
    """Set the bandwidth and throughput fields from the latency medians, in place.

    Bandwidth divides by the cold latency where there is one: warm repeats can run partly from
    on-chip caches and report a bandwidth no DRAM gives (docs/design.md, "Timing").
    """
    decode = metrics.decode_latency_cold_s or metrics.decode_latency_s
    attention = metrics.attention_latency_cold_s or metrics.attention_latency_s
    if decode is not None or attention is not None:
        cold = metrics.decode_latency_cold_s or metrics.attention_latency_cold_s
        metrics.bandwidth_basis = "cold" if cold else "warm"
    if decode is not None:
        metrics.bandwidth_gbps = metrics.bytes_per_step / decode.median / 1e9
        metrics.tokens_per_s = batch_size / decode.median
    if attention is not None:
        metrics.attention_bandwidth_gbps = metrics.attention_bytes_per_step / attention.median / 1e9
    if peak_gbps:
        if metrics.bandwidth_gbps is not None:
            metrics.bandwidth_fraction = metrics.bandwidth_gbps / peak_gbps
        if metrics.attention_bandwidth_gbps is not None:
            metrics.attention_bandwidth_fraction = metrics.attention_bandwidth_gbps / peak_gbps


def pooled_summary(previous: Summary | None, samples: list[float]) -> Summary:
    """``previous`` (earlier rounds) with one more process's ``samples`` pooled in.

    The summary's statistics are over all samples; ``process_medians`` gains this process's median.
    """
    medians = [] if previous is None else previous.process_medians or [previous.median]
    pooled = summarize(([] if previous is None else previous.samples) + samples)
    return pooled.model_copy(update={"process_medians": [*medians, statistics.median(samples)]})
