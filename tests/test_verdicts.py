"""Machine-readable verdicts: compare --json and --format github, on the golden files and interleaved runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_results import make_cell, make_run

from harness import cli, compare
from harness.ab import AbRun, Plan
from harness.cli import ab_cmd
from harness.compare.github import MARKER, MAX_BODY_CHARS, render_github
from harness.compare.verdicts import SCHEMA, verdicts
from harness.results.schema import CellResult, Pairing, RunResult
from harness.results.store import save_result
from harness.run.derive import pooled_summary

DATA = Path(__file__).parent / "data" / "compare"
REPO = Path(__file__).resolve().parents[1]


def golden_json(capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    code = cli.main(["compare", str(DATA / "base.json"), str(DATA / "head.json"), *flags])
    return code, json.loads(capsys.readouterr().out)


def metric(data: dict, cell: str, name: str) -> dict:  # type: ignore[type-arg]
    (found,) = (m for c in data["cells"] if c["cell"] == cell for m in c["metrics"] if m["metric"] == name)
    return found  # type: ignore[no-any-return]


def test_json_verdicts_agree_with_the_markdown_table_metric_by_metric(capsys: pytest.CaptureFixture[str]) -> None:
    code, data = golden_json(capsys, "--json")
    sides = compare.load_sides(str(DATA / "base.json"), str(DATA / "head.json"))
    comparison = compare.compare_sides(*sides)
    expected = {(cell.label, c.metric): c.verdict for cell in comparison.cells for c in cell.changes}
    found = {(cell["cell"], m["metric"]): m["verdict"] for cell in data["cells"] for m in cell["metrics"]}
    assert found == expected
    assert (code, data["exit_code"], data["verdict"], data["schema"]) == (1, 1, "regression", SCHEMA)
    assert data["counts"]["regressions"] == comparison.regressions == 5


def test_json_ratio_is_head_over_base_and_a_latency_interval_comes_from_both_medians_intervals(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, data = golden_json(capsys, "--format", "json")
    decode = metric(data, "H128-MHA b8 ctx2048 bfloat16 sdpa", "decode_latency_s")
    base, head = (compare.load_sides(str(DATA / "base.json"), str(DATA / "head.json"))[i].results[0] for i in (0, 1))
    base_summary = base.cells[0].metrics.decode_latency_s  # type: ignore[union-attr]
    head_summary = head.cells[0].metrics.decode_latency_s  # type: ignore[union-attr]
    assert base_summary is not None and head_summary is not None
    assert decode["ratio"] == pytest.approx(head_summary.median / base_summary.median)
    assert decode["interval"] == pytest.approx(
        [head_summary.ci_low / base_summary.ci_high, head_summary.ci_high / base_summary.ci_low]
    )
    assert decode["interval_confidence"] == pytest.approx(0.9025)
    assert decode["reason"].startswith("+9.4% beyond median:5%; Mann-Whitney U p = ")


def test_json_bandwidth_interval_is_its_latencys_inverted_and_memory_has_none(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, data = golden_json(capsys, "--json")
    decode = metric(data, "H128-MHA b8 ctx2048 bfloat16 sdpa", "decode_latency_s")
    bandwidth = metric(data, "H128-MHA b8 ctx2048 bfloat16 sdpa", "bandwidth_gbps")
    assert bandwidth["interval"] == pytest.approx([1 / decode["interval"][1], 1 / decode["interval"][0]])
    memory = metric(data, "H128-MQA b8 ctx2048 bfloat16 sdpa", "peak_memory_bytes")
    assert (memory["interval"], memory["verdict"]) == (None, "regression")
    assert memory["reason"] == "+5.0% beyond peak_memory_bytes:1%"


def test_json_lists_cells_not_compared_with_their_reason(capsys: pytest.CaptureFixture[str]) -> None:
    _, data = golden_json(capsys, "--json")
    skipped = {c["cell"]: (c["verdict"], c["reason"]) for c in data["cells"] if not c["compared"]}
    assert skipped == {
        "H128-GQA4 b16 ctx4096 bfloat16 sdpa": ("regression", "oom at head"),
        "H64-MQA b8 ctx2048 bfloat16 sdpa": ("not compared", "only at head"),
    }


def test_json_output_file_holds_what_was_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "verdicts.json"
    _, data = golden_json(capsys, "--json", "--output", str(out))
    assert json.loads(out.read_text(encoding="utf-8")) == data


def _paired_run(role: str, medians: list[float]) -> RunResult:
    summary = None
    for median in medians:
        summary, _ = pooled_summary(summary, {"seconds": [median * 0.99, median, median * 1.01]})
    cell: CellResult = make_cell()
    assert cell.metrics is not None and summary is not None
    cell = cell.model_copy(update={"metrics": cell.metrics.model_copy(update={"decode_latency_s": summary})})
    pairing = Pairing(
        session="s1", role=role, revision=role, commit=None, dirty=False, partner_revision="x", partner_commit=None,
        rounds=len(medians), confidence=0.95,
    )  # fmt: skip
    return make_run([cell]).model_copy(update={"pairing": pairing})


def test_an_interleaved_latency_carries_its_signed_rank_interval_and_says_it_excludes_one() -> None:
    drift = [1.0, 1.2, 0.8, 1.1, 0.9, 1.15]
    base = compare.Side("b", "file", (_paired_run("base", [0.010 * d for d in drift]),))
    head = compare.Side("h", "file", (_paired_run("head", [0.0105 * d for d in drift]),))
    comparison = compare.compare_sides(base, head, compare.parse_thresholds(defaults=compare.PAIRED_FAIL_ON))
    data = verdicts(comparison)
    decode = metric(data, comparison.cells[0].label, "decode_latency_s")
    change = next(c for c in comparison.cells[0].changes if c.metric == "decode_latency_s")
    assert change.paired is not None
    assert decode["interval"] == pytest.approx([change.paired.ci_low, change.paired.ci_high])
    assert (decode["interval_kind"], decode["interval_confidence"], decode["rounds"]) == ("paired signed-rank", 0.95, 6)
    assert decode["verdict"] == "regression"
    assert decode["reason"].startswith("round ratio ×1.050 beyond median:2%; round ratios' interval [")
    assert decode["reason"].endswith("] excludes 1")
    assert data["paired"] is True and data["verdict"] == "regression"


def test_the_github_body_starts_with_its_marker_and_verdict_and_lists_only_what_changed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["compare", str(DATA / "base.json"), str(DATA / "head.json"), "--format", "github"]) == 1
    body = capsys.readouterr().out
    lines = body.splitlines()
    assert lines[0] == MARKER
    assert lines[1].startswith(":x: **REGRESSION**: 5 regressions, 2 improvements")
    summary_part = body.split("<details>")[0]
    changed = [line for line in summary_part.splitlines() if line.startswith("| H")]
    assert len(changed) == 7  # 4 metrics regressed, 2 improved, and the cell that ran out of memory at head
    assert all("| ~ " not in line for line in changed)
    assert "| attention_latency_s" in body.split("<details>")[1]  # the unchanged rows are folded, not lost


def test_a_github_body_too_long_for_a_comment_is_cut_and_says_so() -> None:
    cells = [make_cell(f"H128-GQA{g}", b, c) for g in (1, 2, 4, 8, 16) for b in range(1, 40) for c in (512, 1024)]
    run = make_run(cells)
    comparison = compare.compare_sides(compare.Side("b", "file", (run,)), compare.Side("h", "file", (run,)))
    body = render_github(comparison)
    assert len(body) <= MAX_BODY_CHARS
    assert "cut at 60000 characters" in body
    assert body.splitlines()[1].startswith(":white_check_mark: **OK**")


@pytest.mark.parametrize("command", [["compare", "a", "b"], ["ab", "HEAD", "."]])
def test_compare_and_ab_take_json_and_github_formats(command: list[str]) -> None:
    parser = cli.build_parser()
    assert parser.parse_args([*command, "--json"]).format == "json"
    assert parser.parse_args([*command, "--format", "github"]).format == "github"
    assert parser.parse_args(command).format == "markdown"


def test_ab_prints_the_json_verdicts_of_what_it_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The measuring is ab's own (tests/test_ab_paths.py runs it whole); here it hands over two paired files.
    drift = [1.0, 1.2, 0.8, 1.1, 0.9, 1.15]
    paths = {role: tmp_path / f"{role}.json" for role in ("base", "head")}
    save_result(_paired_run("base", [0.010 * d for d in drift]), paths["base"])
    save_result(_paired_run("head", [0.0105 * d for d in drift]), paths["head"])
    measured = AbRun(paths["base"], paths["head"], Plan(rounds=6, confidence=0.95, comparisons=1), rounds_done={"c": 6})
    monkeypatch.setattr(ab_cmd, "interleave", lambda *args, **kwargs: measured)
    monkeypatch.chdir(tmp_path)
    code = cli.main(["ab", "HEAD", ".", str(REPO / "scenarios" / "default.toml"), "--quiet", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert (code, data["exit_code"], data["verdict"], data["paired"]) == (1, 1, "regression", True)
    decode = metric(data, data["cells"][0]["cell"], "decode_latency_s")
    assert decode["interval_kind"] == "paired signed-rank" and decode["interval"][0] > 1.0
