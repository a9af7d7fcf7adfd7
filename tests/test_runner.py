"""The runner end to end on a tiny scenario: result schema, accounting, resume, failures, max batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import UserError
from harness.results.schema import RunResult
from harness.results.store import load_result
from harness.runner import Runner, RunOptions, RunProgress

TINY = """
name = "tiny"
[model]
d_model = 64
n_layers = 4
d_ff = 128
vocab_size = 97
dtype = "float32"
[[variant]]
name = "H16-MHA"
[[variant]]
name = "H16-MQA-CLA2"
[sweep]
batch_size = [1, 2]
context_len = [32]
backend = ["sdpa"]
[measure]
memory_budget = "{budget}"
warmup_s = 0.01
min_time_s = 0.01
min_samples = 5
max_samples = 10
"""


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
        verdicts = {p["batch_size"]: p["fits"] for p in found.probes}
        assert verdicts[found.measured] is True
        assert verdicts[found.measured + 1] is False


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
    assert [c.model_dump() for c in resumed.cells[:2]] == [c.model_dump() for c in partial.cells]
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
