"""Stop signals and kills, for real: ``attnbench run`` in a subprocess, signalled mid-run.

A stopped run keeps every finished cell, says in its file that it was interrupted (when, by what),
ends its worker, exits 128 + the signal with one line saying how to resume, and ``--resume``
finishes it. Workers never outlive the run, nor print a traceback, however it ends (SIGKILL too).
A worker killed by SIGKILL without a word is recorded as ``killed`` and the run goes on.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from helpers_faults import (
    REPO,
    all_gone,
    assert_no_traceback,
    descendants,
    finish,
    result_paths,
    run_args,
    saved,
    signal_group,
    start,
    wait_for,
    workers,
    write_scenario,
)

from harness.results.store import load_result

pytestmark = pytest.mark.slow


@pytest.fixture
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One peak-bandwidth probe for the whole suite."""
    return tmp_path_factory.getbasetemp() / "attnbench-cache"


@pytest.mark.parametrize(
    ("sig", "code", "whole_group"),
    [
        (signal.SIGTERM, 143, False),  # `kill PID`, `timeout`
        (signal.SIGINT, 130, True),  # Ctrl-C: the terminal signals the whole foreground group
        (signal.SIGTERM, 143, True),  # a CI runner cancelling the job's process group
    ],
)
def test_a_stop_signal_keeps_finished_cells_records_itself_and_resume_completes_the_run(
    tmp_path: Path, cache: Path, sig: signal.Signals, code: int, whole_group: bool
):
    scenario, out = write_scenario(tmp_path), tmp_path / "out"
    process = start(run_args(scenario, out), cache)
    wait_for("the first cell", lambda: saved(out, cells=1))
    busy = wait_for("the second cell's worker", lambda: workers(process.pid))
    before = descendants(process.pid)
    if whole_group:
        signal_group(process, sig)
    else:
        process.send_signal(sig)
    returncode, _, stderr = finish(process)

    assert returncode == code
    assert_no_traceback(stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert f"interrupted by {sig.name}" in lines[0] and "--resume" in lines[0]
    assert all_gone(before + busy, timeout_s=10), "a worker outlived the run"
    (path,) = result_paths(out)
    stopped = load_result(path)
    assert stopped.finished_utc is None
    assert [c.status for c in stopped.cells] == ["ok"]  # the cell being measured is not recorded half-done
    (interruption,) = stopped.interruptions
    assert interruption.signal == sig.name and interruption.cells_done == 1
    assert not list(out.rglob(".*.lock")), "the lock file outlived the run"

    # the hint's command, as printed, finishes the run into the same file
    resume = lines[0].split("continue with: ", 1)[1].split()
    assert resume[:2] == ["attnbench", "run"]
    returncode, _, stderr = finish(start(resume[1:], cache))
    assert returncode == 0, stderr
    finished = load_result(path)
    assert finished.finished_utc is not None and [c.status for c in finished.cells] == ["ok", "ok"]
    assert finished.cells[0].model_dump(exclude={"stability"}) == stopped.cells[0].model_dump(exclude={"stability"})
    assert finished.interruptions == stopped.interruptions  # the history stays


def test_workers_exit_silently_and_at_once_when_the_run_is_killed(tmp_path: Path, cache: Path):
    # each worker would warm up for a minute: only noticing its parent's death ends it sooner
    scenario, out = write_scenario(tmp_path, warmup_s=60), tmp_path / "out"
    process = start(run_args(scenario, out), cache)
    wait_for("the run's file", lambda: saved(out))
    busy = wait_for("a measuring worker", lambda: workers(process.pid))
    others = descendants(process.pid)
    process.kill()  # SIGKILL to the run alone: nothing of it runs again
    killed = time.monotonic()
    # stderr is shared with the workers: it ends once the last of them has exited
    returncode, _, stderr = finish(process, timeout_s=30)
    assert time.monotonic() - killed < 10, "a worker went on measuring for its dead parent"
    assert returncode == -signal.SIGKILL
    assert stderr == "", stderr
    assert all_gone(busy + others, timeout_s=5)

    # the kernel dropped the run's lock with it (its file stays behind): --resume takes the run over
    (path,) = result_paths(out)
    process = start(run_args(scenario, out, "--resume"), cache)
    lock = path.with_name(f".{path.name}.lock")
    # the old lock file stays behind: the resumed run holds the lock once it writes its own pid there
    holds = lambda: lock.exists() and lock.read_text().strip() == str(process.pid)  # noqa: E731
    wait_for("the resumed run's measuring worker", lambda: holds() and workers(process.pid))
    process.terminate()
    returncode, _, stderr = finish(process)
    assert returncode == 143, stderr
    assert [i.signal for i in load_result(path).interruptions] == ["SIGTERM"]


def test_a_worker_killed_without_a_word_is_recorded_as_killed_and_the_run_goes_on(tmp_path: Path, cache: Path):
    scenario, out = write_scenario(tmp_path), tmp_path / "out"
    process = start(run_args(scenario, out), cache)
    wait_for("the run's file with its peak", lambda: saved(out))
    (worker,) = wait_for("the first cell's worker", lambda: workers(process.pid))
    worker.kill()  # as the kernel's out-of-memory killer ends a process: SIGKILL, no message
    returncode, stdout, stderr = finish(process)

    assert returncode == 0, stderr  # like running out of memory: an outcome, not a failure
    assert_no_traceback(stderr)
    result = load_result(result_paths(out)[0])
    assert [c.status for c in result.cells] == ["killed", "ok"]
    killed = result.cells[0]
    assert killed.error is not None and "SIGKILL" in killed.error
    # nothing ran out of memory here: where the cgroup's OOM-kill count can be read, the cause says so
    assert "out-of-memory killer" in killed.error
    assert "killed" in stdout  # the summary line counts it


def test_an_interrupted_worker_is_not_left_running(tmp_path: Path, cache: Path):
    """SIGTERM to the run alone (not its group): the run itself must end its worker."""
    scenario, out = write_scenario(tmp_path, warmup_s=60), tmp_path / "out"
    process = start(run_args(scenario, out), cache)
    wait_for("the run's file", lambda: saved(out))
    busy = wait_for("a measuring worker", lambda: workers(process.pid))
    process.terminate()
    returncode, _, stderr = finish(process, timeout_s=30)
    assert returncode == 143, stderr
    assert all_gone(busy, timeout_s=5)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in busy)


def test_an_interrupted_interleaved_comparison_records_the_stop_on_both_sides_and_leaves_no_worktree(
    tmp_path: Path, cache: Path
):
    scenario, out = write_scenario(tmp_path, warmup_s=2), tmp_path / "ab"
    # HEAD runs in a temporary worktree, which must not outlive the comparison
    process = start(["ab", "HEAD", ".", str(scenario), "--rounds", "2", "--out", str(out), "--quiet"], cache)
    wait_for("both sides' files", lambda: saved(out / "base") and saved(out / "head"), timeout_s=300)
    wait_for("a measuring worker", lambda: any(workers(p.pid) for p in psutil.Process(process.pid).children()))
    before = descendants(process.pid)
    process.terminate()
    returncode, _, stderr = finish(process)

    assert returncode == 143, stderr
    assert_no_traceback(stderr)
    (line,) = stderr.strip().splitlines()
    assert line == f"attnbench ab: interrupted by SIGTERM: the unfinished result files are under {out}"
    assert all_gone(before, timeout_s=10)
    # the base side runs HEAD's committed code: it records the stop once that code does
    committed = subprocess.run(["git", "cat-file", "-e", "HEAD:harness/signals.py"], cwd=REPO, check=False)
    for side in ("base", "head") if committed.returncode == 0 else ("head",):
        (path,) = result_paths(out / side)
        stopped = load_result(path)
        assert stopped.finished_utc is None and [i.signal for i in stopped.interruptions] == ["SIGTERM"]
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=REPO, capture_output=True, text=True, check=True)
    assert "attnbench-ab-" not in worktrees.stdout
