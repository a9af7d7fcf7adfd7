"""One measurement round of one cell, as a function of its job: the same code on every executor.

    round 0:  [auto: choose the backend (worker)] -> measure (worker) -> metrics + self-checks ->
              max batch (the search's worker probes, unless this target's is known already)
    round n:  measure again (worker) with the first round's calls per sample -> pool the samples

Every worker call goes through the ``workers`` given (an IsolatedRunner: a fresh process per call,
with the scenario's ``measure.cell_timeout_s``), so the process running this never touches CUDA: it
names each worker function by its entry point and hands it a typed request (harness/measure/protocol.py),
and imports no torch.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

from harness import accounting
from harness.backend_support import kernel_memory, unsupported_reason
from harness.hardware import is_cuda
from harness.lengths import sequence_lengths
from harness.measure.protocol import CellRequest, Entry, Request, Timing
from harness.results.schema import CellMetrics, CellResult, Check, HostLoad, MaxBatch, TPMeasurement
from harness.run import derive, opt_in
from harness.run.jobs import CellJob, NodeInfo, Where, WorkerCaller, placement, utc_now
from harness.run.maxbatch import RESIDENT_SET_NOISE_BYTES, Probe, SearchResult, boundary_uncertainty, search_max_batch
from harness.run.worker import IsolatedRunner, WorkerOutcome
from harness.scenario.schema import MeasureSpec
from harness.variants import Variant

# --quick: timing windows short enough for smoke runs and CI, still >= min_samples samples each.
QUICK_WARMUP_S = 0.05
QUICK_MIN_TIME_S = 0.05


def measure_cell_round(job: CellJob, node: NodeInfo, workers: WorkerCaller, where: Where) -> CellResult:
    """The cell after this round, with where the round ran appended to its ``placement``."""
    started = utc_now()
    measuring = _CellRound(job, node, workers)
    result = measuring.first() if job.previous is None else measuring.repeat(job.previous)
    return result.model_copy(update={"placement": [*result.placement, placement(where, job, node, started)]})


def timing_settings(measure: MeasureSpec, quick: bool, paired: bool = False) -> dict[str, Any]:
    """How a worker warms up and how long it times (harness/measure/window.py); ``--quick`` keeps the
    windows fixed and short, for smoke runs. A ``paired`` round (one side of ``attnbench ab``) still warms
    up until steady but stops at ``min_time_s``: the comparison decides on the ratios of many such rounds
    taken back to back, whose spread comes from the processes more than from one round's samples, so a
    round sampled to a narrow interval would cost time and narrow nothing."""
    warmup_s, min_time_s = measure.warmup_s, measure.min_time_s
    warmup_max_s, target_ci, max_time_s = measure.warmup_cap_s, measure.target_ci, measure.time_cap_s
    if paired:
        target_ci, max_time_s = None, min_time_s
    if quick:
        warmup_s, min_time_s = min(warmup_s, QUICK_WARMUP_S), min(min_time_s, QUICK_MIN_TIME_S)
        warmup_max_s, target_ci, max_time_s = warmup_s, None, min_time_s
    return {
        "warmup_s": warmup_s,
        "warmup_max_s": warmup_max_s,
        "min_time_s": min_time_s,
        "target_ci": target_ci,
        "max_time_s": max_time_s,
        "min_samples": measure.min_samples,
        "max_samples": measure.max_samples,
    }


def cache_bytes(environment: dict[str, Any], device: str) -> int | None:
    """The cache a cold sample is flushed of: the GPU's L2, else the CPU's last-level cache."""
    keys = ("l2_cache_bytes",) if is_cuda(device) else ("cpu_l3_cache_bytes", "cpu_l2_cache_bytes")
    sizes = [environment.get(key) for key in keys]
    return next((int(size) for size in sizes if isinstance(size, int) and size > 0), None)


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
        "page_size": variant.page_size,
        "length_mix": variant.lengths.label if variant.lengths is not None and variant.lengths.ragged else None,
        "q_len": variant.q_len if variant.q_len > 1 else None,
        "prefill": variant.prefill or None,
        "chunk": variant.chunk,
    }


def cell_fields(job: CellJob) -> dict[str, Any]:
    """A CellResult's coordinates and accounting: what it says before anything is measured."""
    cell, model = job.cell, job.scenario.scenario.model
    v, dtype = cell.variant, cell.dtype
    return {
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
        "context_lens": (
            sequence_lengths(v.lengths, cell.context_len, cell.batch_size)
            if v.lengths is not None and v.lengths.ragged
            else None
        ),
    }


def lost_round(job: CellJob, status: Literal["oom", "error", "killed"], error: str) -> CellResult:
    """The cell after a round that never reported: its process or node was lost (an executor's word)."""
    if job.previous is not None:
        return job.previous.model_copy(update={"status": status, "error": f"round {job.round_index + 1}: {error}"})
    return CellResult(**cell_fields(job), status=status, error=error, elapsed_s=0.0)


class _CellRound:
    """The worker calls and derivations of one round of ``job`` on the node described by ``node``."""

    def __init__(self, job: CellJob, node: NodeInfo, workers: WorkerCaller) -> None:
        self.job = job
        self.loaded = job.scenario
        self.cell = job.cell
        self.device = job.device
        self.device_kind = "cuda" if is_cuda(job.device) else "cpu"
        self.environment = node.environment
        self.peak_gbps: float | None = node.peak_gbps
        self.target = node.target
        self.workers = workers
        self.timeout_s = self.loaded.scenario.measure.cell_timeout_s

    def _call(self, entry: Entry, request: Request) -> WorkerOutcome:
        return self.workers.call(entry, request, timeout_s=self.timeout_s)

    def _request(self, backend: str | None = None) -> CellRequest:
        scenario, cell = self.loaded.scenario, self.cell
        return CellRequest(
            device=self.device,
            model=scenario.model,
            variant=cell.variant,
            batch_size=cell.batch_size,
            context_len=cell.context_len,
            dtype=cell.dtype,
            backend=backend or cell.backend,
            seed=scenario.measure.seed,
            metrics=tuple(scenario.measure.selected_metrics),
            timing=Timing(**timing_settings(scenario.measure, self.job.quick, self.job.paired)),
            cold=scenario.measure.cold,
            threads=scenario.measure.threads,
            energy_window_s=scenario.measure.energy_window_s,
            repeat=False,
            graphs=True,
        )

    def _tensor_parallel(self, backend: str) -> list[TPMeasurement]:
        """The decode step sharded over each ``sweep.tp`` degree: a group of rank processes per degree, started
        from the same forkserver as the workers (so ``workers`` must be an IsolatedRunner)."""
        if not isinstance(self.workers, IsolatedRunner):
            raise TypeError("tensor-parallel measurements start rank groups from an IsolatedRunner")
        scenario = self.loaded.scenario
        return opt_in.tensor_parallel(
            self.workers, self.timeout_s, scenario.model, self.cell, self._request(backend), scenario.sweep.tp
        )

    def _measure_in_worker(self, request: CellRequest) -> WorkerOutcome:
        """measure_cell in a worker; once more with CUDA graphs off if a failed capture broke the first one."""
        outcome = self._call(Entry.MEASURE_CELL, request)
        if outcome.exception == "GraphCaptureStateError":
            return self._call(Entry.MEASURE_CELL, replace(request, graphs=False))
        return outcome

    def _checks(self, worker: list[Check], metrics: CellMetrics | None) -> list[Check]:
        vendor = self.environment.get("vendor_peak_bandwidth_gbps")
        return derive.cell_checks(
            worker,
            metrics,
            loaded=self.loaded,
            cell=self.cell,
            peak_gbps=self.peak_gbps,
            vendor_gbps=float(vendor) if isinstance(vendor, int | float) else None,
            cache_bytes=cache_bytes(self.environment, self.device_kind),
            device=self.device_kind,
        )

    def first(self) -> CellResult:
        """Round 0: choose ``auto``'s backend, measure, search the max batch."""
        start = time.perf_counter()
        cell, peak_gbps = self.cell, self.peak_gbps
        v = cell.variant
        base = cell_fields(self.job)
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
            chosen = self._call(Entry.CHOOSE_AUTO_BACKEND, self._request())
            if chosen.status != "ok" or chosen.value is None:
                return CellResult(
                    **base,
                    status=chosen.status,
                    error=f"choosing the backend for 'auto': {chosen.error}",
                    elapsed_s=time.perf_counter() - start,
                )
            backend, auto_latencies = chosen.value["backend"], chosen.value["latencies_s"]
        given = dict(self.job.inner_reps) if self.job.inner_reps else None
        outcome = self._measure_in_worker(replace(self._request(backend), inner_reps=given))
        metrics, worker_checks = None, []
        if outcome.status == "ok" and outcome.value is not None:
            measured = dict(outcome.value)
            worker_checks = [Check.model_validate(c) for c in measured.pop("checks", [])]
            metrics = derive.derive_metrics(self.loaded, cell, measured, peak_gbps)
            metrics.auto_latencies_s = auto_latencies
            if "max_batch" in self.loaded.scenario.measure.selected_metrics:
                known = self.job.max_batch.get(self.target)
                metrics.max_batch = known if known is not None else self._search_max_batch(backend)
            if "train_step" in self.loaded.scenario.measure.selected_metrics:
                metrics.train_step = opt_in.train_step(self._call, cell, self._request(backend))
            if self.loaded.scenario.sweep.tp != [1]:
                metrics.tp = self._tensor_parallel(backend)
        elif outcome.status in ("oom", "killed"):  # the accounting still says what the cell would have needed
            metrics = derive.derive_metrics(self.loaded, cell, {}, peak_gbps)
        checks = self._checks(worker_checks, metrics) if outcome.status == "ok" else []
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

    def repeat(self, previous: CellResult) -> CellResult:
        """A later round: time the cell again in a new process, as the first round did, and pool the samples."""
        start = time.perf_counter()
        cell, peak_gbps = self.cell, self.peak_gbps
        assert previous.metrics is not None  # an ok cell has metrics (RunResult validation)
        request = replace(
            self._request(previous.backend_used or cell.backend),
            repeat=True,
            inner_reps=derive.inner_reps(previous.metrics),
        )
        outcome = self._measure_in_worker(request)
        if outcome.status != "ok" or outcome.value is None:
            return previous.model_copy(
                update={"status": outcome.status, "error": f"round {previous.rounds_done + 1}: {outcome.error}"}
            )
        metrics, raised = derive.pool_round(previous.metrics, outcome.value["samples"], cell.batch_size, peak_gbps)
        round_checks = [Check.model_validate(c) for c in outcome.value.get("checks", [])]
        label = f"round {previous.rounds_done + 1}: "
        worker = [c for c in previous.checks if c.name not in derive.DERIVED_CHECKS]
        worker += [c.model_copy(update={"detail": label + c.detail}) for c in round_checks if not c.passed] + raised
        checks = self._checks(worker, metrics)
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

    def _search_max_batch(self, backend: str) -> MaxBatch:
        """The largest batch under the budget, probed with ``backend``: the one the cell reports."""
        scenario = self.loaded.scenario
        budget = scenario.measure.memory_budget
        assert budget is not None  # max_batch is only selected with a budget (MeasureSpec)
        model, v, dtype, context = scenario.model, self.cell.variant, self.cell.dtype, self.cell.context_len
        workspace = accounting.fixed_workspace_bytes(self.environment)
        kernel = kernel_memory(backend, self.device_kind)  # the backend that ran: auto's resolved one
        predicted = accounting.predicted_max_batch(model, v, dtype, context, budget, workspace, kernel)
        # bytes the next sequence adds near the prediction: the search's first slope and the boundary's unit
        per_sequence = accounting.marginal_bytes_per_sequence(model, v, dtype, context, max(1, predicted), kernel)
        request = replace(self._request(backend), budget_bytes=budget)

        def probe_in_worker(batch: int) -> Probe:
            outcome = self._call(Entry.PROBE_BATCH, replace(request, batch_size=batch))
            if outcome.status == "ok" and outcome.value is not None:
                return Probe(batch, bool(outcome.value["fits"]), int(outcome.value["peak_bytes"]), "ok")
            if outcome.status == "oom":
                return Probe(batch, False, None, "oom")
            if outcome.status == "killed":  # most often the out-of-memory killer: the batch does not fit
                return Probe(batch, False, None, f"killed: {outcome.error}")
            return Probe(batch, False, None, f"{outcome.status}: {outcome.error}")

        cuda = is_cuda(self.device)
        probe = probe_in_worker if cuda else _guard_host_memory(probe_in_worker, budget)
        found: SearchResult = search_max_batch(probe, predicted, budget, per_sequence)
        measured = found.measured
        probes, uncertainty = list(found.probes), 0 if cuda else None
        if measured is not None and not cuda:
            # A resident set moves by a few pages between identical processes: probe the boundary again
            # and turn the spread of peaks at one batch into sequences.
            again = [probe(measured), probe(measured + 1)] if measured > 0 else []
            probes += again
            uncertainty = boundary_uncertainty(probes, measured, per_sequence, budget, RESIDENT_SET_NOISE_BYTES)
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


def _guard_host_memory(probe: Callable[[int], Probe], budget: int) -> Callable[[int], Probe]:
    """On CPU a probe cannot be capped like the CUDA allocator; refuse a budget the host lacks."""
    import psutil

    available = int(psutil.virtual_memory().available)
    if budget > 0.8 * available:

        def refuse(batch: int) -> Probe:
            return Probe(batch, False, None, f"error: budget {budget} B exceeds 80% of available host memory")

        return refuse
    return probe
