"""--executor slurm through submitit's local cluster: the array of shards, each shard's run, the merge.

submitit's local cluster runs the array tasks as processes on this machine, sharing its CPUs (and
GPUs): it checks the plumbing, not the isolation Slurm gives each task.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_tiny import TINY

from harness.cli import main
from harness.results.schema import Shard
from harness.results.store import load_result, result_files


def test_a_slurm_array_measures_every_shard_and_merges_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("submitit")
    monkeypatch.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path / "cache"))
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    args = ["run", str(scenario), "--executor", "slurm", "--shards", "2", "--slurm-cluster", "local"]
    args += ["--slurm-folder", str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--device", "cpu", "--quick"]
    assert main(args) == 0
    (path,) = result_files(tmp_path / "o")
    merged = load_result(path)
    assert sorted((p.shard for p in merged.merged_from), key=lambda s: s.index if s else 0) == [
        Shard(index=1, count=2),
        Shard(index=2, count=2),
    ]
    assert len(merged.cells) == 4 and len({c.key for c in merged.cells}) == 4
    assert [c.status for c in merged.cells] == ["ok"] * 4
    assert len(result_files(tmp_path / "s" / "parts")) == 2  # each array task's own file is kept


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        ((), "--shards: --executor slurm needs --shards N (N at least 1): one array task per shard"),
        (("--shards", "2", "--shard", "1/2"), "--shard: --executor slurm runs every shard itself"),
    ],
)
def test_slurm_options_that_cannot_work_are_one_line_errors(
    extra: tuple[str, ...], line: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    assert main(["run", str(scenario), "--executor", "slurm", *extra, "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"attnbench run: error: {line}\n"
    assert not (tmp_path / "o").exists()
