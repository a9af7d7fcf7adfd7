"""The verdict a report opens with: each variant against the baseline, per context and batch size."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_results import lognormal_samples, make_cell, make_run, with_evidence
from test_scenario import write

from harness.report.verdict import (
    NOT_DISTINGUISHABLE,
    PER_MEDIAN_CONFIDENCE,
    baseline_variant,
    latency_ratio,
    verdict_rows,
    verdict_section,
)
from harness.results.schema import CellResult, RunResult, Stability
from harness.results.summary import summarize
from harness.scenario import load_scenario
from harness.stats.order import median_ci_indices


def _cell(variant: str, median_s: float, batch: int = 1, kv_bytes_per_token: int = 2048, seed: int = 0) -> CellResult:
    cell = make_cell(variant, batch_size=batch, decode_samples=lognormal_samples(median_s, sigma=0.01, seed=seed))
    return cell.model_copy(update={"kv_bytes_per_token": kv_bytes_per_token})


def _run(*cells: CellResult) -> RunResult:
    return with_evidence(make_run(list(cells)))


def test_the_latency_interval_divides_the_order_statistic_bounds_of_each_median_at_root_95_percent() -> None:
    subject = summarize([float(x) for x in range(1, 21)])  # 1..20
    baseline = summarize([float(x) for x in range(11, 31)])  # 11..30
    low_index, high_index = median_ci_indices(20, PER_MEDIAN_CONFIDENCE)
    assert (low_index, high_index) == (4, 15)  # 2 P(B <= 4) = 0.0118 <= 0.0253 < 2 P(B <= 5) = 0.0414, B ~ Bin(20, 1/2)
    ratio = latency_ratio(subject, baseline)
    assert ratio.ratio == pytest.approx(10.5 / 20.5)
    assert (ratio.low, ratio.high) == pytest.approx((5 / 26, 16 / 15))  # x_(5) / y_(16), x_(16) / y_(5)
    assert ratio.includes_one


def test_a_clearly_faster_variant_is_concluded_faster_with_its_kv_and_batch_ratios() -> None:
    run = _run(_cell("H128-MHA", 0.010, kv_bytes_per_token=8192), _cell("H128-MQA", 0.005, kv_bytes_per_token=1024))
    (row,) = verdict_rows(run, "H128-MHA", 2048, 1)
    assert row.kv_ratio == pytest.approx(1 / 8)
    assert row.max_batch_ratio == pytest.approx(1.0)  # both cells measured 64
    assert row.latency is not None and row.latency.high < 1
    assert row.decode == "faster"
    assert row.conclusion == "8× less KV per token; decode 50% faster"
    table = next(line for line in "\n".join(verdict_section(run)).splitlines() if line.startswith("| H128-MQA"))
    assert [cell.strip() for cell in table.strip("|").split("|")][:3] == ["H128-MQA", "×0.125", "×1.00"]


def test_an_interval_that_includes_one_is_not_distinguishable() -> None:
    run = _run(_cell("H128-MHA", 0.010), _cell("H128-GQA2", 0.010, seed=1))
    (row,) = verdict_rows(run, "H128-MHA", 2048, 1)
    assert row.latency is not None and row.latency.includes_one
    assert row.decode == NOT_DISTINGUISHABLE
    assert row.conclusion.endswith("decode latency not distinguishable (interval includes 1)")


def test_an_unstable_cell_is_not_distinguishable_however_far_apart_the_medians() -> None:
    run = _run(_cell("H128-MHA", 0.010), _cell("H128-MQA", 0.005))
    shaky = run.cells[1].model_copy(update={"stability": Stability(unstable=True, reasons=["rounds disagreed"])})
    (row,) = verdict_rows(run.model_copy(update={"cells": [run.cells[0], shaky]}), "H128-MHA", 2048, 1)
    assert row.decode == NOT_DISTINGUISHABLE
    assert row.conclusion.endswith("not distinguishable: unstable")


def test_a_result_without_checks_or_stability_is_unchecked_and_not_distinguishable() -> None:
    run = make_run([_cell("H128-MHA", 0.010), _cell("H128-MQA", 0.005)])  # written before they were recorded
    (row,) = verdict_rows(run, "H128-MHA", 2048, 1)
    assert row.decode == NOT_DISTINGUISHABLE
    assert "unchecked (the result has no checks, stability, host_load)" in row.conclusion


def test_a_cell_that_did_not_run_is_not_distinguishable_and_says_why() -> None:
    run = _run(_cell("H128-MHA", 0.010), make_cell("H128-MQA", batch_size=1, status="oom"))
    (row,) = verdict_rows(run, "H128-MHA", 2048, 1)
    assert (row.latency, row.kv_ratio, row.conclusion) == (None, None, "not distinguishable: H128-MQA oom")


def test_the_baseline_is_the_recorded_one_else_the_first_variant() -> None:
    run = _run(_cell("H128-MHA", 0.010), _cell("H128-MQA", 0.005))
    assert baseline_variant(run) == "H128-MHA"
    chosen = run.model_copy(update={"scenario": run.scenario.model_copy(update={"baseline": "H128-MQA"})})
    assert baseline_variant(chosen) == "H128-MQA"
    (row,) = verdict_rows(chosen, "H128-MQA", 2048, 1)
    assert row.variant == "H128-MHA" and row.decode == "slower"


def test_the_section_has_one_table_per_context_and_batch_and_a_line_per_variant() -> None:
    cells = [_cell(v, m, batch=b, seed=b) for b in (1, 4) for v, m in (("H128-MHA", 0.010), ("H128-MQA", 0.005))]
    text = "\n".join(verdict_section(_run(*cells)))
    assert text.count("**Context 2048, batch") == 2
    assert "- `H128-MQA`: decode faster in 2, slower in 0, not distinguishable in 0 of 2 cells" in text
    assert "baseline `H128-MHA`" in text
    assert math.isclose(PER_MEDIAN_CONFIDENCE**2, 0.95)


def test_a_run_of_one_variant_has_no_verdict() -> None:
    assert verdict_section(_run(_cell("H128-MHA", 0.010))) == []


def test_a_scenario_names_its_baseline_and_the_run_records_it(tmp_path: Path) -> None:
    path = write(
        tmp_path, '[[variant]]\nname = "H64-MHA"\n[[variant]]\nname = "H64-MQA"\n[report]\nbaseline = "H64-MQA"\n'
    )
    assert load_scenario(path).scenario.report.baseline == "H64-MQA"


def test_a_baseline_that_is_no_variant_is_a_one_line_error_naming_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, '[[variant]]\nname = "H64-MHA"\n[report]\nbaseline = "H64-GQA9"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "validate", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"attnbench validate: error: {path}: report.baseline: 'H64-GQA9' is not a variant of this scenario (H64-MHA)"
    )


def test_serving_forms_are_compared_with_the_baselines_same_form_and_the_baselines_own_forms_are_left_out() -> None:
    def form(variant: str, suffix: str, median_s: float, kv: int, **fields: object) -> CellResult:
        cell = _cell(variant + suffix, median_s, kv_bytes_per_token=kv)
        return cell.model_copy(update=fields)

    run = _run(
        form("H128-GQA8", "", 0.010, 16384),
        form("H128-GQA8", "-P16-T4", 0.030, 16384, page_size=16, q_len=4),
        form("H128-GQA8", "-longtail-P16", 0.008, 16384, page_size=16, length_mix="longtail"),
        form("H128-MQA", "", 0.005, 2048),
        form("H128-MQA", "-P16-T4", 0.006, 2048, page_size=16, q_len=4),
        form("H128-MQA", "-longtail-P16", 0.004, 2048, page_size=16, length_mix="longtail"),
    )
    assert baseline_variant(run) == "H128-GQA8"
    rows = {row.variant: row for row in verdict_rows(run, "H128-GQA8", 2048, 1)}
    assert set(rows) == {"H128-MQA", "H128-MQA-P16-T4", "H128-MQA-longtail-P16"}  # no GQA8 form against GQA8
    assert rows["H128-MQA-P16-T4"].latency is not None
    assert rows["H128-MQA-P16-T4"].latency.ratio == pytest.approx(0.2, rel=0.05)  # against GQA8-P16-T4, not GQA8
    assert rows["H128-MQA-longtail-P16"].latency is not None
    assert rows["H128-MQA-longtail-P16"].latency.ratio == pytest.approx(0.5, rel=0.05)
