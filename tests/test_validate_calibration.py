"""``attnbench validate`` reads a target's calibration.json as a cost model, not as a result file."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_predict import modelled_run
from test_predict import GIT

from harness.cli import main
from harness.predict.calibration import CALIBRATION_NAME, calibrate, save_calibration
from harness.results.store import save_result


def test_a_fitted_calibration_validates_as_a_cost_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    save_result(modelled_run(target="cpu-test"), tmp_path / "20260105T100000Z_0123456.json")
    save_calibration(calibrate(tmp_path, "cpu-test", GIT), tmp_path / CALIBRATION_NAME)
    assert main(["validate", str(tmp_path / CALIBRATION_NAME)]) == 0
    out = capsys.readouterr().out
    assert "ok (cost model of cpu-test" in out and "from 1 result files" in out


def test_a_broken_calibration_names_the_file_and_each_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / CALIBRATION_NAME
    path.write_text('{"target": 3}')
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: target:" in err and f"{path}: latency: required field is missing" in err
    assert "Traceback" not in err
