"""A backend installed from outside the repository, through a real ``attnbench.backends`` entry point: it is
listed, runs in a scenario beside the built-ins in one report, and one that returns wrong numbers fails its
reference check in the result, the report and the run's warning line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.results.store import load_result

# A torch-free module declaring the specs, and the kernels beside it, as a plugin package lays them out.
SPECS = """
from harness.backends import BackendSpec

TOY = BackendSpec(name="toy", kernel="toy_kernels.kernels:attend", summary="a test kernel")
WRONG = BackendSpec(name="toy_wrong", kernel="toy_kernels.kernels:attend_wrong", summary="returns wrong numbers")
"""
KERNELS = """
import torch


def attend(q, k, v, *, start_pos, scale, k_scale=None, v_scale=None, lengths=None):
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # [B, n_heads, S, width]
    v = v.repeat_interleave(group, dim=1)
    scores = (q.float() @ k.float().transpose(-2, -1)) * scale  # [B, n_heads, 1, S]
    return (torch.softmax(scores, dim=-1) @ v.float()).to(q.dtype)


def attend_wrong(q, k, v, **kwargs):
    return attend(q, k, v, **kwargs) * 1.5
"""
ENTRY_POINTS = """
[attnbench.backends]
toy = toy_kernels:TOY
toy_wrong = toy_kernels:WRONG
"""
SCENARIO = """
name = "plugins"
[model]
d_model = 64
n_layers = 2
d_ff = 128
vocab_size = 97
dtype = "float32"
[[variant]]
name = "H16-GQA2"
[sweep]
batch_size = [2]
context_len = [32]
backend = ["eager", "toy", "toy_wrong", "toy_kernels.kernels:attend"]
[measure]
metrics = ["attention"]
warmup_s = 0.01
min_time_s = 0.01
min_samples = 5
max_samples = 10
cold = false
"""


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder on which the plugin is installed as pip would: its package and a dist-info with entry points."""
    site = tmp_path_factory.mktemp("site")
    package = site / "toy_kernels"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(SPECS))
    (package / "kernels.py").write_text(textwrap.dedent(KERNELS))
    info = site / "toy_kernels-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-kernels\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return site


def attnbench(args: list[str], plugin_path: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(plugin_path), env.get("PYTHONPATH", "")])
    env["ATTNBENCH_CACHE_DIR"] = str(cache)
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, env=env)


def test_attnbench_backends_lists_an_installed_plugin_with_its_distribution(plugin_path: Path, tmp_path: Path) -> None:
    proc = attnbench(["backends", "--json"], plugin_path, tmp_path)
    assert proc.returncode == 0, proc.stderr
    listed = {b["name"]: b for b in json.loads(proc.stdout)["backends"]}
    assert listed["toy"]["origin"] == "toy-kernels"
    assert listed["toy_wrong"]["kernel"] == "toy_kernels.kernels:attend_wrong"
    assert listed["eager"]["origin"] == "built-in"


@pytest.fixture(scope="module")
def plugin_run(plugin_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("run")
    scenario = folder / "plugins.toml"
    scenario.write_text(SCENARIO)
    cache = tmp_path_factory.getbasetemp() / "attnbench-cache"
    args = ["run", str(scenario), "--device", "cpu", "--out", str(folder / "out"), "--quiet"]
    run = attnbench(args, plugin_path, cache)
    assert run.returncode == 0, run.stderr
    report = attnbench(["report", str(folder / "out")], plugin_path, cache)
    assert report.returncode == 0, report.stderr
    return folder / "out", run.stderr


def test_plugins_run_beside_the_built_ins_in_one_result_and_report(plugin_run: tuple[Path, str]) -> None:
    out, _ = plugin_run
    (path,) = out.glob("*/*.json")
    result = load_result(path)
    assert {c.backend: c.status for c in result.cells} == {
        "eager": "ok",
        "toy": "ok",
        "toy_wrong": "ok",
        "toy_kernels.kernels:attend": "ok",
    }
    report = next(out.glob("*/REPORT.md")).read_text()
    rows = [line for line in report.splitlines() if line.startswith("|")]
    for backend in ("eager", "toy", "toy_wrong", "toy_kernels.kernels:attend"):
        assert any(f" {backend} " in row for row in rows), backend


def test_a_plugin_with_right_numbers_passes_its_reference_check(plugin_run: tuple[Path, str]) -> None:
    out, _ = plugin_run
    result = load_result(next(out.glob("*/*.json")))
    for cell in result.cells:
        if cell.backend != "toy_wrong":
            check = next(c for c in cell.checks if c.name == "output_matches_reference")
            assert check.passed, (cell.backend, check.detail)


def test_a_plugin_with_wrong_numbers_fails_its_reference_check_in_result_report_and_warning(
    plugin_run: tuple[Path, str],
) -> None:
    out, stderr = plugin_run
    result = load_result(next(out.glob("*/*.json")))
    (wrong,) = [c for c in result.cells if c.backend == "toy_wrong"]
    assert "output_matches_reference" in wrong.checks_failed
    report = next(out.glob("*/REPORT.md")).read_text()
    assert any("toy_wrong" in line and "output_matches_reference" in line for line in report.splitlines())
    assert "warning: output_matches_reference failed in 1 of 4 cells" in stderr


def test_an_entry_point_that_cannot_be_loaded_is_listed_with_the_reason_and_exits_1(tmp_path: Path) -> None:
    site = tmp_path / "site"
    info = site / "broken_kernels-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-kernels\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[attnbench.backends]\nbroken = no_such_kernels_module:SPEC\n")
    proc = attnbench(["backends"], site, tmp_path / "cache")
    assert proc.returncode == 1
    assert "not loaded: entry point 'broken' (no_such_kernels_module:SPEC): ModuleNotFoundError" in proc.stdout
    assert "| eager " in proc.stdout
