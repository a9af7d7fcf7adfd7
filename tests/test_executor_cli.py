"""The command line of executors: what a missing optional extra or a misplaced option says."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_executor_ray_without_ray_installed_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    code = main(["run", str(REPO / "scenarios" / "default.toml"), "--executor", "ray", "--out", str(tmp_path / "o")])
    assert code == 2 and not (tmp_path / "o").exists()
    assert capsys.readouterr().err == (
        "attnbench run: error: --executor ray: needs Ray, which is not installed: pip install -e '.[ray]'\n"
    )


@pytest.mark.parametrize("option", ["--address", "--gpu-type"])
def test_a_ray_option_without_executor_ray_is_refused(
    option: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["run", str(REPO / "scenarios" / "default.toml"), option, "x", "--out", str(tmp_path / "o")])
    assert code == 2 and not (tmp_path / "o").exists()
    assert capsys.readouterr().err == f"attnbench run: error: {option}: only with --executor ray\n"


def test_the_progress_bar_counts_finished_rounds_per_host(capsys: pytest.CaptureFixture[str]) -> None:
    from helpers_results import make_cell

    from harness.cli.run_cmd import _Bar
    from harness.results.schema import Placement

    def placed(host: str) -> Placement:
        return Placement(
            executor="ray", node_id=host, host=host, device="cuda", pid=7,
            started_utc="2026-11-24T06:15:00Z", finished_utc="2026-11-24T06:15:01Z",
        )  # fmt: skip

    bar = _Bar(quiet=False)
    bar.start(3, 0)
    for host in ("node-b", "node-a", "node-b"):
        bar.cell_finished(None, make_cell().model_copy(update={"placement": [placed(host)]}))  # type: ignore[arg-type]
    assert bar.per_host == {"node-a": 1, "node-b": 2}
    bar.close()
    assert "node-a: 1, node-b: 2" in capsys.readouterr().err
