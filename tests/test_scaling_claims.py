"""The CLA paper's training-memory and tensor-parallel claims on a run's opt-in measurements: verdicts on data
built each way, and the report's sections for them.

Starts from the golden 2-core result in tests/data/report/ (4 layers; H64-MQA, H64-MQA-CLA2, ... at batch 1 and 8,
context 1024 and 4096) and gives its cells training steps and sharded measurements whose numbers follow the variant.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_results import lognormal_samples, make_summary, with_evidence

from harness.measure.checks import derived_checks
from harness.report.claims import CLAIM_TRAIN_KV, check_tp, check_train_kv
from harness.report.pairing import ClaimCheck
from harness.report.render import LoadedResult, render_target
from harness.results.schema import CellResult, Check, RunResult, TPMeasurement, TPRank, TrainStep
from harness.results.store import load_result

GOLDEN = Path(__file__).parent / "data" / "report" / "cpu-amd-epyc-2c.json"
HEAD_DIM, BYTES = 64, 4
CHECK_CONTEXT = {"peak_gbps": None, "vendor_gbps": None, "cache_bytes": None, "weight_bytes": 0, "device": "cpu"}


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
    report = render_target([LoadedResult(GOLDEN, with_evidence(with_steps(golden)))], tmp_path)["REPORT.md"]
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


def with_tp(result: RunResult, degrees: tuple[int, ...] = (1, 2, 4), unshared: str | None = None) -> RunResult:
    """Every ok cell measured at ``degrees``: each rank holds ceil(n_kv_heads / tp) of the cell's K/V heads.
    The cells of ``unshared`` hold twice their cache on every rank, as if consumers kept their own."""
    cells = []
    for cell in result.cells:
        if cell.metrics is not None and cell.status == "ok" and cell.metrics.kv_cache_bytes is not None:
            measured = []
            for tp in degrees:
                heads = -(-cell.n_kv_heads // tp)
                per_rank = cell.metrics.kv_cache_bytes * heads // cell.n_kv_heads
                held = per_rank * (2 if cell.variant == unshared else 1)
                measured.append(
                    TPMeasurement(
                        tp=tp,
                        status="ok",
                        kv_heads_per_rank=heads,
                        kv_replication=tp * heads / cell.n_kv_heads,
                        kv_cache_bytes_per_rank_expected=per_rank,
                        ranks=[TPRank(rank=r, kv_cache_bytes=held, peak_memory_bytes=10 * held) for r in range(tp)],
                        decode_latency_s=make_summary(lognormal_samples(0.01 * tp, seed=tp)),
                    )
                )
            cell = cell.model_copy(update={"metrics": cell.metrics.model_copy(update={"tp": measured})})
        cells.append(cell)
    return result.model_copy(update={"cells": cells})


def test_cla_composes_with_tp_when_every_rank_holds_half_its_bases_cache(golden: RunResult):
    check = only(check_tp(with_tp(golden)), "H64-MQA-CLA2 vs H64-MQA")
    assert check.verdict == "holds"
    assert check.evidence == (
        "expected 4/2 producer layers = 2.000 (s=2); per-rank cache ratio 2.000 at tp 1, 2, 4 (12 cases)"
    )


def test_cla_does_not_compose_with_tp_when_ranks_keep_the_consumers_cache(golden: RunResult):
    check = only(check_tp(with_tp(golden, unshared="H64-MHA-CLA2")), "H64-MHA-CLA2 vs H64-MHA")
    assert check.verdict == "does not hold"
    assert "per-rank cache ratio 1.000 at tp 1, 2, 4" in check.evidence
    assert "fails at B=1 ctx=1024 float32 sdpa tp 1 (1.000)" in check.evidence


def test_the_tp_claim_is_not_testable_without_a_sharded_measurement(golden: RunResult):
    check = only(check_tp(golden), "H64-MQA-CLA2 vs H64-MQA")
    assert (check.verdict, check.evidence) == (
        "not testable",
        "expected 4/2 producer layers = 2.000 (s=2); no tp degree measured for both (sweep.tp)",
    )


def test_a_rank_whose_cache_differs_from_the_accounting_fails_its_check():
    cell = with_tp(load_result(GOLDEN), degrees=(2,), unshared="H64-MQA").cells[8]
    assert cell.variant == "H64-MQA" and cell.metrics is not None
    (check,) = [c for c in derived_checks(cell.metrics, **CHECK_CONTEXT) if c.name == "tp_kv_as_accounted"]
    assert not check.passed
    assert check.detail == "tp 2 rank 0: 4198400 B, accounting 2099200 B; tp 2 rank 1: 4198400 B, accounting 2099200 B"


def test_the_report_shows_each_ranks_cache_and_the_cost_of_replicating_mqa(golden: RunResult, tmp_path: Path):
    report = render_target([LoadedResult(GOLDEN, with_tp(golden))], tmp_path)["REPORT.md"]
    assert isinstance(report, str)
    section = report.split("### Tensor parallelism", 1)[1].split("###", 1)[0]
    table = rows(section)
    mqa_tp4 = next(row for row in table if row[:4] == ["H64-MQA", "8", "4096", "4"])
    assert mqa_tp4[4:8] == ["1 of 1", "4.0×", "64.02 MiB (= expected)", "640.16 MiB"]
    assert (
        "- `H64-MQA` (1 K/V heads) at tp 4, batch 8, context 4096: every rank holds 1 K/V head(s) per producer, "
        "64.02 MiB of cache per rank, 4.0× the unsharded cache over all ranks" in section
    )
    assert "`H64-MHA`" not in section.split("Replicated K/V heads:", 1)[1]  # 8 K/V heads split over 4 ranks
