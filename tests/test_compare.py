"""Comparing results: thresholds, verdicts under noise, matching, targets, git revisions and the CLI."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from helpers_results import DEFAULT_SCENARIO, DEFAULT_TARGET, lognormal_samples, make_cell, make_metrics, make_run

from harness import cli, compare
from harness.errors import UserError
from harness.results import gitrev
from harness.results.schema import CellResult, Check, RunResult, Summary
from harness.results.store import load_result, save_result
from harness.results.summary import summarize

DATA = Path(__file__).parent / "data" / "compare"


def attnbench(argv: list[str]) -> int:
    """The ``attnbench`` command line, in-process."""
    return cli.main(argv)


def side(*results: RunResult, spec: str = "side") -> compare.Side:
    return compare.Side(spec, "file", results)


def run_of(*cells: CellResult, target: str = DEFAULT_TARGET, scenario: str = DEFAULT_SCENARIO) -> RunResult:
    return make_run(list(cells), target=target, scenario=scenario)


def verdicts(comparison: compare.Comparison) -> dict[str, str]:
    """metric -> verdict for a comparison of a single cell."""
    (cell,) = comparison.cells
    return {change.metric: change.verdict for change in cell.changes}


def compare_decode(base_samples: list[float], head_samples: list[float]) -> str:
    base = side(run_of(make_cell(decode_samples=base_samples)))
    head = side(run_of(make_cell(decode_samples=head_samples)))
    return verdicts(compare.compare_sides(base, head))["decode_latency_s"]


# --- thresholds ---------------------------------------------------------------------------------


def test_parse_threshold_reads_a_percentage_as_a_fraction_of_base() -> None:
    metric, threshold = compare.parse_threshold("median:5%")
    assert (metric, threshold.amount, threshold.relative) == ("median", 0.05, True)


def test_parse_threshold_reads_a_plain_number_as_an_absolute_amount() -> None:
    metric, threshold = compare.parse_threshold("max_batch:0")
    assert (metric, threshold.amount, threshold.relative) == ("max_batch", 0.0, False)


def test_parse_thresholds_keeps_the_defaults_for_metrics_not_given() -> None:
    thresholds = compare.parse_thresholds(["median:3%"])
    assert thresholds["median"].amount == 0.03
    assert thresholds["peak_memory_bytes"].spec == "peak_memory_bytes:1%"
    assert set(thresholds) == {"median", "peak_memory_bytes", "max_batch", "kv_cache_bytes", "bandwidth_gbps"}


def test_parse_thresholds_accepts_comma_separated_specs() -> None:
    thresholds = compare.parse_thresholds(["median:3%,max_batch:2"])
    assert (thresholds["median"].amount, thresholds["max_batch"].amount) == (0.03, 2.0)


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("median5%", "METRIC:VALUE"),
        ("latency:5%", "unknown metric"),
        ("median:five", "not a number"),
        ("median:-1%", ">= 0"),
        ("median:", "METRIC:VALUE"),
    ],
)
def test_parse_threshold_rejects_a_bad_spec_naming_the_flag(spec: str, reason: str) -> None:
    with pytest.raises(UserError, match=reason) as info:
        compare.parse_threshold(spec)
    assert str(info.value).startswith("--fail-on: ")


def test_threshold_is_exceeded_only_strictly_beyond_its_amount() -> None:
    _, threshold = compare.parse_threshold("median:5%")
    assert not threshold.exceeded_by(100.0, 105.0)
    assert threshold.exceeded_by(100.0, 105.5)


def test_a_threshold_for_one_latency_metric_overrides_median() -> None:
    base = side(run_of(make_cell(decode_samples=lognormal_samples(0.010, 0.005, 20, seed=1))))
    head = side(run_of(make_cell(decode_samples=lognormal_samples(0.0108, 0.005, 20, seed=2))))
    loose = compare.parse_thresholds(["decode_latency_s:10%"])
    assert verdicts(compare.compare_sides(base, head, loose))["decode_latency_s"] == "~"
    assert verdicts(compare.compare_sides(base, head))["decode_latency_s"] == "regression"


# --- latency verdicts under noise ---------------------------------------------------------------


@pytest.mark.parametrize("n", [20, 30, 40])
@pytest.mark.parametrize("seed", range(8))
def test_two_runs_of_the_same_code_on_one_machine_show_no_change(seed: int, n: int) -> None:
    base = lognormal_samples(0.010, 0.03, n, seed=2 * seed)
    head = lognormal_samples(0.010, 0.03, n, seed=2 * seed + 1)
    assert compare_decode(base, head) == "~"


@pytest.mark.parametrize("n", [20, 40])
@pytest.mark.parametrize("seed", range(4))
def test_a_real_ten_percent_slowdown_under_noise_is_a_regression(seed: int, n: int) -> None:
    base = lognormal_samples(0.010, 0.03, n, seed=100 + seed)
    head = lognormal_samples(0.011, 0.03, n, seed=200 + seed)
    assert compare_decode(base, head) == "regression"


@pytest.mark.parametrize("seed", range(4))
def test_a_real_ten_percent_speedup_under_noise_is_an_improvement(seed: int) -> None:
    base = lognormal_samples(0.010, 0.03, 30, seed=300 + seed)
    head = lognormal_samples(0.009, 0.03, 30, seed=400 + seed)
    assert compare_decode(base, head) == "improvement"


@pytest.mark.parametrize("seed", range(4))
def test_a_one_percent_change_under_noise_is_not_a_change(seed: int) -> None:
    base = lognormal_samples(0.010, 0.03, 40, seed=500 + seed)
    head = lognormal_samples(0.0101, 0.03, 40, seed=600 + seed)
    assert compare_decode(base, head) == "~"


def test_a_significant_change_below_the_threshold_is_not_a_change() -> None:
    base = lognormal_samples(0.010, 0.002, 40, seed=7)
    head = lognormal_samples(0.0102, 0.002, 40, seed=8)
    comparison = compare.compare_sides(
        side(run_of(make_cell(decode_samples=base))), side(run_of(make_cell(decode_samples=head)))
    )
    (change,) = [c for c in comparison.cells[0].changes if c.metric == "decode_latency_s"]
    assert change.p_value is not None and change.p_value < 0.01
    assert change.verdict == "~"


def test_a_large_change_on_too_few_samples_to_be_significant_is_not_a_change() -> None:
    assert compare_decode([0.010, 0.0101], [0.020, 0.0201]) == "~"


def test_the_p_value_is_mann_whitney_on_the_raw_samples() -> None:
    comparison = compare.compare_sides(
        side(run_of(make_cell(decode_samples=[1.0, 2.0, 3.0]))), side(run_of(make_cell(decode_samples=[4.0, 5.0, 6.0])))
    )
    (change,) = [c for c in comparison.cells[0].changes if c.metric == "decode_latency_s"]
    assert change.p_value == pytest.approx(0.1)
    assert (change.base, change.head) == (2.0, 5.0)


def test_cold_latencies_are_compared_only_when_both_sides_have_them() -> None:
    cold = lognormal_samples(0.012, 0.03, 20, seed=3)
    with_cold = side(run_of(make_cell(decode_cold_samples=cold)))
    without_cold = side(run_of(make_cell()))
    assert "decode_latency_cold_s" in verdicts(compare.compare_sides(with_cold, with_cold))
    assert "decode_latency_cold_s" not in verdicts(compare.compare_sides(with_cold, without_cold))


# --- metrics without samples --------------------------------------------------------------------


def test_peak_memory_growth_beyond_one_percent_is_a_regression() -> None:
    base, head = (
        side(run_of(make_cell(peak_memory_bytes=1_000_000))),
        side(run_of(make_cell(peak_memory_bytes=1_011_000))),
    )
    assert verdicts(compare.compare_sides(base, head))["peak_memory_bytes"] == "regression"


def test_peak_memory_growth_within_one_percent_is_not_a_change() -> None:
    base, head = (
        side(run_of(make_cell(peak_memory_bytes=1_000_000))),
        side(run_of(make_cell(peak_memory_bytes=1_009_000))),
    )
    assert verdicts(compare.compare_sides(base, head))["peak_memory_bytes"] == "~"


def test_a_drop_of_the_measured_max_batch_by_one_is_a_regression() -> None:
    base, head = side(run_of(make_cell(max_batch_measured=64))), side(run_of(make_cell(max_batch_measured=63)))
    assert verdicts(compare.compare_sides(base, head))["max_batch"] == "regression"


def test_a_rise_of_the_measured_max_batch_is_an_improvement() -> None:
    base, head = side(run_of(make_cell(max_batch_measured=64))), side(run_of(make_cell(max_batch_measured=72)))
    assert verdicts(compare.compare_sides(base, head))["max_batch"] == "improvement"


def test_kv_cache_growth_by_a_single_byte_is_a_regression() -> None:
    base, head = side(run_of(make_cell(kv_cache_bytes=4096))), side(run_of(make_cell(kv_cache_bytes=4097)))
    assert verdicts(compare.compare_sides(base, head))["kv_cache_bytes"] == "regression"


def test_a_bandwidth_drop_beyond_five_percent_is_a_regression() -> None:
    base, head = side(run_of(make_cell(bandwidth_gbps=100.0))), side(run_of(make_cell(bandwidth_gbps=94.0)))
    assert verdicts(compare.compare_sides(base, head))["bandwidth_gbps"] == "regression"


def test_a_metric_missing_on_one_side_is_not_compared() -> None:
    base, head = side(run_of(make_cell(max_batch_measured=None))), side(run_of(make_cell(max_batch_measured=8)))
    assert "max_batch" not in verdicts(compare.compare_sides(base, head))


# --- matching cells and targets -----------------------------------------------------------------


def test_cells_on_one_side_only_are_listed_as_missing_on_the_other() -> None:
    base = side(run_of(make_cell("H128-MHA"), make_cell("H128-MQA")))
    head = side(run_of(make_cell("H128-MQA"), make_cell("H64-MQA")))
    comparison = compare.compare_sides(base, head)
    assert [c.label for c in comparison.cells] == ["H128-MQA b8 ctx2048 bfloat16 sdpa"]
    assert [(s.label.split()[0], s.base_status, s.head_status) for s in comparison.skipped] == [
        ("H128-MHA", "ok", None),
        ("H64-MQA", None, "ok"),
    ]
    assert comparison.exit_code == 0


def test_cells_match_on_scenario_as_well_as_coordinates() -> None:
    base = side(run_of(make_cell(), scenario="short"))
    head = side(run_of(make_cell(), scenario="long"))
    comparison = compare.compare_sides(base, head)
    assert comparison.cells == ()
    assert [s.scenario for s in comparison.skipped] == ["short", "long"]


def test_a_cell_that_ran_at_base_and_ran_out_of_memory_at_head_is_a_regression() -> None:
    comparison = compare.compare_sides(side(run_of(make_cell())), side(run_of(make_cell(status="oom"))))
    assert [(s.base_status, s.head_status, s.is_regression) for s in comparison.skipped] == [("ok", "oom", True)]
    assert comparison.exit_code == 1


def test_a_cell_that_failed_on_both_sides_is_listed_but_not_a_regression() -> None:
    comparison = compare.compare_sides(side(run_of(make_cell(status="error"))), side(run_of(make_cell(status="error"))))
    assert [(s.base_status, s.head_status) for s in comparison.skipped] == [("error", "error")]
    assert comparison.exit_code == 0


def test_results_from_different_targets_are_refused() -> None:
    base, head = side(run_of(make_cell(), target="cpu-a")), side(run_of(make_cell(), target="cpu-b"))
    with pytest.raises(UserError, match=r"different hardware targets.*--allow-cross-target"):
        compare.compare_sides(base, head)


def test_results_from_different_targets_are_compared_when_allowed_with_a_note() -> None:
    base, head = side(run_of(make_cell(), target="cpu-a")), side(run_of(make_cell(), target="cpu-b"))
    comparison = compare.compare_sides(base, head, allow_cross_target=True)
    assert len(comparison.cells) == 1
    assert "targets differ" in compare.render_markdown(comparison)


def test_identical_results_have_no_regression_and_every_metric_unchanged() -> None:
    run = run_of(make_cell(attention_samples=lognormal_samples(0.002, seed=4)))
    comparison = compare.compare_sides(side(run), side(run))
    assert set(verdicts(comparison).values()) == {"~"}
    assert comparison.exit_code == 0


def test_a_cell_twice_in_one_scenario_is_refused() -> None:
    with pytest.raises(UserError, match="appears twice"):
        compare.compare_sides(side(run_of(make_cell(), make_cell())), side(run_of(make_cell())))


# --- rendering ----------------------------------------------------------------------------------


def test_only_changed_hides_unchanged_rows_but_keeps_the_verdict_on_the_first_line() -> None:
    base = side(run_of(make_cell(peak_memory_bytes=1_000_000)))
    head = side(run_of(make_cell(peak_memory_bytes=2_000_000)))
    text = compare.render_markdown(compare.compare_sides(base, head), only_changed=True)
    assert "| peak_memory_bytes" in text
    assert "decode_latency_s" not in text
    assert text.splitlines()[0] == "**REGRESSION**: 1 regression, 0 improvements, 4 unchanged (~) in 1 compared cell."


def test_latencies_are_shown_with_four_significant_digits_and_a_unit() -> None:
    assert compare.format_value("decode_latency_s", 0.011) == "11.00 ms"
    assert compare.format_value("attention_latency_s", 2.5e-5) == "25.00 us"
    assert compare.format_value("bandwidth_gbps", 4012.3) == "4012 GB/s"


# --- sides: folders and git revisions -----------------------------------------------------------


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=attnbench", "-c", "user.email=attnbench@localhost", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository: BASE (HEAD~1) commits base.json, HEAD adds the newer head.json for the same target."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    folder = tmp_path / "results" / "cpu-test-2c"
    folder.mkdir(parents=True)
    _git(tmp_path, "init", "-q")
    shutil.copy(DATA / "base.json", folder / "20260105T100000Z_a1b2c3d.json")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "base")
    shutil.copy(DATA / "head.json", folder / "20260106T100000Z_f0e1d2c.json")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "head")
    return tmp_path


def test_committed_results_are_the_newest_per_scenario_at_the_revision(repo: Path) -> None:
    (at_base,) = gitrev.committed_results("HEAD~1", "cpu-test-2c", cwd=repo)
    (at_head,) = gitrev.committed_results("HEAD", "cpu-test-2c", cwd=repo)
    assert (at_base.git.short, at_head.git.short) == ("a1b2c3d", "f0e1d2c")


def test_committed_targets_are_the_folders_holding_results(repo: Path) -> None:
    assert gitrev.committed_targets("HEAD", cwd=repo) == ["cpu-test-2c"]


def test_a_revision_that_does_not_exist_is_a_user_error(repo: Path) -> None:
    with pytest.raises(UserError, match="no such git revision"):
        gitrev.committed_result("no-such-branch", "cpu-test-2c", "decode-small", cwd=repo)


def test_a_revision_without_results_for_the_target_is_a_user_error(repo: Path) -> None:
    with pytest.raises(UserError, match="holds no committed results under results/nvidia-h100-80gb-hbm3/"):
        gitrev.committed_result("HEAD", "nvidia-h100-80gb-hbm3", "decode-small", cwd=repo)


def test_a_revision_side_takes_the_target_and_scenario_of_the_file_side(repo: Path) -> None:
    base, head = compare.load_sides("HEAD~1", str(DATA / "head.json"), cwd=repo)
    assert (base.kind, base.target, base.commits) == ("revision", "cpu-test-2c", ["a1b2c3d"])
    assert head.kind == "file"


def test_two_revision_sides_use_the_one_target_committed_at_both(
    repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(repo)
    assert attnbench(["compare", "HEAD~1", "HEAD"]) == 1
    assert "- base: `HEAD~1` (revision; target cpu-test-2c; commit a1b2c3d; decode-small)" in capsys.readouterr().out


def test_a_folder_side_reads_its_newest_result_per_scenario(repo: Path) -> None:
    _, head = compare.load_sides(str(DATA / "base.json"), str(repo / "results" / "cpu-test-2c"))
    assert (head.kind, head.commits) == ("folder", ["f0e1d2c"])


def test_a_folder_with_several_targets_is_refused(tmp_path: Path) -> None:
    for target in ("cpu-a", "cpu-b"):
        save_result(make_run([make_cell()], target=target), tmp_path / target / "20260101T000000Z_0123456.json")
    with pytest.raises(UserError, match="several targets"):
        compare.load_sides(str(DATA / "base.json"), str(tmp_path))


# --- the command line on the golden files -------------------------------------------------------


def test_cli_prints_the_golden_table_and_exits_one_on_regressions(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(DATA)
    assert attnbench(["compare", "base.json", "head.json"]) == 1
    assert capsys.readouterr().out == (DATA / "base_vs_head.md").read_text(encoding="utf-8")


def test_cli_golden_table_flags_slowdown_memory_max_batch_and_oom(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(DATA)
    attnbench(["compare", "base.json", "head.json"])
    flagged: set[tuple[str, str]] = set()
    verdict_column = 0
    for line in capsys.readouterr().out.splitlines():
        if not line.startswith("|"):
            continue
        row = [c.strip() for c in line.split("|")[1:-1]]
        if "verdict" in row:  # a table's header: where its verdict column is
            verdict_column = row.index("verdict")
        elif row[verdict_column] in ("regression", "improvement"):
            flagged.add((row[1], row[verdict_column]))
    assert flagged == {
        ("decode_latency_s", "regression"),
        ("bandwidth_gbps", "regression"),
        ("peak_memory_bytes", "regression"),
        ("decode_latency_s", "improvement"),
        ("max_batch", "regression"),
        ("bandwidth_gbps", "improvement"),
        ("H128-GQA4 b16 ctx4096 bfloat16 sdpa", "regression"),  # not compared: out of memory at head
    }


def test_cli_exits_zero_on_identical_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert attnbench(["compare", str(DATA / "base.json"), str(DATA / "base.json")]) == 0
    first_line = capsys.readouterr().out.splitlines()[0]
    assert first_line == "**OK**: 0 regressions, 0 improvements, 21 unchanged (~) in 4 compared cells."


def test_cli_refuses_mismatched_targets_with_exit_two(capsys: pytest.CaptureFixture[str]) -> None:
    assert attnbench(["compare", str(DATA / "base.json"), str(DATA / "base_other_target.json")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("attnbench compare: error: results come from different hardware targets")


def test_cli_compares_mismatched_targets_when_allowed(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compare", str(DATA / "base.json"), str(DATA / "base_other_target.json"), "--allow-cross-target"]
    assert attnbench(argv) == 0
    assert "- note: targets differ (cpu-test-2c vs nvidia-h100-80gb-hbm3)" in capsys.readouterr().out


def test_cli_rejects_a_bad_fail_on_spec_with_exit_two_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert attnbench(["compare", str(DATA / "base.json"), str(DATA / "head.json"), "--fail-on", "median=5%"]) == 2
    assert capsys.readouterr().err.startswith("attnbench compare: error: --fail-on: 'median=5%' is not METRIC:VALUE")


def test_cli_rejects_an_alpha_outside_zero_to_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert attnbench(["compare", str(DATA / "base.json"), str(DATA / "head.json"), "--alpha", "1.5"]) == 2
    assert "--alpha: must lie between 0 and 1" in capsys.readouterr().err


def test_cli_rejects_an_argument_that_is_neither_a_path_nor_a_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert attnbench(["compare", str(DATA / "base.json"), "no-such-thing"]) == 2
    assert "no-such-thing" in capsys.readouterr().err


def test_cli_loosened_gates_leave_only_the_out_of_memory_cell(capsys: pytest.CaptureFixture[str]) -> None:
    loose = ["--fail-on", "median:20%", "--fail-on", "peak_memory_bytes:10%,max_batch:10,bandwidth_gbps:20%"]
    assert attnbench(["compare", str(DATA / "base.json"), str(DATA / "head.json"), *loose]) == 1
    assert "**REGRESSION**: 1 regression, 0 improvements" in capsys.readouterr().out


def test_cli_writes_the_same_markdown_to_the_output_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out" / "compare.md"
    attnbench(["compare", str(DATA / "base.json"), str(DATA / "head.json"), "--output", str(output)])
    assert output.read_text(encoding="utf-8") == capsys.readouterr().out


def test_golden_result_files_are_valid_results() -> None:
    for name in ("base.json", "head.json", "base_other_target.json"):
        result = load_result(DATA / name)
        for cell in result.cells:
            if cell.metrics and cell.metrics.decode_latency_s:
                assert cell.metrics.decode_latency_s == summarize(cell.metrics.decode_latency_s.samples)


def test_cli_help_lists_the_default_gates(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        attnbench(["compare", "--help"])
    assert info.value.code == 0
    assert "median:5% peak_memory_bytes:1%" in " ".join(capsys.readouterr().out.split())


# --- run-to-run noise from measurement rounds ---------------------------------------------------


def rounds_summary(process_medians: list[float], n: int = 20, seed: int = 0) -> Summary:
    """Pooled samples of several worker processes, each tight around its own median."""
    samples: list[float] = []
    for i, median in enumerate(process_medians):
        samples += lognormal_samples(median, sigma=0.01, n=n, seed=seed + i)
    return summarize(samples).model_copy(update={"process_medians": process_medians})


def test_run_to_run_noise_is_the_largest_relative_spread_of_process_medians() -> None:
    a = rounds_summary([0.010, 0.011])
    b = rounds_summary([0.020, 0.020, 0.021])
    assert compare.run_to_run_noise(a, b) == pytest.approx(0.001 / 0.0105)
    assert compare.run_to_run_noise(rounds_summary([0.010])) is None


def test_a_change_inside_the_run_to_run_noise_is_not_a_regression() -> None:
    # each side's rounds disagree by 20%; head is 10% slower, and its samples alone say "significant"
    base = rounds_summary([0.010, 0.012], seed=0)
    head = rounds_summary([0.011, 0.0132], seed=10)
    change = compare.latency_change("decode_latency_s", base, head, compare.Threshold(0.05, True, "median:5%"), 0.01)
    assert change.p_value is not None and change.p_value < 0.01
    assert change.verdict == "~"


def test_a_change_beyond_the_run_to_run_noise_is_a_regression() -> None:
    base = rounds_summary([0.0100, 0.0101], seed=0)
    head = rounds_summary([0.0110, 0.0111], seed=10)
    change = compare.latency_change("decode_latency_s", base, head, compare.Threshold(0.05, True, "median:5%"), 0.01)
    assert change.noise == pytest.approx(0.0001 / 0.01005)  # the noisier side, base
    assert change.verdict == "regression"


def test_a_cell_whose_own_rounds_agree_still_needs_to_beat_the_runs_typical_noise() -> None:
    # the cell's two rounds agree to 1%, but across the run cells typically spread 5%: a 10% change
    # is inside 3 x 5% and is not called a regression; a 20% change is
    base = rounds_summary([0.0100, 0.0101], seed=0)
    head = rounds_summary([0.0110, 0.0111], seed=10)
    threshold = compare.Threshold(0.05, True, "median:5%")
    assert compare.latency_change("decode_latency_s", base, head, threshold, 0.01, machine=0.05).verdict == "~"
    slower = rounds_summary([0.0120, 0.0121], seed=20)
    assert compare.latency_change("decode_latency_s", base, slower, threshold, 0.01, machine=0.05).verdict == (
        "regression"
    )


def test_machine_noise_is_the_median_spread_over_cells_with_rounds() -> None:
    metrics = make_metrics()
    noisy = metrics.model_copy(update={"decode_latency_s": rounds_summary([0.010, 0.011])})
    quiet = metrics.model_copy(update={"decode_latency_s": rounds_summary([0.010, 0.0101])})
    run = make_run(
        [
            make_cell(variant="a").model_copy(update={"metrics": noisy}),
            make_cell(variant="b").model_copy(update={"metrics": quiet}),
            make_cell(variant="c").model_copy(update={"metrics": quiet}),
        ]
    )
    assert compare.machine_noise([run]) == pytest.approx(0.0001 / 0.01005)
    assert compare.machine_noise([make_run([make_cell()])]) is None


def test_a_ten_percent_slowdown_is_caught_with_quick_sample_counts_on_a_quiet_machine() -> None:
    # 2 rounds of 5 samples per side (the default scenario's counts), rounds 1% apart, run-wide 1%
    base = rounds_summary([0.0100, 0.0101], n=5, seed=0)
    head = rounds_summary([0.0110, 0.0111], n=5, seed=10)
    threshold = compare.Threshold(0.05, True, "median:5%")
    change = compare.latency_change("decode_latency_s", base, head, threshold, 0.01, machine=0.01)
    assert change.verdict == "regression"


def _with_failed_check(cell: CellResult, name: str = "bandwidth_within_peak") -> CellResult:
    check = Check(name=name, passed=False, detail="decode 60.0 GB/s against a measured peak of 40.0 GB/s")
    return cell.model_copy(update={"checks": [check], "checks_failed": [name]})


def test_a_cell_that_failed_a_self_check_is_inconclusive_never_a_regression() -> None:
    base = make_cell(decode_samples=lognormal_samples(0.010, seed=1))
    head = _with_failed_check(make_cell(decode_samples=lognormal_samples(0.013, seed=2)))
    comparison = compare.compare_sides(side(run_of(base)), side(run_of(head)))
    assert comparison.cells == () and comparison.exit_code == 0
    (skipped,) = comparison.skipped
    assert (skipped.verdict, skipped.reason) == ("inconclusive", "failed self-checks (head bandwidth_within_peak)")


def test_cells_whose_auto_backend_resolved_differently_are_not_comparable() -> None:
    base = make_cell(backend="auto", decode_samples=lognormal_samples(0.010, seed=1))
    head = make_cell(backend="auto", decode_samples=lognormal_samples(0.012, seed=2))
    base = base.model_copy(update={"backend_used": "native"})
    head = head.model_copy(update={"backend_used": "grouped"})
    comparison = compare.compare_sides(side(run_of(base)), side(run_of(head)))
    assert comparison.exit_code == 0
    (skipped,) = comparison.skipped
    assert (skipped.verdict, skipped.reason) == ("not comparable", "ran backend native at base, grouped at head")


def test_cells_that_ran_different_sdpa_kernels_are_not_comparable() -> None:
    base = make_cell(decode_samples=lognormal_samples(0.010, seed=1))
    head = make_cell(decode_samples=lognormal_samples(0.012, seed=2))
    assert base.metrics is not None and head.metrics is not None
    base = base.model_copy(update={"metrics": base.metrics.model_copy(update={"sdpa_kernel": "flash"})})
    head = head.model_copy(update={"metrics": head.metrics.model_copy(update={"sdpa_kernel": "math"})})
    (skipped,) = compare.compare_sides(side(run_of(base)), side(run_of(head))).skipped
    assert skipped.reason == "ran SDPA kernel flash at base, math at head"


def test_a_cell_that_timed_out_at_head_is_a_regression() -> None:
    comparison = compare.compare_sides(side(run_of(make_cell())), side(run_of(make_cell(status="timeout"))))
    assert comparison.exit_code == 1 and comparison.skipped[0].reason == "timeout at head"


def test_results_under_one_target_id_from_hardware_that_differs_are_not_compared_unless_allowed() -> None:
    env = {"cpu_model": "AMD EPYC", "cpu_family": "25", "cpu_isa": ["avx2", "avx512f"], "cpu_l2_cache_bytes": 1 << 20}
    other = env | {"cpu_family": "23", "cpu_isa": ["avx2"], "cpu_l2_cache_bytes": 512 << 10}
    base = make_run([make_cell()], environment=env)
    head = make_run([make_cell()], environment=other)
    with pytest.raises(UserError, match="hardware differs in what decides speed") as error:
        compare.compare_sides(side(base), side(head))
    assert "cpu_family: 25 vs 23" in str(error.value) and "cpu_isa: avx2, avx512f vs avx2" in str(error.value)
    allowed = compare.compare_sides(side(base), side(head), allow_cross_target=True)
    assert any(note.startswith("hardware differs") for note in allowed.notes)


def test_runs_with_different_timing_settings_or_quick_are_not_comparable_cell_by_cell() -> None:
    base = make_run([make_cell(decode_samples=lognormal_samples(0.010, seed=1))])
    head = make_run([make_cell(decode_samples=lognormal_samples(0.015, seed=2))])
    quick = head.model_copy(update={"quick": True})
    (skipped,) = compare.compare_sides(side(base), side(quick)).skipped
    assert (skipped.verdict, skipped.reason) == ("not comparable", "--quick at head only")
    settings = head.model_copy(update={"scenario": head.scenario.model_copy(update={"measure": {"min_samples": 5}})})
    comparison = compare.compare_sides(side(base), side(settings))
    assert comparison.exit_code == 0
    assert comparison.skipped[0].reason == "measure settings differ (min_samples 20 vs 5)"


def _max_batch(cell: CellResult, measured: int, uncertainty: int | None) -> CellResult:
    assert cell.metrics is not None and cell.metrics.max_batch is not None
    max_batch = cell.metrics.max_batch.model_copy(update={"measured": measured, "uncertainty": uncertainty})
    return cell.model_copy(update={"metrics": cell.metrics.model_copy(update={"max_batch": max_batch})})


def test_a_max_batch_change_within_the_searchs_measured_repeatability_is_not_a_regression() -> None:
    base, head = _max_batch(make_cell(), 58, 2), _max_batch(make_cell(), 57, 2)
    change = next(
        c
        for c in compare.compare_sides(side(run_of(base)), side(run_of(head))).cells[0].changes
        if c.metric == "max_batch"
    )
    assert change.verdict == "~"


def test_a_max_batch_drop_beyond_the_repeatability_is_a_regression_and_exact_searches_gate_any_drop() -> None:
    base, head = _max_batch(make_cell(), 58, 1), _max_batch(make_cell(), 54, 1)
    changes = compare.compare_sides(side(run_of(base)), side(run_of(head))).cells[0].changes
    assert next(c for c in changes if c.metric == "max_batch").verdict == "regression"
    exact = compare.compare_sides(
        side(run_of(_max_batch(make_cell(), 58, 0))), side(run_of(_max_batch(make_cell(), 57, 0)))
    )
    assert next(c for c in exact.cells[0].changes if c.metric == "max_batch").verdict == "regression"


def _timed(cell: CellResult, inner_reps: int, timer: str = "perf_counter") -> CellResult:
    """``cell`` with its warm decode latency timed by ``timer`` in samples of ``inner_reps`` calls."""
    assert cell.metrics is not None and cell.metrics.decode_latency_s is not None
    decode = cell.metrics.decode_latency_s.model_copy(update={"inner_reps": inner_reps, "timer": timer})
    return cell.model_copy(update={"metrics": cell.metrics.model_copy(update={"decode_latency_s": decode})})


def test_a_slowdown_between_cells_timed_with_other_calls_per_sample_is_measured_differently_not_a_regression(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = make_cell(decode_samples=lognormal_samples(0.010, seed=1))
    head = make_cell(decode_samples=lognormal_samples(0.013, seed=2))
    alike = compare.compare_sides(side(run_of(_timed(base, 2))), side(run_of(_timed(head, 2))))
    assert alike.exit_code == 1  # the same slowdown, timed alike, is a regression
    save_result(run_of(_timed(base, 2)), tmp_path / "base.json")
    save_result(run_of(_timed(head, 3)), tmp_path / "head.json")
    assert attnbench(["compare", str(tmp_path / "base.json"), str(tmp_path / "head.json")]) == 0
    table = capsys.readouterr().out
    assert "| measured differently | decode_latency_s with 2 calls per sample at base, 3 at head" in table
    assert "**OK**: 0 regressions" in table


def test_cells_timed_with_another_timer_are_measured_differently() -> None:
    base = _timed(make_cell(decode_samples=lognormal_samples(0.010, seed=1)), 1, "cuda-graph+events")
    head = _timed(make_cell(decode_samples=lognormal_samples(0.013, seed=2)), 1, "cuda-events")
    comparison = compare.compare_sides(side(run_of(base)), side(run_of(head)))
    assert comparison.exit_code == 0 and comparison.cells == ()
    (skipped,) = comparison.skipped
    assert (skipped.verdict, skipped.reason) == (
        "measured differently",
        "decode_latency_s timed with cuda-graph+events at base, cuda-events at head",
    )
