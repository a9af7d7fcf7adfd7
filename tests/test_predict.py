"""The cost model, its robust fit and a target's calibration (harness/predict/)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers_predict import ATTENTION, DECODE, MEMORY, modelled_run

from harness.cli import main
from harness.predict.calibration import CALIBRATION_NAME, calibrate, load_calibration, save_calibration
from harness.predict.costmodel import LatencyModel, MemoryModel
from harness.predict.fit import LatencyPoint, MemoryPoint, abs_error_quantiles, fit_latency, fit_memory
from harness.results.schema import GitInfo
from harness.results.store import save_result

GIT = GitInfo(commit="0" * 40, short="0000000", dirty=False)


def test_latency_is_the_longer_of_memory_and_compute_time_plus_overheads():
    model = LatencyModel(bandwidth_gbps=10.0, tflops=1.0, layer_overhead_s=1e-4, step_overhead_s=1e-3)
    # 1e9 bytes at 10 GB/s = 0.1 s; 5e10 FLOPs at 1 TFLOP/s = 0.05 s; 4 layers
    assert model.latency_s(1e9, 5e10, 4) == pytest.approx(0.1 + 4e-4 + 1e-3)
    assert model.bound(1e9, 5e10) == "memory"
    assert model.bound(1e8, 5e10) == "compute"


def test_latency_sums_memory_and_compute_time_when_they_do_not_overlap():
    model = LatencyModel(bandwidth_gbps=10.0, tflops=1.0, layer_overhead_s=0.0, step_overhead_s=0.0, combine="sum")
    assert model.latency_s(1e9, 5e10, 4) == pytest.approx(0.15)


def test_max_batch_is_what_the_budget_holds_beside_weights_and_fixed_bytes():
    memory = MemoryModel(fixed_bytes=10.0, sequence_factor=2.0)
    assert memory.max_batch(110, 20, 10) == 4  # (110 - 20 - 10) / 20
    assert memory.max_batch(25, 20, 10) == 0
    assert memory.peak_bytes(20, 10, 3) == 90


def _points(model: LatencyModel) -> list[LatencyPoint]:
    points = []
    for index, (b, f, n) in enumerate((b, f, n) for b in (1e7, 5e7, 2e8) for f in (1e8, 1e9, 8e9) for n in (4, 8)):
        points.append(LatencyPoint(b, f, n, model.latency_s(b, f, n) * (1 + 0.002 * (index % 3 - 1))))
    return points


@pytest.mark.parametrize("combine", ["max", "sum"])
def test_fit_recovers_the_figures_that_made_the_latencies(combine):
    truth = LatencyModel(bandwidth_gbps=12.0, tflops=0.5, layer_overhead_s=1e-4, step_overhead_s=5e-4, combine=combine)
    fitted = fit_latency(_points(truth))
    assert fitted.combine == combine
    assert fitted.bandwidth_gbps == pytest.approx(12.0, rel=0.05)
    assert fitted.tflops == pytest.approx(0.5, rel=0.05)


def test_fit_is_not_pulled_by_one_cell_measured_five_times_too_slow():
    truth = LatencyModel(bandwidth_gbps=12.0, tflops=0.5, layer_overhead_s=1e-4, step_overhead_s=5e-4, combine="sum")
    points = _points(truth)
    bad = points[3]
    points[3] = LatencyPoint(bad.bytes_moved, bad.flops, bad.n_layers, bad.latency_s * 5)
    fitted = fit_latency(points)
    errors = [fitted.latency_s(p.bytes_moved, p.flops, p.n_layers) / p.latency_s - 1 for p in points]
    assert sorted(abs(e) for e in errors)[-2] < 0.03  # every other cell still within 3%
    assert errors[3] < -0.7  # the slow one stands out


def test_fit_refuses_fewer_points_than_unknowns():
    with pytest.raises(ValueError, match="at least 5"):
        fit_latency(_points(DECODE)[:4])


def test_memory_fit_recovers_fixed_bytes_and_per_sequence_factor():
    points = [
        MemoryPoint(100_000_000, 2_000_000, b, round(MEMORY.peak_bytes(100_000_000, 2_000_000, b))) for b in (1, 8, 50)
    ]
    fitted = fit_memory(points)
    assert fitted.fixed_bytes == pytest.approx(MEMORY.fixed_bytes, rel=0.01)
    assert fitted.sequence_factor == pytest.approx(MEMORY.sequence_factor, rel=0.01)


def test_abs_error_quantiles_are_median_and_nearest_rank_p90():
    assert abs_error_quantiles([0.1, -0.2, 0.3, -0.4, 0.5, 0.6, 0.7, 0.8, 0.9, -1.0]) == (pytest.approx(0.55), 0.9)
    assert all(math.isnan(q) for q in abs_error_quantiles([]))


def _target(tmp_path: Path, **kwargs) -> Path:
    folder = tmp_path / "cpu-test-2c"
    folder.mkdir()
    save_result(modelled_run(**kwargs), folder / "20260105T100000Z_0123456.json")
    return folder


def test_calibration_of_a_target_predicts_its_cells_within_noise(tmp_path):
    calibration = calibrate(_target(tmp_path), "cpu-test-2c", GIT)
    assert calibration.files == ["20260105T100000Z_0123456.json"]
    decode = calibration.latency_model("decode", "float32", "sdpa")
    assert decode is not None and decode.dtype is None  # one dtype and backend: the fit over all cells serves
    assert decode.cells == 20
    assert decode.median_abs_error < 0.02
    assert {r.metric for r in calibration.residuals} == {"decode", "attention"}
    assert max(abs(r.error_fraction) for r in calibration.residuals) < 0.05
    assert calibration.memory is not None
    assert calibration.memory.model.sequence_factor == pytest.approx(MEMORY.sequence_factor, rel=0.01)
    assert ATTENTION.combine == calibration.latency_model("attention", "float32", "sdpa").model.combine


def test_calibration_lists_a_slow_cell_by_its_residual(tmp_path):
    calibration = calibrate(_target(tmp_path, slow={("H64-GQA2", 4, 2048): 2.0}), "cpu-test-2c", GIT)
    worst = min(calibration.residuals, key=lambda r: r.error_fraction)
    assert (worst.variant, worst.batch_size, worst.context_len, worst.metric) == ("H64-GQA2", 4, 2048, "decode")
    assert worst.error_fraction < -0.4


def test_calibration_round_trips_through_its_file(tmp_path):
    calibration = calibrate(_target(tmp_path), "cpu-test-2c", GIT)
    path = tmp_path / CALIBRATION_NAME
    save_calibration(calibration, path)
    assert load_calibration(path) == calibration


def test_calibrate_command_writes_calibration_json_beside_the_results(tmp_path, capsys):
    folder = _target(tmp_path)
    assert main(["calibrate", "cpu-test-2c", "--results", str(tmp_path)]) == 0
    written = json.loads((folder / CALIBRATION_NAME).read_text())
    assert written["target"] == "cpu-test-2c"
    assert "decode" in capsys.readouterr().out


def test_calibrate_command_refuses_a_target_without_results_in_one_line(tmp_path, capsys):
    assert main(["calibrate", "nvidia-h100-80gb-hbm3", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no results of target" in err


def test_a_broken_calibration_file_is_one_line_naming_file_and_field(tmp_path):
    path = tmp_path / CALIBRATION_NAME
    path.write_text(json.dumps({"target": "x"}))
    with pytest.raises(Exception) as caught:
        load_calibration(path)
    assert str(path) in str(caught.value) and "latency" in str(caught.value)
