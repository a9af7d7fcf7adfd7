"""``attnbench ab`` reads and writes where its caller is: each revision's runner works in a checked-out
tree of its own (removed at the end), so every path given, or defaulted, is resolved before one starts;
and a place it cannot write is refused before anything is measured."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main

REPO = Path(__file__).resolve().parents[1]
# One cell, timed as briefly as a measurement allows: the paths are under test, not the numbers.
TINY = """name = "tiny-ab-paths"
[model]
d_model = 64
n_layers = 2
d_ff = 128
vocab_size = 97
dtype = "float32"
[[variant]]
name = "H16-MQA"
[sweep]
batch_size = [1]
context_len = [32]
backend = ["sdpa"]
[measure]
metrics = ["decode"]
cold = false
warmup_s = 0.01
min_time_s = 0.01
min_samples = 5
max_samples = 10
"""


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)


def fresh_clone(tmp_path: Path) -> Path:
    """A clone of a small repository holding this working tree's ``harness/`` (uncommitted changes and new
    files included) and ``tiny.toml``: what a user gets from ``git clone``, with nothing but tracked files."""
    origin = tmp_path / "origin"
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "harness"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    for name in listed:
        if (REPO / name).is_file():
            (origin / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, origin / name)
    (origin / "tiny.toml").write_text(TINY)
    _git(origin, "init", "--quiet")
    _git(origin, "add", ".")
    _git(origin, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m", "tiny")
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "--quiet", str(origin), str(clone))
    return clone


@pytest.mark.slow
def test_ab_in_a_fresh_clone_without_out_writes_both_results_and_the_table_where_it_was_run(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    clone = fresh_clone(tmp_path)
    env = dict(os.environ, ATTNBENCH_CACHE_DIR=str(tmp_path_factory.getbasetemp() / "attnbench-cache"))
    env.pop("PYTHONPATH", None)  # ``python -c`` in the clone imports the clone's code
    attnbench = [sys.executable, "-c", "import sys; from harness.cli import main; sys.exit(main(sys.argv[1:]))"]
    command = [*attnbench, "ab", "HEAD", ".", "tiny.toml", "--quick", "--rounds", "2"]
    done = subprocess.run(
        [*command, "--seed", "1", "--quiet", "--output", "table.md"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr  # whatever the noise decides: the paths are checked here
    (base,) = (clone / "results-ab" / "base").glob("*/*.json")
    (head,) = (clone / "results-ab" / "head").glob("*/*.json")
    assert f"base: {base}" in done.stderr and f"head: {head}" in done.stderr
    assert "## attnbench compare" in done.stdout
    assert (clone / "table.md").read_text() == done.stdout


def test_ab_refuses_a_results_folder_that_is_a_file_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # not a repository: had ab started, it would say so instead
    Path("taken").write_text("not a folder\n")
    assert main(["ab", "HEAD", ".", "--out", "taken", "--quiet"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"attnbench ab: error: {tmp_path / 'taken' / 'base'}: cannot write here: ")
    assert Path("taken").read_text() == "not a folder\n"


def test_ab_refuses_an_output_that_is_a_folder_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("table").mkdir()
    assert main(["ab", "HEAD", ".", "--out", "ab", "--output", "table", "--quiet"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"attnbench ab: error: {tmp_path / 'table'}: is a folder; give a file name"
