"""Every measured cell records what the target's cost model predicted for it, and the error."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_predict import modelled_run
from helpers_tiny import FAST_TIMING, tiny_scenario
from test_predict import GIT

from harness.hardware import detect_target
from harness.predict.calibration import CALIBRATION_NAME, calibrate, save_calibration
from harness.results.store import load_result, result_files, save_result
from harness.run.runner import Runner, RunOptions


@pytest.fixture(autouse=True)
def peak_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "attnbench-cache"))


def _scenario(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_scenario(measure='metrics = ["decode", "attention"]\n' + FAST_TIMING))
    return path


def test_a_run_on_a_calibrated_target_records_each_cells_prediction_and_error(tmp_path: Path):
    target = detect_target("cpu")
    folder = tmp_path / "out" / target
    folder.mkdir(parents=True)
    save_result(modelled_run(target=target), folder / "20260105T100000Z_0123456.json")
    save_calibration(calibrate(folder, target, GIT), folder / CALIBRATION_NAME)
    outcome = Runner(RunOptions(scenario=str(_scenario(tmp_path)), device="cpu", out_dir=tmp_path / "out")).run()
    assert outcome.exit_code == 0
    cells = load_result(outcome.path).cells
    assert cells
    for cell in cells:
        p, m = cell.prediction, cell.metrics
        assert p is not None and m is not None and m.decode_latency_s is not None
        assert p.source == "calibration" and p.decode_latency_s is not None
        assert p.decode_error_fraction == pytest.approx(p.decode_latency_s / m.decode_latency_s.median - 1)
        assert p.max_batch is None  # no budget searched, nothing to predict against


def test_a_run_on_an_uncalibrated_cpu_target_records_no_prediction(tmp_path: Path):
    outcome = Runner(RunOptions(scenario=str(_scenario(tmp_path)), device="cpu", out_dir=tmp_path / "out")).run()
    assert all(cell.prediction is None for cell in load_result(outcome.path).cells)


def test_a_broken_calibration_stops_the_run_before_anything_is_measured(tmp_path: Path, capsys):
    from harness.cli import main

    folder = tmp_path / "out" / detect_target("cpu")
    folder.mkdir(parents=True)
    (folder / CALIBRATION_NAME).write_text('{"target": 3}')
    assert main(["run", str(_scenario(tmp_path)), "--device", "cpu", "--out", str(tmp_path / "out")]) == 2
    assert CALIBRATION_NAME in capsys.readouterr().err
    assert result_files(folder) == []
