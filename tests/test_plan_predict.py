"""``attnbench plan --predict``: every cell predicted from the target's calibration, or vendor figures marked so."""

from __future__ import annotations

import json

from helpers_predict import DECODE, modelled_run
from test_predict import GIT

from harness.cli import main
from harness.predict.calibration import CALIBRATION_NAME, calibrate, save_calibration
from harness.results.store import save_result


def _calibrated(tmp_path):
    folder = tmp_path / "cpu-test-2c"
    folder.mkdir()
    save_result(modelled_run(), folder / "20260105T100000Z_0123456.json")
    save_calibration(calibrate(folder, "cpu-test-2c", GIT), folder / CALIBRATION_NAME)
    return tmp_path


def test_plan_predict_gives_every_cell_its_calibrated_latency_memory_and_max_batch(tmp_path, capsys):
    results = _calibrated(tmp_path)
    args = ["plan", "scenarios/default.toml", "--predict", "--target", "cpu-test-2c", "--results", str(results)]
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "from its calibration" in data["prediction_source"]
    rows = data["predictions"]
    assert len(rows) == len(data["cells"]) == 20
    for row, cell in zip(rows, data["cells"], strict=True):
        truth = DECODE.latency_s(cell["bytes_per_step"], cell["flops_per_step"], 8)
        assert abs(row["decode_latency_s"] / truth - 1) < 0.03
        assert row["bandwidth_gbps"] == cell["bytes_per_step"] / row["decode_latency_s"] / 1e9
        assert row["source"] == "calibration" and row["max_batch"] >= 0 and row["peak_memory_bytes"] > 0
    assert main(args) == 0
    assert "H64-MQA-CLA2" in capsys.readouterr().out


def test_plan_predict_for_a_gpu_without_calibration_marks_vendor_figures(tmp_path, capsys):
    args = ["plan", "scenarios/gpu-default.toml", "--predict", "--target", "nvidia-h100-80gb-hbm3"]
    assert main([*args, "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("VENDOR FIGURES, not calibrated") and "3,350 GB/s" in out and "(vendor)" in out


def test_plan_predict_refuses_a_target_with_neither_in_one_line(tmp_path, capsys):
    assert main(["plan", "--predict", "--target", "cpu-none-1c", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no calibration for target 'cpu-none-1c'" in err


def test_plan_predict_refuses_a_target_that_is_a_path(tmp_path, capsys):
    assert main(["plan", "--predict", "--target", "../elsewhere", "--results", str(tmp_path)]) == 2
    assert "not a target id" in capsys.readouterr().err
