"""The runner end to end on a tiny scenario: result schema, accounting, resume, failures, max batch."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from helpers_tiny import FAST_TIMING, tiny_scenario

from harness.cli import main
from harness.errors import UserError
from harness.measure.protocol import CellRequest, MachineRequest, resolve
from harness.results.schema import RunResult
from harness.results.store import load_result
from harness.run.runner import Runner, RunOptions, RunProgress

TINY = tiny_scenario(measure='memory_budget = "{budget}"\n' + FAST_TIMING)


@pytest.fixture(autouse=True)
def peak_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """One peak-bandwidth probe for the whole module, not one per test, and not in the user's cache."""
    monkeypatch.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "attnbench-cache"))


def scenario(tmp_path: Path, text: str = TINY, budget: str = "256MiB") -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(text.replace("{budget}", budget))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    folder = tmp_path_factory.mktemp("run")
    mp = pytest.MonkeyPatch()
    mp.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "attnbench-cache"))
    try:
        outcome = Runner(RunOptions(scenario=str(scenario(folder)), device="cpu", out_dir=folder / "out")).run()
    finally:
        mp.undo()
    assert outcome.exit_code == 0
    return load_result(outcome.path)


def test_a_run_measures_every_cell_and_marks_the_file_finished(finished: RunResult):
    assert [(c.variant, c.batch_size) for c in finished.cells] == [
        ("H16-MHA", 1),
        ("H16-MHA", 2),
        ("H16-MQA-CLA2", 1),
        ("H16-MQA-CLA2", 2),
    ]
    assert all(c.status == "ok" for c in finished.cells)
    assert finished.finished_utc is not None
    assert finished.device == "cpu" and finished.target.startswith("cpu-")


def test_measured_kv_cache_bytes_equal_the_accounting_in_every_cell(finished: RunResult):
    for cell in finished.cells:
        assert cell.metrics is not None
        assert cell.metrics.kv_cache_bytes == cell.metrics.kv_cache_bytes_expected


def test_latencies_keep_raw_samples_and_their_order_statistics(finished: RunResult):
    for cell in finished.cells:
        assert cell.metrics is not None
        for summary in (cell.metrics.decode_latency_s, cell.metrics.attention_latency_cold_s):
            assert summary is not None
            assert len(summary.samples) >= 5
            assert min(summary.samples) <= summary.p10 <= summary.median <= summary.p90 <= max(summary.samples)
            assert summary.ci_low <= summary.median <= summary.ci_high


def test_bandwidth_is_bytes_per_step_over_the_cold_median(finished: RunResult):
    metrics = finished.cells[0].metrics
    assert metrics is not None and metrics.decode_latency_cold_s is not None and metrics.bandwidth_gbps is not None
    assert metrics.bandwidth_basis == "cold"
    assert metrics.bandwidth_gbps == pytest.approx(metrics.bytes_per_step / metrics.decode_latency_cold_s.median / 1e9)
    assert finished.peak_bandwidth_gbps is not None
    assert metrics.bandwidth_fraction == pytest.approx(metrics.bandwidth_gbps / finished.peak_bandwidth_gbps)


def test_measured_max_batch_fits_the_budget_and_one_more_does_not(finished: RunResult):
    for cell in finished.cells:
        assert cell.metrics is not None and cell.metrics.max_batch is not None
        found = cell.metrics.max_batch
        assert found.measured is not None and found.measured > 0
        first = {}
        for probe in found.probes:
            first.setdefault(probe["batch_size"], probe["fits"])  # the search's own verdicts
        assert first[found.measured] is True
        assert first[found.measured + 1] is False


def test_on_cpu_the_boundary_is_probed_twice_and_its_repeatability_recorded(finished: RunResult):
    for cell in finished.cells:
        assert cell.metrics is not None and cell.metrics.max_batch is not None
        found = cell.metrics.max_batch
        assert found.measured is not None and found.uncertainty is not None and found.uncertainty >= 0
        batches = [p["batch_size"] for p in found.probes]
        assert batches.count(found.measured) >= 2 and batches.count(found.measured + 1) >= 2


def test_cla2_with_mqa_fits_a_larger_batch_than_mha(finished: RunResult):
    def measured(variant: str) -> int:
        cell = next(c for c in finished.cells if c.variant == variant)
        assert cell.metrics is not None and cell.metrics.max_batch is not None
        assert cell.metrics.max_batch.measured is not None
        return cell.metrics.max_batch.measured

    assert measured("H16-MQA-CLA2") > measured("H16-MHA")


def test_an_interrupted_run_keeps_finished_cells_and_resume_completes_it(tmp_path: Path):
    path = scenario(tmp_path)
    out = tmp_path / "out"
    seen: list[str] = []

    def interrupt_after_two(cell: object, result: object) -> None:
        seen.append("cell")
        if len(seen) == 2:
            raise KeyboardInterrupt

    options = RunOptions(scenario=str(path), device="cpu", out_dir=out)
    with pytest.raises(KeyboardInterrupt):
        Runner(options, RunProgress(cell_finished=interrupt_after_two)).run()
    (partial_path,) = out.rglob("*.json")
    partial = load_result(partial_path)
    assert len(partial.cells) == 2 and partial.finished_utc is None

    outcome = Runner(RunOptions(scenario=str(path), device="cpu", out_dir=out, resume=True)).run()
    assert outcome.path == partial_path
    resumed = load_result(partial_path)
    # the finished cells are kept as they were (stability is assessed once the whole run is in)
    kept = [c.model_dump(exclude={"stability"}) for c in resumed.cells[:2]]
    assert kept == [c.model_dump(exclude={"stability"}) for c in partial.cells]
    assert len({c.key for c in resumed.cells}) == 4
    assert resumed.finished_utc is not None


def test_resume_without_an_unfinished_run_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="no unfinished run"):
        Runner(RunOptions(scenario=str(scenario(tmp_path)), device="cpu", out_dir=tmp_path, resume=True)).run()


def run_cli(tmp_path: Path, text: str) -> tuple[int, RunResult]:
    out = tmp_path / "o"
    code = main(["run", str(scenario(tmp_path, text)), "--device", "cpu", "--out", str(out), "--quiet"])
    return code, load_result(next(out.rglob("*.json")))


def test_an_out_of_memory_cell_is_recorded_and_the_run_goes_on(tmp_path: Path):
    # a batch of 2**40 sequences asks the allocator for petabytes: it refuses at once
    text = TINY.replace("batch_size = [1, 2]", "batch_size = [1099511627776, 1]")
    text = text.replace('memory_budget = "{budget}"\n', 'metrics = ["memory"]\n')
    code, result = run_cli(tmp_path, text)
    assert code == 0  # running out of memory is an outcome to record, not a failure of the tool
    statuses = [(c.variant, c.batch_size, c.status) for c in result.cells]
    assert ("H16-MHA", 1099511627776, "oom") in statuses
    assert ("H16-MHA", 1, "ok") in statuses  # the cell after the out-of-memory one still ran
    oom = next(c for c in result.cells if c.status == "oom")
    assert oom.error is not None and "allocate" in oom.error
    assert oom.metrics is not None and oom.metrics.kv_cache_bytes is None


def test_a_failing_cell_is_recorded_with_its_error_and_the_exit_code_says_so(tmp_path: Path):
    text = TINY.replace('backend = ["sdpa"]', 'backend = ["flex", "sdpa"]').replace("[1, 2]", "[1]")
    text = text.replace('memory_budget = "{budget}"\n', 'metrics = ["decode"]\n')
    code, result = run_cli(tmp_path, text)
    assert code == 1
    by_backend = {c.backend: c for c in result.cells if c.variant == "H16-MHA"}
    assert by_backend["flex"].status == "error"
    assert by_backend["flex"].error is not None and "CUDA" in by_backend["flex"].error
    assert by_backend["sdpa"].status == "ok"


def test_the_result_file_is_valid_json_of_the_documented_schema_version(finished: RunResult, tmp_path: Path):
    data = json.loads(finished.model_dump_json())
    assert data["schema_version"] == 1
    assert {"target", "environment", "git", "scenario", "cells"} <= data.keys()
    metrics = data["cells"][0]["metrics"]
    for key in (
        "decode_latency_s",
        "attention_latency_s",
        "bytes_per_step",
        "bandwidth_gbps",
        "bandwidth_fraction",
        "peak_memory_bytes",
        "kv_cache_bytes",
        "kv_cache_bytes_expected",
        "max_batch",
    ):
        assert key in metrics
    assert {"samples", "median", "p10", "p90", "ci_low", "ci_high"} <= metrics["decode_latency_s"].keys()
    assert {"predicted", "measured", "budget_bytes"} <= metrics["max_batch"].keys()


def test_measurement_rounds_pool_samples_and_keep_one_median_per_process(tmp_path: Path):
    text = TINY.replace('memory_budget = "{budget}"\n', 'metrics = ["decode"]\nrounds = 2\n')
    text = text.replace("[1, 2]", "[1]")
    code, result = run_cli(tmp_path, text)
    assert code == 0
    for cell in result.cells:
        assert cell.rounds_done == 2
        assert cell.metrics is not None and cell.metrics.decode_latency_s is not None
        summary = cell.metrics.decode_latency_s
        assert len(summary.process_medians) == 2
        assert len(summary.samples) >= 2 * 5  # min_samples from each of the two processes
        assert min(summary.process_medians) <= summary.median <= max(summary.process_medians)


def test_progress_reaches_its_total_when_a_cell_fails_in_an_early_round(tmp_path: Path):
    text = TINY.replace('backend = ["sdpa"]', 'backend = ["flex", "sdpa"]').replace("[1, 2]", "[1]")
    text = text.replace('memory_budget = "{budget}"\n', 'metrics = ["decode"]\nrounds = 2\n')
    counted: list[int] = []
    total: list[int] = []
    progress = RunProgress(
        start=lambda all_cells, done: total.append(all_cells - done),
        cell_finished=lambda cell, result: counted.append(1),
        rounds_skipped=lambda cell, n: counted.append(n),
    )
    options = RunOptions(scenario=str(scenario(tmp_path, text)), device="cpu", out_dir=tmp_path / "out")
    outcome = Runner(options, progress).run()
    assert [c.status for c in outcome.result.cells].count("error") == 2  # flex on CPU, both variants
    assert total == [8]  # 4 cells x 2 rounds
    assert sum(counted) == 8  # the failed cells' second rounds included


def test_every_measured_cell_carries_self_checks_and_a_quiet_run_passes_them(finished: RunResult):
    for cell in finished.cells:
        names = {check.name for check in cell.checks}
        assert {"kv_cache_as_accounted", "peak_memory_holds_weights_and_kv", "bandwidth_within_peak"} <= names
        assert cell.checks_failed == [c.name for c in cell.checks if not c.passed]
    accounted = [c for cell in finished.cells for c in cell.checks if c.name == "kv_cache_as_accounted"]
    assert all(check.passed for check in accounted)


def test_sample_sets_say_how_they_were_timed(finished: RunResult):
    metrics = finished.cells[0].metrics
    assert metrics is not None and metrics.decode_latency_s is not None and metrics.decode_latency_cold_s is not None
    warm, cold = metrics.decode_latency_s, metrics.decode_latency_cold_s
    assert warm.timer == cold.timer == "perf_counter"
    assert warm.inner_reps is not None and warm.inner_reps >= 1 and cold.inner_reps == 1
    assert cold.flush is not None and warm.flush is None


def test_tokens_per_second_come_from_the_warm_median(finished: RunResult):
    cell = finished.cells[0]
    assert cell.metrics is not None and cell.metrics.decode_latency_s is not None
    assert cell.metrics.tokens_per_s == pytest.approx(cell.batch_size / cell.metrics.decode_latency_s.median)


def test_a_bandwidth_above_the_peak_fails_its_check_in_the_result_the_report_and_the_run_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    # A peak probe that reports 1 MB/s: every cell then moves more than "the machine can".
    def tiny_peak(self: Runner, target: str, environment: dict[str, object]) -> dict[str, object]:
        return {"read_gbps": 0.001, "copy_gbps": 0.001, "vendor_gbps": None, "buffer_bytes": 1, "method": "test"}

    monkeypatch.setattr(Runner, "_peak", tiny_peak)
    text = TINY.replace("[1, 2]", "[1]").replace('memory_budget = "{budget}"\n', 'metrics = ["decode"]\n')
    code, result = run_cli(tmp_path, text)
    assert code == 0  # a failed check marks the cell; it is not an error
    assert all(c.status == "ok" and "bandwidth_within_peak" in c.checks_failed for c in result.cells)
    assert "warning: bandwidth_within_peak failed in 2 of 2 cells" in capsys.readouterr().err
    report_dir = tmp_path / "report"
    assert main(["report", str(tmp_path / "o"), "--out", str(report_dir)]) == 0
    report = next(report_dir.rglob("REPORT.md")).read_text()
    assert "failed self-checks: `bandwidth_within_peak` (2 cells)" in report
    assert "| bandwidth_within_peak |" in report


def test_auto_is_resolved_in_a_worker_of_its_own_before_the_cell_is_measured(tmp_path: Path):
    text = TINY.replace('backend = ["sdpa"]', 'backend = ["auto"]').replace("[1, 2]", "[1]")
    code, result = run_cli(tmp_path, text)
    assert code == 0
    for cell in result.cells:
        assert cell.backend == "auto" and cell.backend_used is not None and cell.backend_used != "auto"
        assert cell.metrics is not None and cell.metrics.auto_latencies_s
        assert cell.backend_used == min(cell.metrics.auto_latencies_s, key=cell.metrics.auto_latencies_s.__getitem__)


def test_auto_cells_measure_memory_and_probe_max_batch_with_the_backend_they_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from harness.measure import cell_worker

    monkeypatch.setattr(
        cell_worker,
        "choose_auto_backend",
        lambda payload: {"backend": "eager", "latencies_s": {"eager": 1.0}, "rejected": {}},
    )
    seen: list[tuple[str, str]] = []
    for name in ("measure_cell", "probe_batch"):
        real = getattr(cell_worker, name)

        def recording(payload: CellRequest, real: object = real, name: str = name) -> dict[str, object]:
            seen.append((name, str(payload.backend)))
            return real(payload)  # type: ignore[operator]

        monkeypatch.setattr(cell_worker, name, recording)
    runner = Runner(
        RunOptions(
            scenario=str(
                scenario(tmp_path, TINY.replace('backend = ["sdpa"]', 'backend = ["auto"]').replace("[1, 2]", "[1]"))
            ),
            device="cpu",
            out_dir=tmp_path / "o",
        )
    )
    runner.workers = _InProcess()
    outcome = runner.run()
    assert outcome.exit_code == 0
    assert {backend for _, backend in seen} == {"eager"}
    assert {name for name, _ in seen} == {"measure_cell", "probe_batch"}


class _InProcess:
    """Runs worker functions in this process (so that monkeypatched ones are seen), with the same outcomes."""

    def call(self, entry, payload, timeout_s=None):  # type: ignore[no-untyped-def]
        from harness.run.worker import WorkerOutcome, describe_exception, is_out_of_memory

        try:
            return WorkerOutcome("ok", resolve(entry)(payload), None, 0.0)
        except Exception as exc:
            status = "oom" if is_out_of_memory(exc) else "error"
            return WorkerOutcome(status, None, describe_exception(exc), 0.0, type(exc).__name__)


def test_a_cell_whose_worker_hangs_is_recorded_as_a_timeout_and_the_run_goes_on(tmp_path: Path):
    text = TINY.replace("[1, 2]", "[1]").replace(
        'memory_budget = "{budget}"\n', 'metrics = ["decode"]\ncell_timeout_s = 60\n'
    )
    runner = Runner(RunOptions(scenario=str(scenario(tmp_path, text)), device="cpu", out_dir=tmp_path / "o"))
    real_call = runner.workers.call
    calls: list[str] = []

    def first_measurement_hangs(entry, payload, timeout_s=None):  # type: ignore[no-untyped-def]
        fn = resolve(entry)
        calls.append(fn.__name__)
        if fn.__name__ == "measure_cell" and calls.count("measure_cell") == 1:
            assert timeout_s == 60
            return real_call(_hang, payload, timeout_s=0.5)
        return real_call(entry, payload, timeout_s=timeout_s)

    runner.workers.call = first_measurement_hangs  # type: ignore[method-assign]
    outcome = runner.run()
    assert [c.status for c in outcome.result.cells] == ["timeout", "ok"]
    assert outcome.exit_code == 1 and outcome.failed_cells[0].status == "timeout"


def _hang(payload: CellRequest) -> dict[str, object]:
    import time

    time.sleep(60)
    return {}


def test_a_capture_that_broke_its_worker_is_measured_again_with_graphs_off(tmp_path: Path):
    from harness.run.worker import WorkerOutcome

    text = TINY.replace("[1, 2]", "[1]").replace('memory_budget = "{budget}"\n', 'metrics = ["decode"]\n')
    runner = Runner(RunOptions(scenario=str(scenario(tmp_path, text)), device="cpu", out_dir=tmp_path / "o"))
    real_call = runner.workers.call
    graphs: list[object] = []

    def broken_capture_once(entry, payload, timeout_s=None):  # type: ignore[no-untyped-def]
        if resolve(entry).__name__ == "measure_cell":
            graphs.append(payload.graphs)
            if len(graphs) == 1:
                return WorkerOutcome("error", None, "GraphCaptureStateError: ...", 0.1, "GraphCaptureStateError")
        return real_call(entry, payload, timeout_s=timeout_s)

    runner.workers.call = broken_capture_once  # type: ignore[method-assign]
    outcome = runner.run()
    assert graphs[:2] == [True, False]
    assert outcome.result.cells[0].status == "ok"


def test_a_run_without_a_file_measures_the_gpu_default_on_cuda_and_the_default_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from harness.cli import run_cmd

    monkeypatch.chdir(Path(__file__).parents[1])
    assert run_cmd.default_scenario("cuda:0") == "scenarios/gpu-default.toml"
    assert run_cmd.default_scenario("cpu") == "scenarios/default.toml"


def test_rerun_unstable_measures_again_only_the_cells_the_run_found_unstable(tmp_path: Path):
    from harness.results.schema import Stability
    from harness.results.store import save_result

    text = TINY.replace("[1, 2]", "[1]").replace('memory_budget = "{budget}"\n', 'metrics = ["decode"]\n')
    path = scenario(tmp_path, text)
    out = tmp_path / "out"
    first = Runner(RunOptions(scenario=str(path), device="cpu", out_dir=out)).run()
    marked = first.result.model_copy(deep=True)
    shaky = Stability(unstable=True, reasons=["host busy while timing (round 1): ..."])
    marked.cells[0] = marked.cells[0].model_copy(update={"stability": shaky})
    marked.cells[1] = marked.cells[1].model_copy(update={"stability": Stability(unstable=False)})
    save_result(marked, first.path)
    again = Runner(RunOptions(scenario=str(path), device="cpu", out_dir=out, resume=True, rerun_unstable=True)).run()
    assert again.path == first.path
    after = load_result(first.path)
    assert [c.key for c in after.cells] == [first.result.cells[1].key, first.result.cells[0].key]
    # the stable cell's measurements are untouched (its stability is assessed again, with the run's)
    assert after.cells[0].model_dump(exclude={"stability"}) == marked.cells[1].model_dump(exclude={"stability"})
    remeasured = after.cells[1].metrics
    assert remeasured is not None and remeasured.decode_latency_s is not None
    before = first.result.cells[0].metrics
    assert before is not None and before.decode_latency_s is not None
    assert remeasured.decode_latency_s.samples != before.decode_latency_s.samples
    assert after.finished_utc is not None


def test_rerun_unstable_without_resume_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["run", str(scenario(tmp_path)), "--rerun-unstable", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (
        "attnbench run: error: --rerun-unstable: re-measures cells of an existing run; give --resume too"
    )


def test_every_cell_records_where_its_round_ran(finished: RunResult):
    import os
    import socket
    from datetime import datetime

    for cell in finished.cells:
        (where,) = cell.placement  # one round
        assert where.executor == "local" and where.node_id == where.host == socket.gethostname()
        assert where.device == "cpu" and where.device_uuid is None
        assert where.pid == os.getpid()  # this process ran the round's workers
        assert finished.peak_bandwidth_gbps is not None and where.peak_bandwidth_gbps == finished.peak_bandwidth_gbps
        assert datetime.fromisoformat(where.started_utc) <= datetime.fromisoformat(where.finished_utc)
    # one after the other: each round starts once the one before it has finished
    spans = [(c.placement[0].started_utc, c.placement[0].finished_utc) for c in finished.cells]
    assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(spans))


def test_each_measurement_round_appends_its_placement(tmp_path: Path):
    text = TINY.replace('memory_budget = "{budget}"\n', 'metrics = ["decode"]\nrounds = 2\n').replace("[1, 2]", "[1]")
    code, result = run_cli(tmp_path, text)
    assert code == 0
    for cell in result.cells:
        assert [p.executor for p in cell.placement] == ["local", "local"]
        assert cell.placement[0].finished_utc <= cell.placement[1].started_utc


def test_quick_and_paired_timing_keep_fixed_windows_and_a_full_run_aims_for_the_target() -> None:
    from harness.run.cellround import QUICK_MIN_TIME_S, QUICK_WARMUP_S, timing_settings
    from harness.scenario.schema import MeasureSpec

    measure = MeasureSpec(warmup_s=0.5, min_time_s=1.0, target_ci=0.02, max_time_s=3.0, warmup_max_s=2.0)
    full = timing_settings(measure, quick=False)
    assert (full["warmup_max_s"], full["target_ci"], full["max_time_s"]) == (2.0, 0.02, 3.0)
    quick = timing_settings(measure, quick=True)
    assert (quick["warmup_s"], quick["warmup_max_s"]) == (QUICK_WARMUP_S, QUICK_WARMUP_S)
    assert (quick["min_time_s"], quick["max_time_s"], quick["target_ci"]) == (QUICK_MIN_TIME_S, QUICK_MIN_TIME_S, None)
    paired = timing_settings(measure, quick=False, paired=True)
    assert (paired["warmup_max_s"], paired["target_ci"], paired["max_time_s"]) == (2.0, None, 1.0)


@pytest.mark.parametrize("paired", [False, True])
def test_only_a_side_of_an_interleaved_comparison_times_its_rounds_on_the_fixed_window(
    tmp_path: Path, paired: bool
) -> None:
    from harness.results.schema import Pairing

    pairing = Pairing(
        session="s1", role="base", revision="HEAD", commit=None, dirty=False, partner_revision=".",
        partner_commit=None, rounds=2,
    )  # fmt: skip
    runner = Runner(RunOptions(scenario=str(scenario(tmp_path)), device="cpu", out_dir=tmp_path / "out"))
    cells = runner.begin(pairing if paired else None)
    try:
        assert runner.job(cells[0], 0).paired is paired
    finally:
        runner.close()


def test_the_machines_fingerprint_records_the_threads_the_scenario_gives_its_workers() -> None:
    import torch

    from harness.measure import cell_worker

    before = torch.get_num_threads()
    try:
        described = cell_worker.describe_machine(MachineRequest(device="cpu", threads=1))
        assert described["environment"]["torch_num_threads"] == 1
    finally:
        torch.set_num_threads(before)
