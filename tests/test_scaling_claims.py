"""The CLA paper's training-memory claim on a run's train_step measurements: verdicts on data built each way.

Starts from the golden 2-core result in tests/data/report/ (4 layers; H64-MQA, H64-MQA-CLA2, ... at batch 1 and 8,
context 1024 and 4096) and gives its cells training steps whose numbers follow the variant's producers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.report.claims import CLAIM_TRAIN_KV, check_train_kv
from harness.report.pairing import ClaimCheck
from harness.report.render import LoadedResult, render_target
from harness.results.schema import CellResult, Check, RunResult, TrainStep
from harness.results.store import load_result

GOLDEN = Path(__file__).parent / "data" / "report" / "cpu-amd-epyc-2c.json"
HEAD_DIM, BYTES = 64, 4


@pytest.fixture(scope="module")
def golden() -> RunResult:
    return load_result(GOLDEN)


def kv_bytes(cell: CellResult, producers: int | None = None) -> int:
    """K/V activations of the cell's batch: producers · 2 · n_kv_heads · head_dim · bytes · tokens."""
    producers = cell.n_kv_layers if producers is None else producers
    return producers * 2 * cell.n_kv_heads * HEAD_DIM * BYTES * cell.batch_size * cell.context_len


def with_steps(result: RunResult, producers: dict[str, int] | None = None) -> RunResult:
    """Every ok cell with a training step; ``producers`` overrides the layers that (seem to) keep K/V."""
    cells = []
    for cell in result.cells:
        if cell.metrics is not None and cell.status == "ok":
            measured = kv_bytes(cell, (producers or {}).get(cell.variant))
            step = TrainStep(
                status="ok",
                tokens=cell.batch_size * cell.context_len,
                peak_memory_bytes=200_000_000 + measured,
                saved_activation_bytes=100_000_000 + measured,
                kv_activation_bytes=measured,
                kv_activation_bytes_expected=kv_bytes(cell),
            )
            cell = cell.model_copy(update={"metrics": cell.metrics.model_copy(update={"train_step": step})})
        cells.append(cell)
    return result.model_copy(update={"cells": cells})


def rows(markdown: str) -> list[list[str]]:
    """The cells of every table row in ``markdown``, stripped."""
    return [
        [cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines() if line.startswith("|")
    ]


def only(checks: list[ClaimCheck], comparison: str) -> ClaimCheck:
    (check,) = [c for c in checks if c.comparison == comparison]
    return check


def test_the_training_kv_claim_holds_when_cla2_halves_the_saved_kv(golden: RunResult):
    check = only(check_train_kv(with_steps(golden)), "H64-MQA-CLA2 vs H64-MQA")
    assert check.verdict == "holds"
    assert check.evidence == (
        "expected 4/2 producer layers = 2.000 (s=2); measured 2.000 in 4 cells; at 32768 tokens the training peak "
        "went 254.73 MiB → 222.73 MiB (-12.6%) where the K/V activations fell by 32.00 MiB"
    )


def test_the_training_kv_claim_does_not_hold_when_consumers_keep_kv_of_their_own(golden: RunResult):
    check = only(check_train_kv(with_steps(golden, {"H64-MQA-CLA2": 4})), "H64-MQA-CLA2 vs H64-MQA")
    assert check.verdict == "does not hold"
    assert (
        "measured 1.000 in 4 cells" in check.evidence and "fails at B=1 ctx=1024 float32 sdpa (1.000)" in check.evidence
    )


def test_the_training_kv_claim_is_inconclusive_on_a_step_that_failed_its_kv_check(golden: RunResult):
    broken = with_steps(golden, {"H64-MQA-CLA2": 4})
    failed = Check(name="train_kv_as_accounted", passed=False, detail="saved 2 B, accounting 1 B")
    cells = [
        c.model_copy(update={"checks": [failed], "checks_failed": [failed.name]}) if c.variant == "H64-MQA-CLA2" else c
        for c in broken.cells
    ]
    check = only(check_train_kv(broken.model_copy(update={"cells": cells})), "H64-MQA-CLA2 vs H64-MQA")
    assert check.verdict == "inconclusive"
    assert check.evidence.endswith("4 of 4 cells not trusted (failed self-checks (train_kv_as_accounted))")


def test_the_training_kv_claim_is_not_testable_without_train_step(golden: RunResult):
    check = only(check_train_kv(golden), "H64-MHA-CLA2 vs H64-MHA")
    assert check.verdict == "not testable"
    assert check.evidence.endswith("no cell where both measured train_step (measure.metrics must list it)")


def test_a_step_that_did_not_run_is_no_evidence(golden: RunResult):
    stepped = with_steps(golden)
    cells = []
    for cell in stepped.cells:
        if cell.variant == "H64-MQA-CLA2" and cell.metrics is not None and cell.metrics.train_step is not None:
            oom = cell.metrics.train_step.model_copy(update={"status": "oom", "kv_activation_bytes": None})
            cell = cell.model_copy(update={"metrics": cell.metrics.model_copy(update={"train_step": oom})})
        cells.append(cell)
    check = only(check_train_kv(stepped.model_copy(update={"cells": cells})), "H64-MQA-CLA2 vs H64-MQA")
    assert check.verdict == "not testable"


def test_the_report_shows_training_step_memory_and_the_training_claim(golden: RunResult, tmp_path: Path):
    report = render_target([LoadedResult(GOLDEN, with_steps(golden))], tmp_path)["REPORT.md"]
    assert isinstance(report, str)
    section = report.split("### Training step memory", 1)[1].split("###", 1)[0]
    assert [
        "H64-MQA-CLA2",
        "8",
        "198.73 MiB; K/V 8.00 MiB (= expected)",
        "222.73 MiB; K/V 32.00 MiB (= expected)",
    ] in rows(section)
    claims = rows(report.split("### Claims check", 1)[1].split("###", 1)[0])
    assert any(row[:3] == [CLAIM_TRAIN_KV, "H64-MQA-CLA2 vs H64-MQA", "✅ holds"] for row in claims)


def test_the_report_has_no_training_section_when_no_step_was_measured(golden: RunResult, tmp_path: Path):
    report = render_target([LoadedResult(GOLDEN, golden)], tmp_path)["REPORT.md"]
    assert isinstance(report, str) and "### Training step memory" not in report
