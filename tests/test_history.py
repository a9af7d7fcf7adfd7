"""attnbench history: steps that persist, the commit axis in git's order, the page and its figures,
and the page loaded in headless Chromium (skipped without it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers_results import lognormal_samples, make_cell, make_run

from harness import cli
from harness.history import build_histories, figure_name
from harness.history.page import render_page
from harness.history.series import METRICS, build_history, metric_value
from harness.history.steps import detect_steps, weighted_median
from harness.results.schema import CellResult, GitInfo, RunResult, Stability
from harness.results.store import save_result
from harness.results.summary import summarize

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
COMMITS = [f"{i:x}" * 40 for i in range(1, 10)]  # "111…", "222…": commit i is COMMITS[i - 1]


# --- step detection ------------------------------------------------------------------------------


def test_weighted_median_is_where_half_the_weight_is_reached() -> None:
    assert weighted_median(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 1.0])) == 2.0
    assert weighted_median(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 5.0])) == 3.0


def test_a_change_that_persists_is_one_confirmed_step_at_its_commit() -> None:
    (step,) = detect_steps([1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.2, 1.21, 1.19, 1.2, 1.22, 1.18])
    assert (step.before, step.after, step.confirmed) == (5, 6, True)
    assert step.ratio == pytest.approx(1.2)


def test_noise_within_three_percent_shows_no_step() -> None:
    rng = np.random.default_rng(7)
    assert detect_steps(list(np.exp(rng.normal(0.0, 0.03, 20)))) == []


def test_a_single_odd_commit_is_not_a_step() -> None:
    values = [1.0, 1.01, 0.99, 1.0, 1.02, 1.5, 0.98, 1.0, 1.01, 0.99, 1.0, 1.01]
    assert detect_steps(values) == []


def test_a_change_at_the_last_commit_only_is_an_unconfirmed_step() -> None:
    (step,) = detect_steps([1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0, 1.4])
    assert (step.after, step.confirmed) == (7, False)


def test_a_change_below_five_percent_is_not_reported() -> None:
    assert detect_steps([1.0] * 6 + [1.03] * 6) == []


# --- the series over commits ---------------------------------------------------------------------


def cell(median: float, *, unstable: bool = False, assessed: bool = True, max_batch: int = 64) -> CellResult:
    made = make_cell(decode_samples=lognormal_samples(median, seed=int(median * 1e6)), max_batch_measured=max_batch)
    assert made.metrics is not None
    metrics = made.metrics.model_copy(update={"bandwidth_fraction": 0.5})
    stability = (
        Stability(unstable=unstable, reasons=["rounds disagree by 30%"] if unstable else []) if assessed else None
    )
    return made.model_copy(update={"metrics": metrics, "stability": stability})


def run_at(commit: str, started: str, *cells: CellResult, dirty: bool = False) -> RunResult:
    run = make_run(list(cells), commit=commit, started_utc=started)
    return run.model_copy(update={"git": GitInfo(commit=commit, short=commit[:7], dirty=dirty, branch="main")})


def test_the_commit_axis_follows_git_not_the_time_a_run_started(tmp_path: Path) -> None:
    order = {COMMITS[0]: 0, COMMITS[1]: 1, COMMITS[2]: 2}
    loaded = [
        (tmp_path / "a.json", run_at(COMMITS[2], "2026-01-01T00:00:00Z", cell(0.010))),  # oldest run, newest commit
        (tmp_path / "b.json", run_at(COMMITS[0], "2026-01-03T00:00:00Z", cell(0.010))),
        (tmp_path / "c.json", run_at(COMMITS[1], "2026-01-02T00:00:00Z", cell(0.010), dirty=True)),
        (tmp_path / "d.json", run_at(COMMITS[1], "2026-01-04T00:00:00Z", cell(0.010))),
        (tmp_path / "e.json", run_at(COMMITS[5], "2026-01-05T00:00:00Z", cell(0.010))),  # not in HEAD's history
    ]
    history = build_history("cpu-test-2c", loaded, order)
    assert [c.label for c in history.commits] == [
        COMMITS[0][:7],
        COMMITS[1][:7],
        COMMITS[1][:7] + "+dirty",
        COMMITS[2][:7],
        COMMITS[5][:7] + " (not in HEAD)",
    ]
    decode = next(s for s in history.series if s.metric == "decode_latency_s")
    assert {p.file: p.position for p in decode.points} == {
        "b.json": 0,
        "d.json": 1,
        "c.json": 2,
        "a.json": 3,
        "e.json": 4,
    }


def test_series_carry_intervals_and_mark_unstable_and_unassessed_points(tmp_path: Path) -> None:
    order = {c: i for i, c in enumerate(COMMITS[:3])}
    loaded = [
        (tmp_path / "a.json", run_at(COMMITS[0], "2026-01-01T00:00:00Z", cell(0.010))),
        (tmp_path / "b.json", run_at(COMMITS[1], "2026-01-02T00:00:00Z", cell(0.010, unstable=True))),
        (tmp_path / "c.json", run_at(COMMITS[2], "2026-01-03T00:00:00Z", cell(0.010, assessed=False))),
    ]
    history = build_history("cpu-test-2c", loaded, order)
    assert {s.metric for s in history.series} == {key for key, _, _ in METRICS}
    decode = next(s for s in history.series if s.metric == "decode_latency_s")
    first, unstable, unassessed = decode.points
    assert first.low is not None and first.high is not None and first.low < first.value < first.high
    assert unstable.unstable == "unstable: rounds disagree by 30%" and first.unstable is None
    assert (first.assessed, unassessed.assessed) == (True, False)
    assert decode.level_positions == (0, 2)  # the unstable point is marked, not believed


def test_bandwidth_interval_is_the_latencys_inverted() -> None:
    summary = summarize(lognormal_samples(0.010))
    made = make_cell()
    assert made.metrics is not None
    metrics = made.metrics.model_copy(update={"decode_latency_s": summary, "bandwidth_fraction": 0.4})
    value, low, high = metric_value(metrics, "bandwidth_fraction")  # type: ignore[misc]
    assert value == 0.4
    assert low == pytest.approx(0.4 * summary.median / summary.ci_high)
    assert high == pytest.approx(0.4 * summary.median / summary.ci_low)


def test_a_slowdown_kept_over_later_commits_is_a_step_in_the_history(tmp_path: Path) -> None:
    order = {c: i for i, c in enumerate(COMMITS)}
    medians = [0.010, 0.0101, 0.0099, 0.010, 0.0125, 0.0124, 0.0126, 0.0125]
    loaded = [
        (tmp_path / f"{i}.json", run_at(COMMITS[i], f"2026-01-0{i + 1}T00:00:00Z", cell(m)))
        for i, m in enumerate(medians)
    ]
    history = build_history("cpu-test-2c", loaded, order)
    decode = next(s for s in history.series if s.metric == "decode_latency_s")
    (step,) = decode.steps
    assert (decode.level_positions[step.before], decode.level_positions[step.after]) == (3, 4)
    assert step.confirmed and step.ratio == pytest.approx(1.25, rel=0.03)
    page = render_page(history, "abc1234")
    assert f"<td>{COMMITS[3][:7]} → {COMMITS[4][:7]}</td><td>{step.ratio - 1:+.1%}</td><td>yes</td>" in page


# --- the command ---------------------------------------------------------------------------------


def write_results(folder: Path) -> None:
    target = folder / "cpu-test-2c"
    for i, median in enumerate([0.010, 0.0101, 0.0125, 0.0126]):
        save_result(run_at(COMMITS[i], f"2026-01-0{i + 1}T00:00:00Z", cell(median)), target / f"2026010{i}_{i}.json")


def test_history_writes_a_page_and_a_figure_per_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_results(tmp_path / "results")
    assert cli.main(["history", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "cpu-test-2c" / "history.html").read_text(encoding="utf-8")
    figure = (tmp_path / "out" / "cpu-test-2c" / figure_name("decode-small")).read_bytes()
    assert figure.startswith(b"\x89PNG")
    assert 'id="history-data"' in page
    assert not re.search(r"\b(src|href)=", page), "the page must fetch nothing when viewed"
    assert "wrote " in capsys.readouterr().out


def test_history_refuses_a_bad_result_file_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_results(tmp_path / "results")
    (tmp_path / "results" / "cpu-test-2c" / "broken.json").write_text('{"schema_version": 1, "cells": [')
    assert cli.main(["history", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.json: not JSON" in err[0]
    assert not (tmp_path / "out").exists()


def test_history_names_the_targets_it_has_when_asked_for_another(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_results(tmp_path / "results")
    assert cli.main(["history", str(tmp_path / "results"), "--target", "nvidia-h100"]) == 2
    assert "--target: no results for target 'nvidia-h100'; found: cpu-test-2c" in capsys.readouterr().err


# --- the page in a real browser ------------------------------------------------------------------


def dump_dom(page: Path) -> str:
    """The page's DOM after its scripts ran, as headless Chromium serialises it."""
    assert CHROMIUM is not None
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (Debian package chromium); not installed")
def test_every_committed_result_renders_in_chromium_with_one_chart_per_metric(tmp_path: Path) -> None:
    written = build_histories([REPO / "results"], tmp_path, figures=False)
    pages = [p for p in written if p.name == "history.html"]
    assert pages, "no committed results"
    for page in pages:
        dom = dump_dom(page)
        assert 'data-drawn="yes"' in dom, f"{page}: the script did not finish"
        errors = re.findall(r'data-errors="([^"]*)"', dom)
        assert not errors, f"{page}: {errors}"
        sections = dom.count('<section class="scenario"')
        assert sections >= 1
        for metric, _, _ in METRICS:
            charts = re.findall(rf'<svg class="chart" data-metric="{metric}"[^>]*data-points="(\d+)"', dom)
            assert len(charts) == sections, f"{page}: {metric}: {len(charts)} charts for {sections} scenarios"
        drawn = re.findall(r'<svg class="chart" data-metric="decode_latency_s"[^>]*data-points="(\d+)"', dom)
        assert all(int(n) > 0 for n in drawn)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (Debian package chromium); not installed")
def test_a_script_error_in_the_page_is_caught_by_the_browser_check(tmp_path: Path) -> None:
    write_results(tmp_path / "results")
    (page,) = [p for p in build_histories([tmp_path / "results"], tmp_path / "out", figures=False)]
    broken = page.read_text(encoding="utf-8").replace(
        'JSON.parse(document.getElementById("history-data")', "JSON.parse(("
    )
    page.write_text(broken, encoding="utf-8")
    dom = dump_dom(page)
    assert "data-errors" in dom and 'data-drawn="yes"' not in dom
