"""Which commit a result records when the tree it ran from has no .git (a copy sent to a GPU machine)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_tiny import tiny_scenario

from harness.cli import main
from harness.errors import UserError
from harness.run import runfiles
from harness.run.runfiles import COMMIT_ENV, COMMIT_FILE, git_info

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def copied_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory outside any git checkout, no commit variable, no commit file at the project root."""
    tree = tmp_path / "tree"
    tree.mkdir()
    monkeypatch.chdir(tree)
    monkeypatch.delenv(COMMIT_ENV, raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.setattr(runfiles, "PROJECT_ROOT", tmp_path / "project")
    return tree


def test_a_tree_without_git_takes_its_commit_from_the_environment(
    copied_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(COMMIT_ENV, SHA)
    info = git_info()
    assert (info.commit, info.short, info.dirty) == (SHA, SHA[:7], None)


def test_a_tree_without_git_takes_its_commit_from_the_file_the_script_writes(copied_tree: Path) -> None:
    (copied_tree / COMMIT_FILE).write_text(f"{SHA} dirty\n")
    info = git_info()
    assert (info.commit, info.dirty) == (SHA, True)


def test_a_tree_without_git_and_without_a_recorded_commit_is_refused(copied_tree: Path) -> None:
    with pytest.raises(UserError, match=COMMIT_ENV):
        git_info()


def test_a_malformed_recorded_commit_is_refused(copied_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(COMMIT_ENV, "not-a-sha")
    with pytest.raises(UserError, match="is not '<commit sha>"):
        git_info()


def test_a_run_from_a_tree_without_a_commit_exits_2_with_one_line_and_writes_no_result(
    copied_tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = copied_tree / "tiny.toml"
    scenario.write_text(tiny_scenario())
    out = copied_tree / "results"
    assert main(["run", str(scenario), "--device", "cpu", "--quick", "--quiet", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and COMMIT_ENV in error and "Traceback" not in error
    assert not list(out.rglob("*.json"))
