"""A results folder that cannot take the file, for real: checked before anything is measured; and a
write that fails mid-run (a full disk, here a file-size limit the kernel enforces) stops the run with
the last good file in place, which ``--resume`` then completes."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers_faults import assert_no_traceback, finish, result_paths, run_args, start, write_scenario

from harness.errors import UserError
from harness.results.store import check_writable, load_result

pytestmark = pytest.mark.slow


@pytest.fixture
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "attnbench-cache"


def read_only(folder: Path) -> tuple[str, ...]:
    """How to run a command that finds ``folder`` read-only: its mode, for a user other than root (root
    writes into any folder, whatever its mode); for root, a read-only bind mount of it in a mount
    namespace of the command's own, where the system allows one."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return ()
    unshare = ("unshare", "--mount", "--propagation", "private")
    if shutil.which("unshare") is None or subprocess.run([*unshare, "true"], check=False).returncode != 0:
        pytest.skip("running as root without mount namespaces: no folder is read-only to this user")
    return (*unshare, "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(folder))


def test_a_read_only_results_folder_is_refused_in_one_line_before_measuring(tmp_path: Path, cache: Path):
    scenario, out = write_scenario(tmp_path), tmp_path / "out"
    out.mkdir()
    returncode, _, stderr = finish(start(run_args(scenario, out), cache, prefix=read_only(out)))
    out.chmod(0o755)
    assert returncode == 2, stderr
    assert_no_traceback(stderr)
    (line,) = stderr.strip().splitlines()
    assert line.startswith(f"attnbench run: error: {out}: cannot write here: ")
    assert "Read-only file system" in line or "Permission denied" in line
    assert list(out.iterdir()) == []


def test_a_folder_without_room_for_the_result_is_refused_naming_what_is_free(tmp_path: Path):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(UserError, match=r"MiB free; this run needs about") as caught:
        check_writable(tmp_path, 2 * free + 2**30)
    assert caught.value.source == str(tmp_path)
    check_writable(tmp_path, 1)  # and room enough is no error


def test_a_save_that_fails_mid_run_keeps_the_last_good_file_and_resume_completes_it(tmp_path: Path, cache: Path):
    scenario = write_scenario(tmp_path, warmup_s=0.2)
    # a first run, to learn how large the file is before its first cell and after it
    returncode, _, stderr = finish(start(run_args(scenario, tmp_path / "sizes"), cache))
    assert returncode == 0, stderr
    full = load_result(result_paths(tmp_path / "sizes")[0])
    empty = full.model_copy(update={"cells": [], "finished_utc": None})
    one = full.model_copy(update={"cells": full.cells[:1], "finished_utc": None})
    size_empty, size_one = (len(r.model_dump_json(indent=1)) + 1 for r in (empty, one))
    limit = (size_empty + size_one) // 2  # the opened file fits; the file with its first cell does not

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # past it, a write fails with EFBIG

    out = tmp_path / "out"
    returncode, _, stderr = finish(start(run_args(scenario, out), cache, preexec_fn=limit_file_size))
    assert returncode == 1, stderr
    assert_no_traceback(stderr)
    (line,) = stderr.strip().splitlines()
    assert "could not save the result (File too large)" in line and "--resume" in line
    (path,) = result_paths(out)
    kept = load_result(path)  # the last good file: whole, valid, unfinished
    assert kept.cells == [] and kept.finished_utc is None
    assert [p.name for p in path.parent.iterdir() if p.name != path.name] == []  # no temporary, no lock left

    returncode, _, stderr = finish(start(run_args(scenario, out, "--resume"), cache))
    assert returncode == 0, stderr
    done = load_result(path)
    assert done.finished_utc is not None and [c.status for c in done.cells] == ["ok", "ok"]
