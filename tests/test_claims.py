"""The CLA paper's system claims checked on results: holds on data built to satisfy each, not on data built to break it.

Starts from the golden 2-core result in tests/data/report/ (H64-MHA, GQA4, MQA, MHA-CLA2, MQA-CLA2 on 4 layers,
batch 1, 8 x context 1024, 4096; H64-MHA at batch 8, context 4096 ran out of memory) and edits single fields.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from harness.report.claims import (
    ClaimCheck,
    check_attention_cut_by_kv_heads,
    check_attention_unchanged_by_cla,
    check_claims,
    check_kv_cache,
    check_max_batch,
    check_params,
)
from harness.results.schema import CellMetrics, CellResult, Check, RunResult, Summary
from harness.results.store import load_result

GOLDEN = Path(__file__).parent / "data" / "report" / "cpu-amd-epyc-2c.json"


@pytest.fixture(scope="module")
def golden() -> RunResult:
    return load_result(GOLDEN)


def _edit(result: RunResult, variant: str, change: Callable[[CellResult], CellResult]) -> RunResult:
    """The result with ``change`` applied to every cell of ``variant``."""
    return result.model_copy(update={"cells": [change(c) if c.variant == variant else c for c in result.cells]})


def _metrics(cell: CellResult, **fields: object) -> CellResult:
    assert cell.metrics is not None
    return cell.model_copy(update={"metrics": cell.metrics.model_copy(update=fields)})


def _metrics_of(result: RunResult, variant: str, batch: int, context: int) -> CellMetrics:
    cell = next(c for c in result.cells if (c.variant, c.batch_size, c.context_len) == (variant, batch, context))
    assert cell.metrics is not None
    return cell.metrics


def _scaled(summary: Summary, factor: float) -> Summary:
    return Summary(
        samples=[x * factor for x in summary.samples],
        median=summary.median * factor,
        p10=summary.p10 * factor,
        p90=summary.p90 * factor,
        ci_low=summary.ci_low * factor,
        ci_high=summary.ci_high * factor,
    )


def _only(checks: list[ClaimCheck], comparison: str) -> ClaimCheck:
    (check,) = [c for c in checks if c.comparison == comparison]
    return check


def _attention_like(result: RunResult, variant: str, reference: str, factor: float) -> RunResult:
    """``variant``'s core attention set to ``reference``'s at each cell, times ``factor``."""

    def change(cell: CellResult) -> CellResult:
        ref = next(
            c
            for c in result.cells
            if (c.variant, c.batch_size, c.context_len) == (reference, cell.batch_size, cell.context_len)
        )
        if ref.metrics is None or ref.metrics.attention_latency_s is None:  # the reference did not run here
            return cell
        return _metrics(cell, attention_latency_s=_scaled(ref.metrics.attention_latency_s, factor))

    return _edit(result, variant, change)


def test_kv_cache_claim_holds_when_cla2_halves_the_measured_cache(golden: RunResult) -> None:
    check = _only(check_kv_cache(golden), "H64-MQA-CLA2 vs H64-MQA")
    assert check.verdict == "holds"
    assert check.evidence == "expected 4/2 producer layers = 2.000 (s=2); measured 2.000 in 4 cells"


def test_kv_cache_claim_skips_cells_where_the_base_ran_out_of_memory(golden: RunResult) -> None:
    check = _only(check_kv_cache(golden), "H64-MHA-CLA2 vs H64-MHA")
    assert check.evidence == "expected 4/2 producer layers = 2.000 (s=2); measured 2.000 in 3 cells"


def test_kv_cache_claim_does_not_hold_when_the_cla_cache_is_not_shared(golden: RunResult) -> None:
    def unshared(cell: CellResult) -> CellResult:
        return _metrics(
            cell, kv_cache_bytes=_metrics_of(golden, "H64-MQA", cell.batch_size, cell.context_len).kv_cache_bytes
        )

    check = _only(check_kv_cache(_edit(golden, "H64-MQA-CLA2", unshared)), "H64-MQA-CLA2 vs H64-MQA")
    assert check.verdict == "does not hold"
    assert check.evidence == (
        "expected 4/2 producer layers = 2.000 (s=2); measured 1.000 in 4 cells; "
        "fails at B=1 ctx=1024 float32 sdpa (1.000), B=1 ctx=4096 float32 sdpa (1.000), "
        "B=8 ctx=1024 float32 sdpa (1.000) and 1 more"
    )


def test_kv_cache_claim_expects_l_over_ceil_l_over_s_when_s_does_not_divide_l(golden: RunResult) -> None:
    # Five layers with CLA2: producers 0, 2, 4, so the cache shrinks by 5/3, not by 2.
    per_token = 2 * 64 * 4  # one KV head of head_dim 64, float32, K and V

    def layers(kv_layers: list[int]) -> Callable[[CellResult], CellResult]:
        def change(cell: CellResult) -> CellResult:
            producers = len(set(kv_layers))
            kv = producers * per_token * cell.batch_size * (cell.context_len + 1)
            edited = cell.model_copy(update={"kv_layers": kv_layers, "n_kv_layers": producers})
            return _metrics(edited, kv_cache_bytes=kv, kv_cache_bytes_expected=kv)

        return change

    result = _edit(golden, "H64-MQA", layers([0, 1, 2, 3, 4]))
    result = _edit(result, "H64-MQA-CLA2", layers([0, 0, 2, 2, 4]))
    check = _only(check_kv_cache(result), "H64-MQA-CLA2 vs H64-MQA")
    assert check.verdict == "holds"
    assert check.evidence == "expected 5/3 producer layers = 1.667 (s=2); measured 1.667 in 4 cells"


def test_kv_cache_claim_is_not_testable_without_measured_cache_bytes(golden: RunResult) -> None:
    result = _edit(golden, "H64-MQA-CLA2", lambda c: _metrics(c, kv_cache_bytes=None))
    check = _only(check_kv_cache(result), "H64-MQA-CLA2 vs H64-MQA")
    assert check.verdict == "not testable"
    assert check.evidence.endswith("no cell where both measured kv_cache_bytes")


def test_params_claim_holds_for_a_reduction_below_ten_percent(golden: RunResult) -> None:
    checks = check_params(golden)
    assert _only(checks, "H64-MQA-CLA2 vs H64-MQA") == ClaimCheck(
        "Parameters shrink slightly (< 10%)", "H64-MQA-CLA2 vs H64-MQA", "holds", "19.076 M vs 19.207 M params (-0.68%)"
    )
    assert _only(checks, "H64-MHA-CLA2 vs H64-MHA").evidence == "19.993 M vs 21.042 M params (-4.98%)"


def test_params_claim_does_not_hold_when_cla_keeps_every_parameter(golden: RunResult) -> None:
    result = _edit(golden, "H64-MQA-CLA2", lambda c: c.model_copy(update={"params_total": 19_206_656}))
    check = _only(check_params(result), "H64-MQA-CLA2 vs H64-MQA")
    assert check.verdict == "does not hold"
    assert check.evidence == "19.207 M vs 19.207 M params (+0.00%); not smaller"


def test_params_claim_does_not_hold_when_parameters_shrink_by_ten_percent(golden: RunResult) -> None:
    result = _edit(golden, "H64-MQA-CLA2", lambda c: c.model_copy(update={"params_total": 17_285_990}))
    check = _only(check_params(result), "H64-MQA-CLA2 vs H64-MQA")
    assert check.verdict == "does not hold"
    assert check.evidence == "17.286 M vs 19.207 M params (-10.00%); shrinks by 10% or more"


def test_max_batch_claim_holds_within_a_quarter_of_the_kv_ratio(golden: RunResult) -> None:
    check = _only(check_max_batch(golden), "H64-MHA-CLA2 vs H64-MHA")
    assert check.verdict == "holds"
    assert check.evidence == "expected ≈2.000; ctx 1024: 57 → 116 (2.04, +2%), ctx 4096: 13 → 28 (2.15, +8%)"


def test_max_batch_claim_does_not_hold_when_the_batch_does_not_grow(golden: RunResult) -> None:
    def same_as_base(cell: CellResult) -> CellResult:
        max_batch = _metrics_of(golden, "H64-MQA", 1, cell.context_len).max_batch
        return _metrics(cell, max_batch=max_batch)

    check = _only(check_max_batch(_edit(golden, "H64-MQA-CLA2", same_as_base)), "H64-MQA-CLA2 vs H64-MQA")
    assert check.verdict == "does not hold"
    assert check.evidence == (
        "expected ≈2.000; ctx 1024: 452 → 452 (1.00, -50%), ctx 4096: 114 → 114 (1.00, -50%); "
        "fails at ctx 1024, ctx 4096"
    )


def test_max_batch_claim_is_not_testable_when_max_batch_was_not_measured(golden: RunResult) -> None:
    def unmeasured(cell: CellResult) -> CellResult:
        assert cell.metrics is not None and cell.metrics.max_batch is not None
        return _metrics(cell, max_batch=cell.metrics.max_batch.model_copy(update={"measured": None}))

    check = _only(check_max_batch(_edit(golden, "H64-MQA", unmeasured)), "H64-MQA-CLA2 vs H64-MQA")
    assert check.verdict == "not testable"


def test_attention_claim_holds_when_cla_matches_its_base(golden: RunResult) -> None:
    check = _only(check_attention_unchanged_by_cla(golden), "H64-MQA-CLA2 vs H64-MQA")
    assert check.verdict == "holds"
    assert check.evidence.endswith("over 4 cells; 4/4 within ±10% or CI overlap")


def test_attention_claim_does_not_hold_when_cla_is_half_again_slower(golden: RunResult) -> None:
    result = _attention_like(golden, "H64-MQA-CLA2", "H64-MQA", 1.5)
    check = _only(check_attention_unchanged_by_cla(result), "H64-MQA-CLA2 vs H64-MQA")
    assert check.verdict == "does not hold"
    assert check.evidence == (
        "median ratio CLA/base 1.50 over 4 cells; 0/4 within ±10% or CI overlap; fails at "
        "B=1 ctx=1024 float32 sdpa (1.50, CIs disjoint), B=1 ctx=4096 float32 sdpa (1.50, CIs disjoint), "
        "B=8 ctx=1024 float32 sdpa (1.50, CIs disjoint) and 1 more"
    )


def test_attention_claim_holds_beyond_ten_percent_when_the_intervals_overlap(golden: RunResult) -> None:
    def wide(cell: CellResult) -> CellResult:
        assert cell.metrics is not None and cell.metrics.attention_latency_s is not None
        return _metrics(cell, attention_latency_s=cell.metrics.attention_latency_s.model_copy(update={"ci_low": 0.0}))

    result = _edit(_attention_like(golden, "H64-MQA-CLA2", "H64-MQA", 1.2), "H64-MQA-CLA2", wide)
    check = _only(check_attention_unchanged_by_cla(result), "H64-MQA-CLA2 vs H64-MQA")
    assert check.verdict == "holds"
    assert check.evidence == "median ratio CLA/base 1.20 over 4 cells; 4/4 within ±10% or CI overlap"


def test_mqa_claim_holds_when_mqa_attention_is_faster_than_mha(golden: RunResult) -> None:
    check = _only(check_attention_cut_by_kv_heads(golden), "H64-MQA vs H64-MHA")
    assert check.verdict == "holds"
    assert check.evidence == "median ratio H64-MQA/MHA 0.13–0.16 over 3 cells; smaller in 3/3"


def test_mqa_claim_does_not_hold_when_mqa_attention_is_as_slow_as_mha(golden: RunResult) -> None:
    result = _attention_like(golden, "H64-MQA", "H64-MHA", 1.0)
    check = _only(check_attention_cut_by_kv_heads(result), "H64-MQA vs H64-MHA")
    assert check.verdict == "does not hold"
    assert check.evidence == (
        "median ratio H64-MQA/MHA 1.00 over 3 cells; smaller in 0/3; "
        "fails at B=1 ctx=1024 float32 sdpa (1.00), B=1 ctx=4096 float32 sdpa (1.00), B=8 ctx=1024 float32 sdpa "
        "(1.00); cause: likely the K/V copy: on CPU, sdpa repeats K/V to every query head before a kernel "
        "that cannot read shared KV heads (a copy per step, then as much traffic for MQA/GQA as for MHA); "
        "this result predates the record of whether it did"
    )


def test_mqa_claim_that_fails_under_sdpa_names_the_kv_copy_the_cells_recorded(golden: RunResult) -> None:
    copied = _edit(
        _attention_like(golden, "H64-MQA", "H64-MHA", 1.0),
        "H64-MQA",
        lambda cell: cell if cell.metrics is None else _metrics(cell, sdpa_kernel="math", sdpa_kv_copied=True),
    )
    check = _only(check_attention_cut_by_kv_heads(copied), "H64-MQA vs H64-MHA")
    assert check.evidence.endswith(
        "cause: sdpa repeated K/V to every query head before its kernel (a copy per step; the SDPA kernels section "
        "names the kernel), so it reads as much for MQA/GQA as for MHA"
    )


def test_mqa_claim_that_fails_while_sdpa_read_kv_in_place_names_no_copy(golden: RunResult) -> None:
    in_place = _edit(
        _attention_like(golden, "H64-MQA", "H64-MHA", 1.0),
        "H64-MQA",
        lambda cell: cell if cell.metrics is None else _metrics(cell, sdpa_kv_copied=False),
    )
    check = _only(check_attention_cut_by_kv_heads(in_place), "H64-MQA vs H64-MHA")
    assert check.verdict == "does not hold" and "cause:" not in check.evidence


def test_claims_are_not_testable_without_a_cla_variant(golden: RunResult) -> None:
    result = golden.model_copy(update={"cells": [c for c in golden.cells if "CLA" not in c.variant]})
    checks = check_claims(result)
    untestable = [c for c in checks if c.verdict == "not testable"]
    assert [c.claim for c in untestable] == [
        "KV cache shrinks by the sharing factor",
        "Parameters shrink slightly (< 10%)",
        "Max batch under the budget grows by the KV ratio",
        "Core attention latency unchanged by CLA",
        "CLA cuts training K/V activations by the sharing factor",
        "CLA composes with TP: per-rank KV cache shrinks by the sharing factor at every tp",
    ]
    assert {c.evidence for c in untestable} == {"no CLA variant (fewer producer layers than layers) in this run"}


def test_a_cla_variant_without_its_base_is_not_testable(golden: RunResult) -> None:
    result = golden.model_copy(update={"cells": [c for c in golden.cells if c.variant != "H64-MQA"]})
    check = _only(check_kv_cache(result), "H64-MQA-CLA2")
    assert check.verdict == "not testable"
    assert check.evidence == "no variant without CLA with head_dim 64, 8 heads and 1 KV heads to compare with"


def test_mqa_claim_gets_a_verdict_per_backend_when_a_run_has_several(golden: RunResult) -> None:
    # The same run timed on a second backend that expands K/V to every query head, so MQA costs it as
    # much as MHA: that backend's row says so, and the first backend's verdict is unchanged.
    eager = golden.model_copy(update={"cells": [c.model_copy(update={"backend": "eager"}) for c in golden.cells]})
    expanding = _attention_like(eager, "H64-MQA", "H64-MHA", 1.0)
    both = golden.model_copy(update={"cells": golden.cells + expanding.cells})
    checks = [c for c in check_attention_cut_by_kv_heads(both) if c.comparison.startswith("H64-MQA vs H64-MHA")]
    assert [(c.comparison, c.verdict) for c in checks] == [
        ("H64-MQA vs H64-MHA, eager", "does not hold"),
        ("H64-MQA vs H64-MHA, sdpa", "holds"),
    ]
    assert checks[0].evidence.endswith(
        "B=8 ctx=1024 float32 eager (1.00); cause: eager expands K/V to every query head, so it reads as much for "
        "MQA/GQA as for MHA"
    )
    assert checks[1].evidence == "median ratio H64-MQA/MHA 0.13–0.16 over 3 cells; smaller in 3/3"


def _failing_check(cell: CellResult, name: str = "no_throttling") -> CellResult:
    check = Check(name=name, passed=False, detail="clock-event reasons while timing: sw_power_cap")
    return cell.model_copy(update={"checks": [check], "checks_failed": [name]})


def test_a_claim_resting_on_a_cell_that_failed_its_self_checks_is_inconclusive(golden: RunResult) -> None:
    first = next(c for c in golden.cells if c.variant == "H64-MQA-CLA2" and c.status == "ok")
    result = golden.model_copy(update={"cells": [_failing_check(c) if c is first else c for c in golden.cells]})
    check = _only(check_attention_unchanged_by_cla(result), "H64-MQA-CLA2 vs H64-MQA")
    assert check.verdict == "inconclusive"
    assert check.evidence.endswith("inconclusive: 1 of 4 cells not trusted (failed self-checks (no_throttling))")


def test_a_trusted_cell_that_contradicts_a_claim_decides_it_whatever_other_cells_failed(golden: RunResult) -> None:
    slower = _attention_like(golden, "H64-MQA-CLA2", "H64-MQA", 1.5)
    first = next(c for c in slower.cells if c.variant == "H64-MQA-CLA2" and c.status == "ok")
    result = slower.model_copy(update={"cells": [_failing_check(c) if c is first else c for c in slower.cells]})
    assert _only(check_attention_unchanged_by_cla(result), "H64-MQA-CLA2 vs H64-MQA").verdict == "does not hold"


def test_a_failed_timing_check_does_not_make_the_allocated_kv_bytes_inconclusive(golden: RunResult) -> None:
    result = _edit(golden, "H64-MQA-CLA2", _failing_check)
    assert _only(check_kv_cache(result), "H64-MQA-CLA2 vs H64-MQA").verdict == "holds"


def test_cells_that_ran_different_sdpa_kernels_are_compared_only_to_say_so(golden: RunResult) -> None:
    def kernel(name: str) -> Callable[[CellResult], CellResult]:
        return lambda cell: cell if cell.metrics is None else _metrics(cell, sdpa_kernel=name)

    result = _edit(_edit(golden, "H64-MQA", kernel("math")), "H64-MHA", kernel("flash"))
    check = _only(check_attention_cut_by_kv_heads(result), "H64-MQA vs H64-MHA")
    assert check.verdict == "inconclusive"
    assert "ran different SDPA kernels (math vs flash)" in check.evidence


def test_the_cla_attention_claim_uses_cold_attention_where_both_variants_have_it(golden: RunResult) -> None:
    def with_cold(factor: float) -> Callable[[CellResult], CellResult]:
        def change(cell: CellResult) -> CellResult:
            assert cell.metrics is not None and cell.metrics.attention_latency_s is not None
            return _metrics(cell, attention_latency_cold_s=_scaled(cell.metrics.attention_latency_s, factor))

        return change

    # Warm, CLA matches its base; cold (each layer from memory) it is half again slower: cold decides.
    result = _edit(_edit(golden, "H64-MQA-CLA2", with_cold(1.5 * 3)), "H64-MQA", with_cold(3))
    check = _only(check_attention_unchanged_by_cla(result), "H64-MQA-CLA2 vs H64-MQA")
    assert check.verdict == "does not hold"
    assert check.evidence.startswith("cold median ratio CLA/base 1.")
    assert "0/4 within ±10% or CI overlap" in check.evidence
