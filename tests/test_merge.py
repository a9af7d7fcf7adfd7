"""attnbench merge: result files of one scenario measured in parts, joined into one file per target."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_results import make_cell, make_run
from helpers_tiny import tiny_scenario

from harness.cli import main
from harness.results.merge import merge_results, missing_shards
from harness.results.schema import RunResult, Shard
from harness.results.store import load_result, result_files, save_result

ACCOUNTING = ("variant", "batch_size", "context_len", "dtype", "backend", "head_dim", "n_heads", "n_kv_heads")
ACCOUNTING += ("n_kv_layers", "kv_layers", "params_total", "kv_bytes_per_token", "kv_bytes_per_sequence", "status")


def part(index: int, count: int, cells: list, **kwargs) -> RunResult:
    run = make_run(cells, started_utc=f"2026-01-05T10:0{index}:00Z", **kwargs)
    return run.model_copy(update={"shard": Shard(index=index, count=count)})


def write(folder: Path, result: RunResult, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_result(result, folder / name)
    return folder / name


def test_two_shards_merge_into_one_file_with_every_cell_and_its_parts() -> None:
    one = part(1, 2, [make_cell("H128-MHA"), make_cell("H128-MQA")])
    two = part(2, 2, [make_cell("H128-GQA4")])
    (merged,) = merge_results([(Path("b.json"), two), (Path("a.json"), one)]).values()
    assert [c.variant for c in merged.cells] == ["H128-MHA", "H128-MQA", "H128-GQA4"]  # shard order
    assert [(p.file, p.shard, p.cells) for p in merged.merged_from] == [
        ("a.json", Shard(index=1, count=2), 2),
        ("b.json", Shard(index=2, count=2), 1),
    ]
    assert merged.shard is None and merged.started_utc == one.started_utc and merged.finished_utc == two.finished_utc
    assert all(c.stability is not None for c in merged.cells)  # assessed over the merged cells


def test_files_of_different_targets_stay_apart() -> None:
    a = part(1, 2, [make_cell("H128-MHA")], target="cpu-a-2c")
    b = part(2, 2, [make_cell("H128-MQA")], target="cpu-b-8c")
    merged = merge_results([(Path("a.json"), a), (Path("b.json"), b)])
    assert sorted(merged) == ["cpu-a-2c", "cpu-b-8c"]
    assert [c.variant for c in merged["cpu-b-8c"].cells] == ["H128-MQA"]


def test_missing_shards_are_named() -> None:
    assert missing_shards([part(1, 3, []), part(3, 3, [])]) == ["2/3"]
    assert missing_shards([part(1, 2, []), part(2, 2, [])]) == []


@pytest.fixture
def merge_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """Write ``results`` under tmp_path/in and merge that folder: exit code, stderr, output folder."""

    def merge(*results: RunResult, extra: tuple[str, ...] = ()) -> tuple[int, str, Path]:
        for index, result in enumerate(results):
            write(tmp_path / "in", result, f"2026010{index + 1}T100000Z_part{index}.json")
        out = tmp_path / "merged"
        capsys.readouterr()
        code = main(["merge", str(tmp_path / "in"), "--out", str(out), *extra])
        return code, capsys.readouterr().err, out

    return merge


def test_results_of_different_scenario_content_are_refused_in_one_line_writing_nothing(
    tmp_path: Path, merge_cli
) -> None:
    other = part(2, 2, [make_cell("H128-MQA")])
    other.scenario = other.scenario.model_copy(update={"sha256": "f" * 64})
    code, err, out = merge_cli(part(1, 2, [make_cell("H128-MHA")]), other)
    assert code == 2 and not out.exists()
    assert err == (
        f"attnbench merge: error: {tmp_path / 'in' / '20260102T100000Z_part1.json'}: scenario.sha256: scenario "
        "'decode-small' (ffffffffffff) is not the content of 20260101T100000Z_part0.json's (000000000000): "
        "results of different scenarios do not merge\n"
    )


def test_results_of_different_revisions_merge_only_when_allowed(tmp_path: Path, merge_cli) -> None:
    one = part(1, 2, [make_cell("H128-MHA")])
    two = part(2, 2, [make_cell("H128-MQA")], commit="fedcba9876543210fedcba9876543210fedcba98")
    code, err, out = merge_cli(one, two)
    assert code == 2 and not out.exists() and err.count("\n") == 1
    assert err.endswith(
        "git.commit: measured at commit fedcba9, 20260101T100000Z_part0.json at 0123456; "
        "give --allow-revisions to merge results of different revisions\n"
    )
    code, err, out = merge_cli(extra=("--allow-revisions",))
    assert code == 0, err
    (path,) = result_files(out)
    assert [p.commit for p in load_result(path).merged_from] == [one.git.commit, two.git.commit]


def test_a_cell_in_two_parts_is_refused_naming_both(tmp_path: Path, merge_cli) -> None:
    code, err, out = merge_cli(part(1, 2, [make_cell("H128-MHA")]), part(2, 2, [make_cell("H128-MHA")]))
    assert code == 2 and not out.exists() and "Traceback" not in err
    assert err.endswith("cells[0]: cell H128-MHA b8 ctx2048 bfloat16 sdpa is also in 20260101T100000Z_part0.json\n")


def test_an_unfinished_part_is_refused(tmp_path: Path, merge_cli) -> None:
    unfinished = part(2, 2, [make_cell("H128-MQA")]).model_copy(update={"finished_utc": None})
    code, err, _ = merge_cli(part(1, 2, [make_cell("H128-MHA")]), unfinished)
    assert code == 2 and err.endswith("finished_utc: unfinished: continue it with attnbench run --resume first\n")


def test_a_broken_result_file_is_one_line_naming_file_and_field(tmp_path: Path, merge_cli) -> None:
    path = write(tmp_path / "in", part(1, 1, [make_cell("H128-MHA")]), "20260101T100000Z_x.json")
    data = json.loads(path.read_text())
    data["cells"][0]["batch_size"] = 0
    path.write_text(json.dumps(data))
    code, err, out = merge_cli()
    assert code == 2 and not out.exists() and err.count("\n") == 1
    assert err.startswith(f"attnbench merge: error: {path}: cells[0].batch_size: ")


def test_merging_again_never_overwrites_the_first_merged_file(tmp_path: Path, merge_cli) -> None:
    code, _, out = merge_cli(part(1, 2, [make_cell("H128-MHA")]), part(2, 2, [make_cell("H128-MQA")]))
    assert code == 0
    (first,) = result_files(out)
    before = first.read_bytes()
    code, _, out = merge_cli()
    assert code == 0
    assert sorted(p.name for p in result_files(out)) == sorted([first.name, first.name.replace("_merged", "_merged-2")])
    assert first.read_bytes() == before


# --- end to end: two shards of a tiny scenario and their merge give the cells of a whole run -----------

TINY = tiny_scenario(("H16-MHA", "H16-MQA-CLA2", "H16-GQA2"))


def test_two_shards_and_their_merge_give_the_cells_of_a_whole_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path / "cache"))
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    whole, parts, merged = tmp_path / "whole", tmp_path / "parts", tmp_path / "merged"
    assert main(["run", str(scenario), "--device", "cpu", "--quick", "--quiet", "--out", str(whole)]) == 0
    for k in ("1/2", "2/2"):
        assert (
            main(["run", str(scenario), "--device", "cpu", "--quick", "--quiet", "--out", str(parts), "--shard", k])
            == 0
        )
    shard_files = result_files(parts)
    assert sorted(load_result(p).shard.label for p in shard_files) == ["1/2", "2/2"]  # type: ignore[union-attr]
    assert all(load_result(p).cells for p in shard_files)  # both shards measured something
    assert main(["merge", str(parts), "--out", str(merged)]) == 0
    (reference,), (joined,) = (
        [load_result(p) for p in result_files(whole)],
        [load_result(p) for p in result_files(merged)],
    )
    assert joined.target == reference.target and joined.scenario.sha256 == reference.scenario.sha256

    def accounting(result: RunResult) -> list[tuple]:
        return sorted(tuple(getattr(c, name) for name in ACCOUNTING) for c in result.cells)

    assert accounting(joined) == accounting(reference)
    assert all(len(c.placement) == 1 and c.placement[0].executor == "local" for c in joined.cells)


def test_the_console_script_reports_a_missing_input_in_one_line_without_a_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "merge", str(missing), "--out", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and not (tmp_path / "m").exists()
    assert proc.stderr == f"attnbench merge: error: {missing}: no such file or folder\n"
