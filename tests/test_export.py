"""Export to pytest-benchmark's saved-run format, checked against pytest-benchmark itself."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_results import lognormal_samples, make_cell, make_run

from harness import cli, export
from harness.errors import UserError
from harness.results.schema import RunResult

DATA = Path(__file__).parent / "data" / "compare"


def attnbench(argv: list[str]) -> int:
    """The ``attnbench`` command line, in-process."""
    return cli.main(argv)


def pytest_benchmark_executable() -> str | None:
    for name in ("pytest-benchmark", "py.test-benchmark"):
        beside = Path(sys.executable).parent / name
        if beside.exists():
            return str(beside)
        found = shutil.which(name)
        if found:
            return found
    return None


# --- stats --------------------------------------------------------------------------------------


def test_stats_of_five_samples_have_pytest_benchmark_quartiles_and_outlier_counts() -> None:
    stats = export.benchmark_stats([3.0, 1.0, 5.0, 2.0, 4.0])
    assert stats["data"] == [3.0, 1.0, 5.0, 2.0, 4.0]
    assert (stats["min"], stats["max"], stats["mean"], stats["median"], stats["total"]) == (1.0, 5.0, 3.0, 3.0, 15.0)
    assert stats["stddev"] == pytest.approx(math.sqrt(2.5), rel=1e-12)
    assert (stats["q1"], stats["q3"], stats["iqr"]) == (1.75, 4.25, 2.5)
    assert (stats["stddev_outliers"], stats["iqr_outliers"], stats["outliers"]) == (2, 0, "2;0")
    assert (stats["ld15iqr"], stats["hd15iqr"]) == (1.0, 5.0)
    assert (stats["rounds"], stats["iterations"]) == (5, 1)
    assert stats["ops"] == pytest.approx(1 / 3, rel=1e-12)


def test_stats_of_an_even_count_take_quartiles_as_medians_of_the_halves() -> None:
    stats = export.benchmark_stats([4.0, 3.0, 2.0, 1.0])
    assert (stats["q1"], stats["q3"]) == (1.5, 3.5)


def test_stats_count_a_far_sample_as_a_tukey_outlier_and_fence_it_out() -> None:
    stats = export.benchmark_stats([1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 9.0])
    assert stats["iqr_outliers"] == 1
    assert stats["hd15iqr"] == 1.5


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 20, 33])
def test_stats_agree_with_pytest_benchmarks_own_stats_class(n: int) -> None:
    reference_module = pytest.importorskip("pytest_benchmark.stats")
    samples = lognormal_samples(0.01, 0.2, n, seed=n)
    reference = reference_module.Stats()
    for sample in samples:
        reference.update(sample)
    ours = export.benchmark_stats(samples)
    for field, value in reference.as_dict().items():
        assert ours[field] == (pytest.approx(value, rel=1e-12) if isinstance(value, float) else value), field


# --- the document -------------------------------------------------------------------------------


def _result_with_a_failed_cell() -> RunResult:
    return make_run(
        [
            make_cell("H128-MQA-CLA2", 8, 2048, decode_samples=lognormal_samples(0.007, seed=1)),
            make_cell("H128-MHA", 16, 4096, decode_samples=lognormal_samples(0.012, seed=2)),
            make_cell("H128-GQA4", 64, 4096, status="oom"),
        ],
        target="nvidia-h100-80gb-hbm3",
        device="cuda",
        environment={
            "device": "cuda",
            "device_name": "NVIDIA H100 80GB HBM3",
            "cpu_model": "Test CPU",
            "logical_cores": 8,
        },
    )


def test_each_ok_cell_becomes_one_benchmark_named_by_variant_batch_and_context() -> None:
    document = export.to_pytest_benchmark(_result_with_a_failed_cell())
    names = [bench["name"] for bench in document["benchmarks"]]
    assert names == ["decode[H128-MQA-CLA2-b8-ctx2048-bfloat16-sdpa]", "decode[H128-MHA-b16-ctx4096-bfloat16-sdpa]"]


def test_a_benchmark_carries_group_fullname_params_and_raw_samples() -> None:
    result = _result_with_a_failed_cell()
    bench = export.to_pytest_benchmark(result)["benchmarks"][0]
    assert bench["group"] == "decode-small decode"
    assert bench["fullname"] == "scenarios/decode-small.toml::decode[H128-MQA-CLA2-b8-ctx2048-bfloat16-sdpa]"
    assert bench["params"] == {
        "variant": "H128-MQA-CLA2",
        "batch_size": 8,
        "context_len": 2048,
        "dtype": "bfloat16",
        "backend": "sdpa",
    }
    cell_metrics = result.cells[0].metrics
    assert cell_metrics is not None and cell_metrics.decode_latency_s is not None
    assert bench["stats"]["data"] == cell_metrics.decode_latency_s.samples


def test_machine_info_names_the_cpu_and_gpu_of_the_results_environment() -> None:
    info = export.to_pytest_benchmark(_result_with_a_failed_cell())["machine_info"]
    assert (info["cpu"]["brand_raw"], info["gpu"], info["attnbench_target"]) == (
        "Test CPU",
        "NVIDIA H100 80GB HBM3",
        "nvidia-h100-80gb-hbm3",
    )


def test_machine_info_of_a_cpu_result_names_no_gpu() -> None:
    info = export.to_pytest_benchmark(make_run([make_cell()]))["machine_info"]
    assert (info["cpu"]["brand_raw"], info["gpu"]) == ("Test CPU 2-core", "")


def test_commit_info_is_the_results_git_record() -> None:
    info = export.to_pytest_benchmark(_result_with_a_failed_cell())["commit_info"]
    assert (info["id"], info["dirty"], info["branch"]) == ("0123456789abcdef0123456789abcdef01234567", False, "main")


def test_another_latency_metric_can_be_exported_under_its_own_prefix() -> None:
    result = make_run([make_cell(attention_samples=lognormal_samples(0.002, seed=3))])
    (bench,) = export.to_pytest_benchmark(result, "attention_latency_s")["benchmarks"]
    assert bench["name"] == "attention[H128-MQA-b8-ctx2048-bfloat16-sdpa]"


def test_exporting_a_result_without_ok_cells_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no ok cell"):
        export.export_result(make_run([make_cell(status="error")]), tmp_path / "out.json")


# --- the command line and pytest-benchmark itself ----------------------------------------------


def test_cli_export_writes_a_pytest_benchmark_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "export.json"
    argv = ["export", "--format", "pytest-benchmark", str(DATA / "base.json"), "-o", str(output)]
    assert attnbench(argv) == 0
    document = json.loads(output.read_text(encoding="utf-8"))
    assert set(document) == {"machine_info", "commit_info", "benchmarks", "datetime", "version"}
    assert len(document["benchmarks"]) == 4
    assert capsys.readouterr().out == f"wrote 4 benchmarks to {output}\n"


def test_cli_export_of_a_missing_file_exits_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert attnbench(["export", str(tmp_path / "missing.json"), "-o", str(tmp_path / "out.json")]) == 2
    assert "missing.json: no such file" in capsys.readouterr().err


def test_pytest_benchmark_compare_reads_two_exported_runs(tmp_path: Path) -> None:
    executable = pytest_benchmark_executable()
    if executable is None:
        pytest.skip("pytest-benchmark's command is not installed")
    first, second = tmp_path / "0001_base.json", tmp_path / "0002_head.json"
    assert attnbench(["export", str(DATA / "base.json"), "-o", str(first)]) == 0
    assert attnbench(["export", str(DATA / "head.json"), "-o", str(second)]) == 0
    proc = subprocess.run(
        [executable, "compare", str(first), str(second)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Failed to load" not in proc.stdout + proc.stderr
    for name in (
        "decode[H128-MHA-b8-ctx2048-bfloat16-sdpa]",
        "decode[H128-MQA-b8-ctx2048-bfloat16-sdpa]",
        "decode[H128-MQA-CLA2-b8-ctx2048-bfloat16-sdpa]",
        "decode[H128-GQA4-b16-ctx4096-bfloat16-sdpa]",
        "decode[H64-MQA-b8-ctx2048-bfloat16-sdpa]",
    ):
        assert name in proc.stdout
    assert "0001_base)" in proc.stdout and "0002_head)" in proc.stdout  # each row names its source file


def test_cli_help_of_export_names_the_format(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        attnbench(["export", "--help"])
    assert info.value.code == 0
    assert "pytest-benchmark" in capsys.readouterr().out
