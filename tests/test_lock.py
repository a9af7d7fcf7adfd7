"""Writers into one folder: advisory locks (the second taker refused, naming the pid), failed report writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers_results import make_cell, make_run

from harness.cli import main
from harness.errors import UserError
from harness.results.lock import LockHeld, folder_lock
from harness.results.store import save_result

# A process that takes a folder's lock, says so on stdout, and holds it until its stdin closes.
HOLDER = """
import sys
from pathlib import Path
from harness.results.lock import folder_lock
with folder_lock(Path(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    sys.stdin.read()
"""


@contextmanager
def held_elsewhere(folder: Path, purpose: str) -> Iterator[subprocess.Popen[str]]:
    """The lock held by another process for the duration of the block."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), purpose],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    try:
        yield proc
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=30)


def test_a_second_taker_of_a_held_lock_is_refused_naming_the_holders_pid(tmp_path: Path) -> None:
    with held_elsewhere(tmp_path, "report") as holder, pytest.raises(LockHeld) as info:
        folder_lock(tmp_path, "report").acquire()
    assert info.value.holder_pid == holder.pid
    assert str(info.value) == (
        f"{tmp_path}: another attnbench report is writing here (pid {holder.pid}); run again once it has finished"
    )


def test_a_lock_is_refused_to_a_second_taker_in_the_same_process(tmp_path: Path) -> None:
    with folder_lock(tmp_path, "report"), pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
        folder_lock(tmp_path, "report").acquire()


def test_locks_for_different_purposes_do_not_exclude_each_other(tmp_path: Path) -> None:
    with folder_lock(tmp_path, "report"), folder_lock(tmp_path, "run") as run:
        assert run.held


def test_a_released_lock_can_be_taken_again_and_leaves_no_file(tmp_path: Path) -> None:
    with folder_lock(tmp_path, "report"):
        assert [p.name for p in tmp_path.iterdir()] == [".attnbench-report.lock"]
    with folder_lock(tmp_path, "report") as again:
        assert again.held
    assert list(tmp_path.iterdir()) == []


def test_the_lock_of_a_killed_holder_is_free_at_once(tmp_path: Path) -> None:
    with held_elsewhere(tmp_path, "report") as holder:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        with folder_lock(tmp_path, "report") as lock:
            assert lock.held
            assert (tmp_path / ".attnbench-report.lock").read_text() == f"{os.getpid()}\n"


def test_a_taker_that_locked_a_file_its_holder_just_removed_starts_over(tmp_path: Path) -> None:
    lock = folder_lock(tmp_path, "report")
    real_open = lock._open
    opened: list[int] = []

    def open_then_lose_the_race() -> int:
        fd = real_open()
        if not opened:
            lock.path.unlink()  # the previous holder releases between this open and the flock
        opened.append(fd)
        return fd

    lock._open = open_then_lose_the_race  # type: ignore[method-assign]
    lock.acquire()
    assert len(opened) == 2
    assert os.path.samestat(os.fstat(opened[1]), os.stat(lock.path))
    lock.release()


def test_a_lock_file_holding_garbage_is_refused_without_a_pid(tmp_path: Path) -> None:
    path = tmp_path / ".attnbench-report.lock"
    with folder_lock(tmp_path, "report"):
        path.write_text("not a pid\n")
        with pytest.raises(LockHeld, match=r"pid unknown") as info:
            folder_lock(tmp_path, "report").acquire()
    assert info.value.holder_pid is None


def test_a_folder_that_cannot_hold_a_lock_file_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match=r"cannot write here"):
        folder_lock(blocker / "sub", "report").acquire()


# --- attnbench report ----------------------------------------------------------------------------


def result_file(tmp_path: Path) -> Path:
    path = tmp_path / "results" / "run.json"
    path.parent.mkdir()
    save_result(make_run([make_cell("H128-MHA"), make_cell("H128-MQA")]), path)
    return path


def test_report_into_a_folder_another_report_is_writing_exits_two_naming_its_pid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result, out = result_file(tmp_path), tmp_path / "reports"
    with held_elsewhere(out, "report") as holder:
        assert main(["report", str(result), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"attnbench report: error: {out}: another attnbench report is writing here (pid {holder.pid}); "
        "run again once it has finished\n"
    )
    assert not (out / "cpu-test-2c").exists()


def test_report_once_the_other_has_finished_writes_its_files(tmp_path: Path) -> None:
    result, out = result_file(tmp_path), tmp_path / "reports"
    with held_elsewhere(out, "report"):
        pass
    assert main(["report", str(result), "--out", str(out)]) == 0
    assert (out / "cpu-test-2c" / "REPORT.md").is_file()
    assert not (out / ".attnbench-report.lock").exists()


def test_the_console_script_refuses_a_held_report_folder_in_one_line(tmp_path: Path) -> None:
    result, out = result_file(tmp_path), tmp_path / "reports"
    with held_elsewhere(out, "report") as holder:
        proc = subprocess.run(
            [sys.executable, "-m", "harness", "report", str(result), "--out", str(out)],
            capture_output=True,
            text=True,
            check=False,
        )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"attnbench report: error: {out}: another attnbench report is writing here (pid {holder.pid}); "
        "run again once it has finished"
    ]
    assert not (out / "cpu-test-2c").exists()


def test_a_report_file_that_cannot_be_written_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result, out = result_file(tmp_path), tmp_path / "reports"
    (out / "cpu-test-2c" / "REPORT.md").mkdir(parents=True)  # a folder where the report goes
    assert main(["report", str(result), "--out", str(out)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"attnbench report: error: {out / 'cpu-test-2c' / 'REPORT.md'}: cannot write: ")
    assert not (out / ".attnbench-report.lock").exists()


def test_a_link_planted_at_the_lock_path_is_refused_and_its_target_left_alone(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    folder = tmp_path / "reports"
    folder.mkdir()
    (folder / ".attnbench-report.lock").symlink_to(precious)
    with pytest.raises(UserError, match=r"cannot write here"):
        folder_lock(folder, "report").acquire()
    assert precious.read_text() == "keep me\n"
