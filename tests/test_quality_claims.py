"""Statistics over seeds (exact values) and the accuracy claims' verdicts on quality results built each way."""

from __future__ import annotations

import math

import pytest

from harness.report.quality_claims import CLAIM_MATCHED_KV, CLAIM_UPTRAIN, CLAIM_UPTRAIN_SCRATCH, quality_claims
from harness.report.quality_report import pareto_front
from harness.results.quality import Conversion, ConversionRun, CorpusInfo, QualityResult, SeedRun, VariantQuality
from harness.results.schema import GitInfo
from harness.stats.seeds import mean_ci, welch_difference_ci

T_975_2DOF = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom


def test_the_interval_of_a_mean_over_seeds_is_students():
    ci = mean_ci([1.0, 2.0, 3.0])
    assert (ci.mean, ci.sd, ci.n) == (2.0, 1.0, 3)
    assert ci.low == pytest.approx(2 - T_975_2DOF / math.sqrt(3)) and ci.high == pytest.approx(
        2 + T_975_2DOF / math.sqrt(3)
    )
    assert mean_ci([5.0]).low is None


def test_welchs_interval_of_equal_spreads_has_the_pooled_degrees_of_freedom():
    diff = welch_difference_ci([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    assert diff.difference == -1.0 and diff.dof == pytest.approx(4.0)
    assert diff.high == pytest.approx(-1 + 2.7764451051977987 * math.sqrt(2 / 3))
    assert not diff.excludes_zero


def seeds(losses: list[float]) -> list[SeedRun]:
    return [
        SeedRun(
            seed=i,
            validation_loss=loss,
            validation_perplexity=math.exp(loss),
            validation_tokens=128,
            train_time_s=1.0,
            tokens_seen=1024,
            steps=4,
            train_loss=[],
        )
        for i, loss in enumerate(losses)
    ]


def variant(name: str, n_kv_layers: int, kv_bytes: int, losses: list[float]) -> VariantQuality:
    return VariantQuality(
        variant=name,
        spelling=name,
        head_dim=16,
        n_heads=4,
        n_kv_heads=1,
        n_kv_layers=n_kv_layers,
        kv_bytes_per_token=kv_bytes,
        params_total=1000,
        status="ok",
        runs=seeds(losses),
    )


def result(cla: list[float], base: list[float], conversions: list[Conversion] | None = None) -> QualityResult:
    return QualityResult(
        target="cpu-test",
        environment={},
        git=GitInfo(commit=None, short=None, dirty=None),
        scenario="t",
        scenario_source="t.toml",
        scenario_sha256="0",
        model={"d_model": 32, "n_layers": 4},
        settings={"seeds": [0, 1, 2]},
        device="cpu",
        threads=1,
        quick=False,
        started_utc="2026-01-01T00:00:00Z",
        corpus=CorpusInfo(name="pydoc-topics", sha256="0", train_bytes=1, validation_bytes=1),
        variants=[
            variant("H32-MQA-CLA2", 2, 512, cla),
            variant("H16-MQA", 4, 512, base),
            variant("H16-MHA", 4, 2048, [1.0, 1.1, 0.9]),
        ],
        conversions=conversions or [],
    )


def test_cla_at_matched_kv_bytes_holds_only_when_its_lower_loss_is_outside_the_seed_spread():
    (separated,) = [
        c for c in quality_claims(result([2.0, 2.01, 1.99], [2.5, 2.51, 2.49])) if c.claim == CLAIM_MATCHED_KV
    ]
    assert (separated.comparison, separated.verdict) == ("H32-MQA-CLA2 vs H16-MQA", "holds")
    (overlapping,) = [
        c for c in quality_claims(result([2.0, 2.3, 1.8], [2.1, 2.0, 2.2])) if c.claim == CLAIM_MATCHED_KV
    ]
    assert overlapping.verdict == "inconclusive at this scale"
    assert "95% CI" in overlapping.evidence and "over 3 and 3 seeds" in overlapping.evidence
    (worse,) = [c for c in quality_claims(result([2.5, 2.51, 2.49], [2.0, 2.01, 1.99])) if c.claim == CLAIM_MATCHED_KV]
    assert worse.verdict == "does not hold"


def test_one_seed_is_never_enough_for_a_verdict():
    (claim,) = [c for c in quality_claims(result([2.0], [2.5])) if c.claim == CLAIM_MATCHED_KV]
    assert claim.verdict == "inconclusive at this scale" and claim.evidence.endswith("one seed: no spread")


def conversion(before: list[float], after: list[float]) -> Conversion:
    runs = [
        ConversionRun(
            seed=i,
            source_validation_loss=1.0,
            validation_loss_before=b,
            validation_loss_after=a,
            uptrain_steps=2,
            uptrain_time_s=0.1,
            uptrain_tokens=64,
        )
        for i, (b, a) in enumerate(zip(before, after, strict=True))
    ]
    return Conversion(
        source="H16-MHA",
        target="H16-MQA",
        spelling="H16-MQA",
        kv_bytes_per_token=512,
        uptrain_fraction=0.05,
        status="ok",
        runs=runs,
    )


def test_uptraining_lowers_the_loss_when_it_does_so_on_every_seed_beyond_the_spread():
    checks = quality_claims(result([2.0, 2.1, 1.9], [2.0, 2.1, 1.9], [conversion([3.0, 3.1, 2.9], [2.2, 2.31, 2.1])]))
    (claim,) = [c for c in checks if c.claim == CLAIM_UPTRAIN]
    assert (claim.comparison, claim.verdict) == ("H16-MHA -> H16-MQA", "holds")
    assert "(2.0000 trained from scratch)" in claim.evidence


def test_a_conversion_that_improves_but_stays_worse_than_from_scratch_does_not_reach_it():
    checks = quality_claims(result([2.0, 2.1, 1.9], [2.0, 2.1, 1.9], [conversion([3.0, 3.1, 2.9], [2.6, 2.7, 2.5])]))
    (improves,) = [c for c in checks if c.claim == CLAIM_UPTRAIN]
    (reaches,) = [c for c in checks if c.claim == CLAIM_UPTRAIN_SCRATCH]
    assert improves.verdict == "holds"
    assert (reaches.comparison, reaches.verdict) == ("H16-MHA -> H16-MQA", "does not hold")
    assert reaches.evidence.startswith(
        "loss 2.6000 after uptraining vs 2.0000 trained from scratch; difference +0.6000"
    )
    assert reaches.evidence.endswith("it stays worse than training from scratch")


def test_a_conversion_within_the_seed_spread_of_from_scratch_is_inconclusive():
    checks = quality_claims(result([2.0, 2.3, 1.7], [2.0, 2.3, 1.7], [conversion([3.0, 3.1, 2.9], [2.1, 2.2, 1.9])]))
    (reaches,) = [c for c in checks if c.claim == CLAIM_UPTRAIN_SCRATCH]
    assert reaches.verdict == "inconclusive at this scale"


def test_without_a_conversion_the_uptraining_claim_is_not_testable():
    (claim,) = [c for c in quality_claims(result([2.0, 2.1], [2.0, 2.1])) if c.claim == CLAIM_UPTRAIN]
    assert claim.verdict == "not testable"


def test_the_pareto_front_keeps_the_points_no_other_beats_on_bytes_and_perplexity():
    points = [(512, 30.0), (512, 28.0), (1024, 29.0), (1024, 27.0), (4096, 27.5), (4096, 25.0)]
    assert pareto_front(points) == [(512, 28.0), (1024, 27.0), (4096, 25.0)]
