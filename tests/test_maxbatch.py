"""The max-batch search: proven both ways (fits, one more does not) in a few probes."""

from __future__ import annotations

import pytest

from harness.run.maxbatch import Probe, boundary_uncertainty, search_max_batch

GiB = 2**30


def linear_memory(weights: int, per_sequence: int, budget: int, noise: int = 0):
    """A fake probe whose peak is weights + batch x per_sequence (+ a deterministic wobble)."""
    calls: list[int] = []

    def probe(batch: int) -> Probe:
        calls.append(batch)
        peak = weights + batch * per_sequence + (noise if batch % 2 else -noise)
        return Probe(batch, peak <= budget, peak, "ok")

    return probe, calls


def true_max(weights: int, per_sequence: int, budget: int) -> int:
    return (budget - weights) // per_sequence


@pytest.mark.parametrize("predicted", [1, 50, 99, 100, 101, 140, 400, 5000])
def test_search_finds_the_largest_fitting_batch_from_any_prediction(predicted: int):
    probe, calls = linear_memory(weights=2 * GiB, per_sequence=80 * 2**20, budget=10 * GiB)
    result = search_max_batch(probe, predicted, 10 * GiB, prior_bytes_per_sequence=80 * 2**20)
    expected = true_max(2 * GiB, 80 * 2**20, 10 * GiB)
    assert result.measured == expected
    assert expected in calls and expected + 1 in calls  # proven: it fits and one more does not
    assert len(calls) <= 6


def test_an_exact_prediction_is_confirmed_in_two_probes():
    probe, calls = linear_memory(weights=GiB, per_sequence=2**20, budget=2 * GiB)
    expected = true_max(GiB, 2**20, 2 * GiB)
    result = search_max_batch(probe, expected, 2 * GiB, prior_bytes_per_sequence=2**20)
    assert (result.measured, calls) == (expected, [expected, expected + 1])


def test_a_wrong_prior_slope_still_converges_within_the_probe_limit():
    probe, calls = linear_memory(weights=GiB, per_sequence=3 * 2**20, budget=4 * GiB, noise=2**19)
    result = search_max_batch(probe, 10, 4 * GiB, prior_bytes_per_sequence=2**20)
    assert result.measured is not None
    assert probe(result.measured).fits and not probe(result.measured + 1).fits
    assert len(calls) <= 24 + 2


def test_nothing_fits_gives_zero():
    probe, _ = linear_memory(weights=5 * GiB, per_sequence=2**20, budget=4 * GiB)
    assert search_max_batch(probe, 0, 4 * GiB, prior_bytes_per_sequence=2**20).measured == 0


def test_out_of_memory_probes_without_a_peak_are_bisected():
    def probe(batch: int) -> Probe:
        return Probe(batch, True, 1000, "ok") if batch <= 37 else Probe(batch, False, None, "oom")

    result = search_max_batch(probe, 100, 2000, prior_bytes_per_sequence=10)
    assert result.measured == 37


def test_a_failing_probe_ends_the_search_with_its_reason():
    def probe(batch: int) -> Probe:
        return Probe(batch, False, None, "error: RuntimeError: boom")

    result = search_max_batch(probe, 4, GiB, prior_bytes_per_sequence=2**20)
    assert result.measured is None
    assert result.note is not None and "boom" in result.note


def test_a_prior_that_underestimates_memory_by_a_third_still_needs_few_probes():
    probe, calls = linear_memory(weights=100 * 2**20, per_sequence=110_000, budget=256 * 2**20)
    result = search_max_batch(probe, 21537, 256 * 2**20, prior_bytes_per_sequence=70_000)
    assert result.measured == true_max(100 * 2**20, 110_000, 256 * 2**20)
    assert len(calls) <= 5


@pytest.mark.parametrize("prior_factor", [0.25, 8.0, 40.0])
def test_a_far_off_prior_is_replaced_by_the_measured_slope_after_two_probes(prior_factor: float):
    # a chunked step's search, as measured: 0.6 GiB of weights, about 2.2 MB per sequence, 1 GiB budget,
    # while the accounting's prior overstated a sequence 40-fold (its transient counted per sequence)
    per_sequence, weights, budget = 2_230_000, 640 * 2**20, GiB
    probe, calls = linear_memory(weights, per_sequence, budget)
    result = search_max_batch(probe, 186, budget, prior_bytes_per_sequence=int(prior_factor * per_sequence))
    assert result.measured == true_max(weights, per_sequence, budget)
    assert len(calls) <= 5


def test_the_boundarys_uncertainty_is_the_spread_of_repeated_peaks_in_sequences() -> None:
    probes = [
        Probe(57, True, 1_000_000_000, "ok"),
        Probe(58, False, 1_010_000_000, "ok"),
        Probe(57, True, 1_003_500_000, "ok"),  # the same batch again, 3.5 MB higher
        Probe(58, False, 1_011_000_000, "ok"),
    ]
    assert boundary_uncertainty(probes, 57, bytes_per_sequence=1_000_000) == 4


def test_a_boundary_whose_repeat_changes_its_verdict_is_uncertain_by_at_least_one() -> None:
    probes = [Probe(10, True, 900, "ok"), Probe(11, False, 1010, "ok"), Probe(10, False, 1001, "ok")]
    assert boundary_uncertainty(probes, 10, bytes_per_sequence=10**9) == 1


def test_identical_repeated_probes_leave_no_uncertainty() -> None:
    probes = [Probe(10, True, 900, "ok"), Probe(11, False, 1010, "ok"), Probe(10, True, 900, "ok")]
    assert boundary_uncertainty(probes, 10, bytes_per_sequence=100) == 0


def test_a_boundary_peak_within_the_between_run_margin_of_the_budget_is_uncertain_by_a_sequence() -> None:
    # One run of an A/A comparison: batch 118 fits 2.07 MiB under the budget, 119 goes 0.30 MiB over;
    # the other run measured 119 at 0.43 MiB under. Each run's repeats agreed to the byte.
    mib, budget = 2**20, 384 * 2**20
    per_sequence = 2 * mib
    base = [Probe(118, True, budget - int(2.07 * mib), "ok"), Probe(119, False, budget + int(0.30 * mib), "ok")] * 2
    head = [Probe(119, True, budget - int(0.43 * mib), "ok"), Probe(120, False, budget + int(1.58 * mib), "ok")] * 2
    assert boundary_uncertainty(base, 118, per_sequence) == 0  # the repeats alone see nothing
    assert boundary_uncertainty(base, 118, per_sequence, budget, margin_bytes=mib) == 1
    assert boundary_uncertainty(head, 119, per_sequence, budget, margin_bytes=mib) == 1


def test_a_boundary_well_clear_of_the_budget_on_both_sides_stays_exact() -> None:
    mib, budget = 2**20, 384 * 2**20
    probes = [Probe(10, True, budget - 5 * mib, "ok"), Probe(11, False, budget + 3 * mib, "ok")] * 2
    assert boundary_uncertainty(probes, 10, 8 * mib, budget, margin_bytes=mib) == 0


def test_the_between_run_margin_counts_in_sequences_when_sequences_are_small() -> None:
    kib, budget = 2**10, 10**9
    probes = [Probe(500, True, budget - 100 * kib, "ok"), Probe(501, False, budget + 156 * kib, "ok")]
    assert boundary_uncertainty(probes, 500, 256 * kib, budget, margin_bytes=1024 * kib) == 4
