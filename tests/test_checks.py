"""Self-checks of a cell's numbers: each passes on consistent numbers and fails on the broken invariant it names."""

from __future__ import annotations

import torch
from helpers_results import lognormal_samples, make_metrics

from harness.measure import checks
from harness.model.sdpa import SdpaObservation, SdpaPlan
from harness.results.schema import CellMetrics
from harness.results.summary import summarize
from harness.run.derive import ROUNDS_TIMED_ALIKE, apply_bandwidths, inner_reps, pooled_summary
from harness.variants import Variant

MQA = Variant("H128-MQA", 128, 8, 1, (0, 1))


def derived(metrics: CellMetrics, **options: object) -> dict[str, checks.Check]:
    settings: dict[str, object] = {
        "peak_gbps": 40.0,
        "vendor_gbps": None,
        "cache_bytes": None,
        "weight_bytes": 100_000_000,
        "device": "cpu",
    } | options
    return {c.name: c for c in checks.derived_checks(metrics, **settings)}  # type: ignore[arg-type]


def test_bandwidth_above_the_measured_peak_fails_and_below_it_passes() -> None:
    assert derived(make_metrics(bandwidth_gbps=39.0))["bandwidth_within_peak"].passed
    failed = derived(make_metrics(bandwidth_gbps=41.0))["bandwidth_within_peak"]
    assert not failed.passed and "decode 41.0 GB/s" in failed.detail and "40.0 GB/s" in failed.detail


def test_a_measured_peak_above_the_vendor_figure_fails() -> None:
    assert derived(make_metrics(), peak_gbps=3000.0, vendor_gbps=3350.0)["peak_within_vendor"].passed
    assert not derived(make_metrics(), peak_gbps=3500.0, vendor_gbps=3350.0)["peak_within_vendor"].passed


def test_cold_faster_than_warm_fails_only_where_the_working_set_fits_the_cache() -> None:
    metrics = make_metrics(
        decode_samples=lognormal_samples(0.010, seed=1), decode_cold_samples=lognormal_samples(0.005, seed=2)
    )
    fits = derived(metrics, cache_bytes=10 * metrics.bytes_per_step)["cold_not_faster_than_warm"]
    assert not fits.passed
    assert "cold_not_faster_than_warm" not in derived(metrics, cache_bytes=metrics.bytes_per_step // 2)


def test_cold_as_fast_as_warm_within_noise_passes() -> None:
    metrics = make_metrics(
        decode_samples=lognormal_samples(0.010, seed=1), decode_cold_samples=lognormal_samples(0.010, seed=2)
    )
    assert derived(metrics, cache_bytes=10 * metrics.bytes_per_step)["cold_not_faster_than_warm"].passed


def test_kv_cache_bytes_that_differ_from_the_accounting_fail() -> None:
    metrics = make_metrics(kv_cache_bytes=1000)
    assert not derived(metrics.model_copy(update={"kv_cache_bytes_expected": 1024}))["kv_cache_as_accounted"].passed
    assert derived(metrics.model_copy(update={"kv_cache_bytes_expected": 1000}))["kv_cache_as_accounted"].passed


def test_a_peak_memory_below_weights_and_cache_fails() -> None:
    metrics = make_metrics(peak_memory_bytes=100_000_000, kv_cache_bytes=16_000_000)
    assert not derived(metrics)["peak_memory_holds_weights_and_kv"].passed
    enough = metrics.model_copy(update={"peak_memory_bytes": 116_000_000})
    assert derived(enough, device="cuda")["peak_memory_holds_weights_and_kv"].passed


def test_the_sdpa_check_fails_when_a_kernel_reading_shared_kv_heads_existed_but_math_copied_kv() -> None:
    plan = SdpaPlan("flash", enable_gqa=True, expand_kv=False)
    check = checks.sdpa_kernel(plan, SdpaObservation("math", kv_copied=True), "cuda", torch.bfloat16, MQA)
    assert not check.passed and "ran math, the dispatcher chose flash" in check.detail


def test_the_sdpa_check_passes_a_planned_copy_where_no_fused_kernel_reads_shared_kv_heads() -> None:
    plan = SdpaPlan("efficient", enable_gqa=False, expand_kv=True)
    check = checks.sdpa_kernel(plan, SdpaObservation("efficient", kv_copied=True), "cuda", torch.float32, MQA)
    assert check.passed and "K/V repeated per query head" in check.detail


def test_throttling_counts_power_and_thermal_reasons_but_not_clock_settings() -> None:
    assert checks.throttling(["applications_clocks_setting"]).passed
    assert not checks.throttling(["sw_power_cap"]).passed


def test_another_process_on_the_gpu_fails_and_an_unknown_list_is_not_a_failure() -> None:
    assert not checks.gpu_not_shared([], [4242]).passed
    assert checks.gpu_not_shared([], []).passed
    assert checks.gpu_not_shared(None, None).passed


def test_an_energy_counter_that_did_not_advance_fails() -> None:
    assert checks.energy_counter(1000, 1500).passed
    assert not checks.energy_counter(1500, 1500).passed


def test_a_later_round_timed_differently_is_pooled_and_fails_its_check() -> None:
    first, _ = pooled_summary(
        None, {"seconds": [1.0, 1.1], "timer": "cuda-graph+events", "graph_used": True, "inner_reps": 4}
    )
    pooled, check = pooled_summary(
        first, {"seconds": [2.0, 2.1], "timer": "cuda-events", "graph_used": False, "inner_reps": 4}
    )
    assert pooled.samples == [1.0, 1.1, 2.0, 2.1] and pooled.timer == "cuda-graph+events"
    assert check is not None and check.name == ROUNDS_TIMED_ALIKE and not check.passed
    assert "timer cuda-graph+events then cuda-events" in check.detail


def test_a_later_round_timed_alike_raises_no_check_and_keeps_the_first_rounds_inner_reps() -> None:
    first, _ = pooled_summary(None, {"seconds": [1.0], "timer": "perf_counter", "inner_reps": 7})
    pooled, check = pooled_summary(first, {"seconds": [1.2], "timer": "perf_counter", "inner_reps": 7})
    assert check is None and pooled.inner_reps == 7 and pooled.process_medians == [1.0, 1.2]
    assert inner_reps(
        CellMetrics(
            decode_latency_s=pooled,
            bytes_per_step=1,
            attention_bytes_per_step=1,
            flops_per_step=1,
            kv_cache_bytes_expected=1,
        )
    ) == {"decode": 7}


def test_throughput_divides_by_the_warm_median_and_bandwidth_by_the_cold_one() -> None:
    metrics = make_metrics(decode_samples=[0.010] * 5, decode_cold_samples=[0.020] * 5)
    metrics.decode_latency_cold_s = summarize([0.020] * 5)
    apply_bandwidths(metrics, batch_size=8, peak_gbps=None)
    assert metrics.tokens_per_s == 800.0
    assert metrics.bandwidth_gbps == metrics.bytes_per_step / 0.020 / 1e9


def test_the_sdpa_check_passes_cudnn_reading_shared_kv_heads_in_place() -> None:
    # SDPA on Hopper with PyTorch 2.10+ prefers cuDNN, which takes enable_gqa: no copy, nothing suspect.
    plan = SdpaPlan("cudnn", enable_gqa=True, expand_kv=False)
    check = checks.sdpa_kernel(plan, SdpaObservation("cudnn", kv_copied=False), "cuda", torch.bfloat16, MQA)
    assert check.passed, check.detail
    assert check.detail.startswith("cudnn (no copy of K/V)")


def test_the_sdpa_check_still_fails_the_memory_efficient_kernel_on_a_copy_of_shared_kv_heads() -> None:
    plan = SdpaPlan("efficient", enable_gqa=False, expand_kv=True)
    check = checks.sdpa_kernel(plan, SdpaObservation("efficient", kv_copied=True), "cuda", torch.bfloat16, MQA)
    assert not check.passed and "a kernel reading shared KV heads exists" in check.detail
