"""Runs that meet in one results folder, for real: two processes never write one result file at once,
and a new run never overwrites another's."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers_faults import (
    assert_no_traceback,
    finish,
    result_paths,
    run_args,
    saved,
    start,
    wait_for,
    workers,
    write_scenario,
)

from harness.results.store import claim_result_path, load_result

pytestmark = pytest.mark.slow


@pytest.fixture
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "attnbench-cache"


def refused(args: list[str], cache: Path, holder: int) -> str:
    """Run ``args`` to its end and check it was refused in one line naming ``holder``'s pid."""
    returncode, _, stderr = finish(start(args, cache))
    assert returncode == 2, stderr
    assert_no_traceback(stderr)
    (line,) = stderr.strip().splitlines()
    assert f"pid {holder}" in line and "another attnbench run is writing here" in line
    return line


def test_a_resume_is_refused_while_another_run_writes_the_file_naming_its_pid(tmp_path: Path, cache: Path):
    scenario, out = write_scenario(tmp_path, warmup_s=60), tmp_path / "out"
    first = start(run_args(scenario, out), cache)
    wait_for("the first run's worker", lambda: saved(out) and workers(first.pid))
    (path,) = result_paths(out)
    before = path.read_bytes()
    # the first run is unfinished, so --resume would pick its file: the lock keeps it out
    line = refused(run_args(scenario, out, "--resume"), cache, first.pid)
    assert line.startswith(f"attnbench run: error: {path}: ")
    assert path.read_bytes() == before
    first.terminate()
    assert finish(first)[0] == 143

    # two resumes of the interrupted run: the second is refused while the first one writes
    second = start(run_args(scenario, out, "--resume"), cache)
    lock = path.with_name(f".{path.name}.lock")
    wait_for("the resumed run's worker", lambda: lock.exists() and workers(second.pid))
    refused(run_args(scenario, out, "--resume"), cache, second.pid)
    second.terminate()
    assert finish(second)[0] == 143
    assert [i.signal for i in load_result(path).interruptions] == ["SIGTERM", "SIGTERM"]


def test_two_runs_into_one_folder_at_once_each_keep_their_own_file(tmp_path: Path, cache: Path):
    scenario, out = write_scenario(tmp_path, warmup_s=0.5), tmp_path / "out"
    runs = [start(run_args(scenario, out), cache) for _ in range(2)]
    for run in runs:
        returncode, _, stderr = finish(run)
        assert returncode == 0, stderr
    paths = result_paths(out)
    assert len(paths) == 2
    for path in paths:
        result = load_result(path)
        assert result.finished_utc is not None and [c.status for c in result.cells] == ["ok", "ok"]


def test_runs_started_in_the_same_second_claim_different_names(tmp_path: Path):
    started = datetime(2026, 11, 30, 1, 2, 3, tzinfo=UTC)
    first = claim_result_path(tmp_path, started, "abc1234")
    first.write_text("the first run's file")
    second = claim_result_path(tmp_path, started, "abc1234")
    assert (first.name, second.name) == ("20261130T010203Z_abc1234.json", "20261130T010203Z_abc1234-2.json")
    assert first.read_text() == "the first run's file"
    assert claim_result_path(tmp_path, started, None).name == "20261130T010203Z_nogit.json"
