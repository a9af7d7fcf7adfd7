"""Every git call goes through one wrapper with one time limit; a missing or hung git is one line."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from harness import git
from harness.errors import UserError


def fake_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "git"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_a_git_that_does_not_answer_ends_at_the_time_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_git(tmp_path, monkeypatch, "exec sleep 30")
    monkeypatch.setattr(git, "TIMEOUT_S", 0.5)
    start = time.monotonic()
    with pytest.raises(UserError, match=r"git rev-parse --show-toplevel did not finish within 0\.5 s"):
        git.repo_root(tmp_path)
    assert time.monotonic() - start < 10


def test_no_git_at_all_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(UserError, match="git is not installed"):
        git.resolve_commit("HEAD", tmp_path)


def test_output_that_is_not_utf8_is_kept_as_bytes_and_read_with_replacement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_git(tmp_path, monkeypatch, r"printf 'a\377b'")
    out = git.run_git(["show", "x"], tmp_path)
    assert out.ok and out.stdout_bytes == b"a\xffb" and out.stdout == "a\ufffdb"


def test_the_commit_of_a_fresh_repository_is_resolved(tmp_path: Path) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, env=env)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert git.resolve_commit("HEAD", tmp_path) == head.stdout.strip()
    assert git.repo_root(tmp_path) == tmp_path.resolve()
    assert git.resolve_commit("-h", tmp_path) is None
