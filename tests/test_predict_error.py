"""benchmarks/predict_error.py: leave-one-out never lets a cell predict itself, and the script runs end to end."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_predict import modelled_run

from harness.predict.calibration import target_observations
from harness.results.store import save_result

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "predict_error.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("predict_error", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "cpu-test-2c"
    folder.mkdir()
    save_result(modelled_run(slow={("H64-MQA", 4, 2048): 1.5}), folder / "20260105T100000Z_0123456.json")
    save_result(modelled_run(seed=7), folder / "20260105T110000Z_0123456.json")
    return folder


def test_leave_one_out_fits_without_every_measurement_of_the_held_out_cell(bench, tmp_path, monkeypatch):
    _, found = target_observations(_folder(tmp_path))
    fitted_on: list[set] = []
    real = bench.fit_observations

    def spy(observations):
        fitted_on.append({o.key for o in observations})
        return real(observations)

    monkeypatch.setattr(bench, "fit_observations", spy)
    errors = bench.leave_one_out_latency("cpu-test-2c", found, "decode")
    assert len(errors) == 40 and len(fitted_on) == 20
    assert all(len(keys) == 19 for keys in fitted_on)  # 20 cells, each fit missing exactly one
    slow = [e for o, e in errors if o.key[1:4] == ("H64-MQA", 4, 2048) and o.file.startswith("20260105T100000Z")]
    assert slow and slow[0] < -0.25  # predicted from the others, the slowed measurement stands out


def test_the_script_prints_errors_max_batch_and_explore_time(tmp_path):
    _folder(tmp_path)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--target", "cpu-test-2c", "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=SCRIPT.parents[1],
    )
    assert proc.returncode == 0, proc.stderr
    assert "decode latency" in proc.stdout and "max batch (memory fit)" in proc.stdout
    assert "explore:" not in proc.stdout  # no calibration.json written for this target: nothing to explore with
