"""Interleaved comparisons: two revisions driven round by round, both files marked, paired verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_results import make_cell, make_run

from harness import compare
from harness.ab import Plan, _goes_on, scenario_in
from harness.cli import main
from harness.compare.comparison import is_paired
from harness.errors import UserError
from harness.results.schema import CellResult, HostLoad, Pairing, RunResult, Stability
from harness.results.store import load_result
from harness.revisions import Revision
from harness.run.derive import pooled_summary
from harness.stats.paired import family_confidence

REPO = Path(__file__).resolve().parents[1]
TINY = """
name = "tiny-ab"
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
[measure]
metrics = ["decode"]
warmup_s = 0.01
min_time_s = 0.01
min_samples = 5
max_samples = 10
"""


@pytest.mark.slow
def test_ab_measures_both_revisions_round_by_round_and_marks_both_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path / "cache"))
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    out = tmp_path / "ab"
    code = main(["ab", "HEAD", ".", str(scenario), "--rounds", "2", "--out", str(out), "--quiet", "--seed", "1"])
    assert code in (0, 1)  # whatever the noise decides; the plumbing is what is checked here
    (base_file,) = (out / "base").rglob("*.json")
    (head_file,) = (out / "head").rglob("*.json")
    base, head = load_result(base_file), load_result(head_file)
    assert base.pairing is not None and head.pairing is not None
    assert base.pairing.session == head.pairing.session
    assert (base.pairing.role, head.pairing.role) == ("base", "head")
    assert (base.pairing.revision, head.pairing.revision) == ("HEAD", ".")
    label = "H16-MQA b1 ctx32 float32 sdpa"
    assert base.pairing.orders[label] == head.pairing.orders[label]
    assert sorted(base.pairing.orders[label].split()) in (["AB", "AB"], ["AB", "BA"], ["BA", "BA"])
    for result in (base, head):
        (cell,) = result.cells
        assert cell.rounds_done == 2 and cell.metrics is not None and cell.metrics.decode_latency_s is not None
        assert len(cell.metrics.decode_latency_s.process_medians) == 2
    # the side measured first calibrated the calls per sample, the other was handed them
    reps = set()
    for result in (base, head):
        metrics = result.cells[0].metrics
        assert metrics is not None and metrics.decode_latency_s is not None
        reps.add(metrics.decode_latency_s.inner_reps)
    assert len(reps) == 1 and None not in reps
    assert "interleaved comparison" in capsys.readouterr().out


def test_ab_refuses_an_unknown_revision_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ab", "no-such-revision", ".", "--out", str(tmp_path), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == "attnbench ab: error: no-such-revision: no such git revision"


def test_ab_needs_two_rounds_to_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ab", "HEAD", ".", "--rounds", "1", "--out", str(tmp_path), "--quiet"]) == 2
    assert "--rounds: needs at least 2 rounds to pair, got 1" in capsys.readouterr().err


def test_a_scenario_missing_at_a_revision_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    older = Revision("v0", tmp_path, "0" * 40, dirty=False)  # a tree without the scenario
    with pytest.raises(UserError) as error:
        scenario_in(older, "scenarios/default.toml")
    assert str(error.value) == "scenarios/default.toml: does not exist at revision v0"
    assert scenario_in(Revision(".", REPO, None, dirty=True), "scenarios/default.toml") == str(
        REPO / "scenarios/default.toml"
    )


def _side(role: str, medians: list[float]) -> RunResult:
    """A run whose one cell's decode latency has one round per median (3 samples each, within ±1%)."""
    summary = None
    for median in medians:
        summary, _ = pooled_summary(summary, {"seconds": [median * 0.99, median, median * 1.01]})
    cell: CellResult = make_cell()
    assert cell.metrics is not None and summary is not None
    cell = cell.model_copy(update={"metrics": cell.metrics.model_copy(update={"decode_latency_s": summary})})
    pairing = Pairing(
        session="s1", role=role, revision=role, commit=None, dirty=False, partner_revision="x", partner_commit=None,
        rounds=len(medians),
    )  # fmt: skip
    return make_run([cell]).model_copy(update={"pairing": pairing})


def _decode_verdict(base: RunResult, head: RunResult) -> tuple[str, compare.MetricChange]:
    comparison = compare.compare_sides(
        compare.Side("b", "file", (base,)), compare.Side("h", "file", (head,)), compare.parse_thresholds(
            defaults=compare.PAIRED_FAIL_ON
        )
    )  # fmt: skip
    change = next(c for c in comparison.cells[0].changes if c.metric == "decode_latency_s")
    return change.verdict, change


def test_a_slowdown_in_every_paired_round_is_a_regression_though_the_machine_drifted_more() -> None:
    # The machine drifts by ±20% between rounds, far more than the 5% slowdown: unpaired, the rounds'
    # medians overlap; paired, every round's ratio is 1.05.
    drift = [1.0, 1.2, 0.8, 1.1, 0.9, 1.15]
    base = _side("base", [0.010 * d for d in drift])
    head = _side("head", [0.0105 * d for d in drift])
    assert is_paired(compare.Side("b", "file", (base,)), compare.Side("h", "file", (head,)))
    verdict, change = _decode_verdict(base, head)
    assert verdict == "regression"
    assert change.paired is not None and change.paired.ratio == pytest.approx(1.05)


def test_paired_rounds_that_agree_within_noise_are_not_a_change() -> None:
    base = _side("base", [0.010, 0.0102, 0.0099, 0.0101, 0.0100, 0.0098])
    head = _side("head", [0.0101, 0.0100, 0.0100, 0.0102, 0.0099, 0.0099])
    assert _decode_verdict(base, head)[0] == "~"


def test_files_of_different_sessions_are_compared_unpaired() -> None:
    base = _side("base", [0.010] * 6)
    head = _side("head", [0.010] * 6)
    assert head.pairing is not None
    other = head.model_copy(update={"pairing": head.pairing.model_copy(update={"session": "s2"})})
    assert not is_paired(compare.Side("b", "file", (base,)), compare.Side("h", "file", (other,)))


def _with_host_load(run: RunResult, load: HostLoad) -> RunResult:
    cell = run.cells[0].model_copy(update={"host_load": [load]})
    return run.model_copy(update={"cells": [cell]})


def _marked_unstable(run: RunResult, reason: str) -> RunResult:
    cell = run.cells[0].model_copy(update={"stability": Stability(unstable=True, reasons=[reason])})
    return run.model_copy(update={"cells": [cell]})


def test_rounds_that_drift_apart_do_not_keep_a_paired_cell_from_its_verdict() -> None:
    # each side alone disagrees between its rounds (the drift); the pairing cancels that
    drift = [1.0, 1.2, 0.8, 1.1, 0.9, 1.15]
    reason = "decode_latency_s: rounds 2 and 3 disagree by 50% (medians 12 and 8 ms, 95% intervals disjoint)"
    base = _marked_unstable(_side("base", [0.010 * d for d in drift]), reason)
    head = _marked_unstable(_side("head", [0.0105 * d for d in drift]), reason)
    assert _decode_verdict(base, head)[0] == "regression"


def test_a_host_busy_while_a_paired_cell_was_timed_makes_it_unstable() -> None:
    base = _side("base", [0.010] * 6)
    head = _with_host_load(_side("head", [0.0105] * 6), HostLoad(wall_s=2.0, other_cpu_s=1.9, steal_s=0.0, cores=2))
    comparison = compare.compare_sides(compare.Side("b", "file", (base,)), compare.Side("h", "file", (head,)))
    assert comparison.cells == () and comparison.exit_code == 0
    (skipped,) = comparison.skipped
    assert skipped.verdict == "unstable" and skipped.reason.startswith("head: host busy while timing (round 1)")


def test_a_comparison_planned_for_many_latencies_needs_every_one_of_its_rounds() -> None:
    # 6 rounds reach 95%, not the 99.975% a comparison of 80 latencies asks of each: no change yet
    confidence = family_confidence(80)
    base, head = _side("base", [0.010] * 6), _side("head", [0.0105] * 6)
    sides = [run.model_copy(update={"pairing": run.pairing.model_copy(update={"confidence": confidence})})
             for run in (base, head) if run.pairing is not None]  # fmt: skip
    verdict, change = _decode_verdict(*sides)
    assert verdict == "~" and change.paired is not None and not change.paired.covered
    thirteen = [_side(role, [m] * 13) for role, m in (("base", 0.010), ("head", 0.0105))]
    sides = [run.model_copy(update={"pairing": run.pairing.model_copy(update={"confidence": confidence})})
             for run in thirteen if run.pairing is not None]  # fmt: skip
    assert _decode_verdict(*sides)[0] == "regression"


def test_the_plan_of_the_default_scenario_asks_at_most_29_rounds_for_eighty_latencies() -> None:
    plan = Plan.for_scenario(str(REPO / "scenarios/default.toml"), None)
    assert (plan.comparisons, plan.rounds, plan.confidence) == (80, 29, pytest.approx(0.99975))
    assert Plan.for_scenario(str(REPO / "scenarios/default.toml"), 20).rounds == 20


def test_a_cell_stops_once_no_latency_has_a_fair_chance_to_show_a_change() -> None:
    plan = Plan(rounds=13, confidence=family_confidence(80), comparisons=80)
    base = {"decode_latency_s": [0.010, 0.010], "attention_latency_s": [0.002, 0.002]}
    still = {"decode_latency_s": [0.0101, 0.0099], "attention_latency_s": [0.0021, 0.0022]}
    both_sides = {"decode_latency_s": [0.0101, 0.0099], "attention_latency_s": [0.0021, 0.0019]}
    assert plan.goes_on({"base": base, "head": still})  # attention was slower in both rounds
    assert not plan.goes_on({"base": base, "head": both_sides})
    ok = {"status": "ok", "medians": base}
    assert not _goes_on(plan, {"base": ok, "head": {"status": "ok", "medians": both_sides}})
    assert not _goes_on(plan, {"base": ok, "head": {"status": "oom", "medians": {}}})  # failed: no more rounds
    assert _goes_on(plan, {"base": ok, "head": {"status": "ok"}})  # a server that reports no medians: every round


def test_a_cell_whose_ratios_disagree_stops_once_a_change_has_little_chance_left() -> None:
    plan = Plan(rounds=29, confidence=family_confidence(80), comparisons=80)
    base = {"decode_latency_s": [0.010] * 4}
    # within a percent or two either way: a predicted chance of 0.07 that the interval excludes 1 by round 29
    unchanged = {"decode_latency_s": [0.0102, 0.0097, 0.0101, 0.0099]}
    assert not plan.goes_on({"base": base, "head": unchanged})
    # three of four rounds 5-10% slower: 0.67
    assert plan.goes_on({"base": base, "head": {"decode_latency_s": [0.011, 0.0099, 0.011, 0.0105]}})
    assert plan.goes_on({"base": base, "head": {"decode_latency_s": [0.0101] * 4}})  # all slower so far


def test_rounds_too_few_for_the_confidence_are_all_measured() -> None:
    unchanged = {"base": {"decode_latency_s": [0.010]}, "head": {"decode_latency_s": [0.010]}}  # ratio 1
    assert not Plan(rounds=8, confidence=family_confidence(2), comparisons=2).goes_on(unchanged)
    assert Plan(rounds=2, confidence=family_confidence(2), comparisons=2).goes_on(unchanged)  # 8 needed at 99%


def test_the_confidence_is_printed_with_the_digits_it_has() -> None:
    assert compare.percent(family_confidence(80)) == "99.975%"
    assert compare.percent(0.95) == "95%"
