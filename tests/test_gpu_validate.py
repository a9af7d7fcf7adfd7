"""benchmarks/gpu_validate.sh without a GPU: its dry run goes through every step within the budget, its
caps fit the budget, it names the commit of a tree sent without .git, and its CUDA tests leave out the
FlexAttention matrix (a compile per case on a machine without a compile cache)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_validate.sh"
STEPS = ("machine", "install", "doctor", "run gpu-quick", "run kernels-gpu-quick", "cuda tests")


def script(
    *args: str, cwd_script: Path = SCRIPT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(
        ["bash", str(cwd_script), *args], capture_output=True, text=True, env=environment, timeout=300, check=False
    )


def copied_script(tree: Path) -> Path:
    (tree / "benchmarks").mkdir(parents=True)
    return Path(shutil.copy(SCRIPT, tree / "benchmarks" / "gpu_validate.sh"))


@pytest.mark.slow
def test_the_dry_run_goes_through_every_step_within_the_budget(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = script("--dry-run", env={"OUT": str(out)})
    assert done.returncode == 0, done.stdout + done.stderr
    log = (out / "log.txt").read_text()
    for title in STEPS:
        assert re.search(rf"^=== {title}: exit 0 after \d+s$", log, re.MULTILINE), title
    finished = re.search(r"=== done in (\d+)s of (\d+)s, 0 step\(s\) failed", log)
    assert finished is not None and int(finished[1]) <= int(finished[2]) == 300
    assert (out / "doctor.txt").read_text().startswith("start\t")
    with tarfile.open(out / "results.tgz") as packed:
        assert "results" in packed.getnames()
    assert not (out / "results").exists()


@pytest.mark.slow
def test_serving_adds_the_serving_scenarios_gpu_form_with_its_cap_on_top_of_the_budget(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = script("--dry-run", env={"OUT": str(out), "SERVING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    log = (out / "log.txt").read_text()
    for title in (*STEPS, "run serving-gpu"):
        assert re.search(rf"^=== {title}: exit 0 after \d+s$", log, re.MULTILINE), title
    assert "=== run serving-gpu (cap 70s)" in log
    finished = re.search(r"=== done in (\d+)s of (\d+)s, 0 step\(s\) failed", log)
    assert finished is not None and int(finished[2]) == 375


def test_caps_that_do_not_fit_the_budget_stop_the_script_before_any_step(tmp_path: Path) -> None:
    done = script("--dry-run", env={"OUT": str(tmp_path / "out"), "BUDGET_S": "200"})
    assert done.returncode == 2
    assert "over BUDGET_S=200s" in done.stderr and not (tmp_path / "out").exists()


def test_a_tree_without_git_or_a_commit_file_stops_at_once(tmp_path: Path) -> None:
    copy = copied_script(tmp_path / "tree")
    done = script(
        "--dry-run", cwd_script=copy, env={"OUT": str(tmp_path / "out"), "GIT_CEILING_DIRECTORIES": str(tmp_path)}
    )
    assert done.returncode == 2 and "no commit" in done.stderr


def test_prepare_records_the_commit_and_needs_the_pydantic_wheels(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    copy = copied_script(tree)
    git = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for command in (["init", "-q"], ["add", "benchmarks"], ["commit", "-q", "-m", "script"]):
        subprocess.run(["git", *command], cwd=tree, check=True, env={**os.environ, **git})
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True, check=True).stdout
    refused = script("--prepare", cwd_script=copy)
    assert refused.returncode == 2 and "no pydantic wheel in .whl/" in refused.stderr
    (tree / ".whl").mkdir()
    (tree / ".whl" / "pydantic-2.14.4-py3-none-any.whl").touch()
    (tree / ".whl" / "pydantic_core-2.50.5-cp312-cp312-manylinux2014_x86_64.whl").touch()
    done = script("--prepare", cwd_script=copy)
    assert done.returncode == 0, done.stderr
    assert (tree / ".attnbench-commit").read_text() == f"{sha.strip()} clean\n"


def test_the_scripts_cuda_tests_leave_out_the_flex_matrix() -> None:
    selection = re.search(r'^CUDA_TESTS="([^"]+)"$', SCRIPT.read_text(), re.MULTILINE)
    assert selection is not None
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", selection[1], "-p", "no:cacheprovider",
         "tests/test_attention.py"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    ).stdout.splitlines()  # fmt: skip
    cases = [line for line in collected if "::" in line]
    assert any("on_cuda[sdpa" in case for case in cases)
    assert not [case for case in cases if "[flex" in case]
