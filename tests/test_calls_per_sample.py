"""A run times each cell with the calls per warm sample of the newest earlier finished run of its scenario in
the results folder, so that two runs of one commit compare alike; ``--recalibrate`` calibrates afresh."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_tiny import DECODE_ONLY, tiny_scenario

from harness.cli import main
from harness.results.schema import CellResult, RunResult
from harness.results.store import load_result, result_files, save_result

# Two cells (batch 1 and 2) of one variant; far more calls per sample than a calibration of this small
# stack settles on, so a cell that times with it can only have taken it from the earlier file.
PLANTED = 37


@pytest.fixture(autouse=True)
def peak_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "attnbench-cache"))


def _run(scenario: Path, out: Path, *extra: str) -> RunResult:
    before = set(result_files(out)) if out.is_dir() else set()
    assert main(["run", str(scenario), "--device", "cpu", "--out", str(out), "--quiet", *extra]) == 0
    (path,) = set(result_files(out)) - before
    return load_result(path)


def _decode_reps(cell: CellResult) -> int | None:
    assert cell.metrics is not None and cell.metrics.decode_latency_s is not None
    return cell.metrics.decode_latency_s.inner_reps


def _plant(path: Path, reps: int) -> None:
    """Make the result at ``path`` say its cells' warm decode samples were means of ``reps`` calls."""
    result = load_result(path)
    for cell in result.cells:
        assert cell.metrics is not None and cell.metrics.decode_latency_s is not None
        decode = cell.metrics.decode_latency_s.model_copy(update={"inner_reps": reps})
        cell.metrics = cell.metrics.model_copy(update={"decode_latency_s": decode})
    save_result(result, path)


@pytest.fixture
def earlier(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A tiny scenario, a results folder, and a finished run in it planted with PLANTED calls per sample."""
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(tiny_scenario(("H16-MQA",), DECODE_ONLY + "rounds = 1\ncold = false\n"))
    out = tmp_path / "out"
    first = _run(scenario, out)
    assert first.inner_reps_from is None  # nothing earlier to take them from
    (path,) = result_files(out)
    _plant(path, PLANTED)
    return scenario, out, path


@pytest.mark.slow
def test_a_run_times_each_cell_with_the_calls_per_sample_of_the_newest_earlier_run_and_says_which(
    earlier: tuple[Path, Path, Path],
) -> None:
    scenario, out, path = earlier
    second = _run(scenario, out)
    assert second.inner_reps_from == path.name
    assert [_decode_reps(cell) for cell in second.cells] == [PLANTED, PLANTED]


@pytest.mark.slow
def test_recalibrate_calibrates_every_cell_afresh(earlier: tuple[Path, Path, Path]) -> None:
    scenario, out, _ = earlier
    fresh = _run(scenario, out, "--recalibrate")
    assert fresh.inner_reps_from is None
    assert all(reps is not None and reps != PLANTED for reps in map(_decode_reps, fresh.cells))


@pytest.mark.slow
def test_an_unfinished_or_differently_measured_earlier_run_lends_nothing(earlier: tuple[Path, Path, Path]) -> None:
    scenario, out, _ = earlier
    quick = _run(scenario, out, "--quick")  # --quick measures otherwise: compare would not compare them
    assert quick.inner_reps_from is None and PLANTED not in map(_decode_reps, quick.cells)
    for found in result_files(out):  # every earlier run unfinished, as a stopped one is
        result = load_result(found)
        save_result(result.model_copy(update={"finished_utc": None}), found)
    again = _run(scenario, out)
    assert again.inner_reps_from is None and PLANTED not in map(_decode_reps, again.cells)


@pytest.mark.slow
def test_a_cell_the_earlier_run_lacks_calibrates_its_own_and_one_that_lacks_all_is_not_named(
    earlier: tuple[Path, Path, Path],
) -> None:
    scenario, out, path = earlier
    result = load_result(path)
    save_result(result.model_copy(update={"cells": result.cells[:1]}), path)  # batch 1 only
    second = _run(scenario, out)
    assert second.inner_reps_from == path.name
    assert _decode_reps(second.cells[0]) == PLANTED and _decode_reps(second.cells[1]) != PLANTED
    for found in result_files(out):  # the newest run now has no cell of this scenario's, as another shard's
        save_result(load_result(found).model_copy(update={"cells": []}), found)
    third = _run(scenario, out)
    assert third.inner_reps_from is None


def test_recalibrate_with_resume_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--resume", "--recalibrate", "--out", str(tmp_path), "--quiet"]) == 2
    assert capsys.readouterr().err == (
        "attnbench run: error: --recalibrate: applies to a new run; a resumed run keeps how it began\n"
    )
