"""Source trees of revisions for interleaved comparisons: checked out, checked, and cleaned up."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.revisions import ENTRY_POINT, checkout


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository whose first commit predates the entry point and whose second has it."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    git(root, "config", "user.email", "t@example.com")
    git(root, "config", "user.name", "t")
    (root / "README").write_text("old\n")
    git(root, "add", ".")
    git(root, "commit", "-qm", "old")
    git(root, "tag", "old")
    (root / ENTRY_POINT).parent.mkdir(parents=True)
    (root / ENTRY_POINT).write_text("# the server\n")
    git(root, "add", ".")
    git(root, "commit", "-qm", "new")
    return root


def test_a_revision_is_checked_out_into_a_temporary_worktree_removed_afterwards(repo: Path) -> None:
    with checkout("HEAD", repo) as revision:
        assert (revision.root / ENTRY_POINT).is_file() and revision.root != repo
        assert revision.commit == git(repo, "rev-parse", "HEAD") and not revision.dirty
        tree = revision.root
    assert not tree.exists()
    assert git(repo, "worktree", "list").count("\n") == 0  # only the main worktree is left


def test_the_working_tree_is_a_revision_with_its_uncommitted_changes(repo: Path) -> None:
    (repo / ENTRY_POINT).write_text("# changed, not committed\n")
    with checkout(".", repo) as revision:
        assert revision.root == repo and revision.dirty
        assert "with uncommitted changes" in revision.label


def test_an_unknown_revision_is_a_one_line_error(repo: Path) -> None:
    with pytest.raises(UserError) as error, checkout("no-such-branch", repo):
        pass
    assert str(error.value) == "no-such-branch: no such git revision"


def test_a_revision_without_the_entry_point_is_refused_and_cleaned_up(repo: Path) -> None:
    with (
        pytest.raises(UserError, match=f"has no {ENTRY_POINT}: it predates interleaved comparisons"),
        checkout("old", repo),
    ):
        pass
    assert git(repo, "worktree", "list").count("\n") == 0


def test_outside_a_repository_revisions_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not inside a git repository"), checkout("HEAD", tmp_path):
        pass
