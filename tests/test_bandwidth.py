"""Peak bandwidth: CPU probe sizing and numbers, the per-target cache; CUDA probe on GPUs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.measure import bandwidth
from harness.measure.bandwidth import (
    PeakBandwidth,
    cpu_probe_bytes,
    default_cache_dir,
    load_or_measure_peak,
    measure_peak_cpu,
    measure_peak_cuda,
    peak_cache_path,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
MiB = 2**20

ENV: dict[str, Any] = {"target": "cpu-test-2c", "cpu_model": "Test", "logical_cores": 2, "torch_version": "2.13"}


class CountingProbe:
    """Stands in for the real probe: returns a fixed peak and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, device: str, env: dict[str, Any]) -> PeakBandwidth:
        self.calls += 1
        return PeakBandwidth(read_gbps=20.0, copy_gbps=15.0, vendor_gbps=None, buffer_bytes=4096, method="fake")


def test_cpu_probe_buffer_is_at_least_256_mib_or_8x_the_llc() -> None:
    assert cpu_probe_bytes(32 * MiB, None) == 256 * MiB
    assert cpu_probe_bytes(64 * MiB, None) == 512 * MiB
    assert cpu_probe_bytes(None, None) == 256 * MiB


def test_cpu_probe_buffer_is_bounded_by_available_memory() -> None:
    assert cpu_probe_bytes(32 * MiB, 400 * MiB) == 50 * MiB  # two buffers in a quarter of what is free


def test_cpu_probe_reports_positive_read_and_copy_bandwidth() -> None:
    peak = measure_peak_cpu(buffer_bytes=16 * MiB, repeats=2)
    assert peak.read_gbps > 0 and peak.copy_gbps > 0
    assert peak.buffer_bytes == 16 * MiB
    assert peak.vendor_gbps is None
    assert peak.host_other_cores is None or peak.host_other_cores >= 0  # None where /proc/stat is unreadable


def test_measured_peak_is_the_higher_of_read_and_copy() -> None:
    assert CountingProbe()("cpu", ENV).measured_gbps == 20.0


def test_load_or_measure_peak_reuses_the_cached_peak_while_the_fingerprint_matches(tmp_path: Path) -> None:
    probe = CountingProbe()
    first = load_or_measure_peak("cpu-test-2c", "cpu", tmp_path, env=ENV, measure=probe)
    second = load_or_measure_peak("cpu-test-2c", "cpu", tmp_path, env=ENV, measure=probe)
    assert probe.calls == 1
    assert first == second
    assert json.loads(peak_cache_path("cpu-test-2c", tmp_path).read_text())["peak"]["read_gbps"] == 20.0


def test_load_or_measure_peak_measures_again_when_the_fingerprint_changes(tmp_path: Path) -> None:
    probe = CountingProbe()
    load_or_measure_peak("cpu-test-2c", "cpu", tmp_path, env=ENV, measure=probe)
    load_or_measure_peak("cpu-test-2c", "cpu", tmp_path, env={**ENV, "torch_version": "2.14"}, measure=probe)
    assert probe.calls == 2


def test_load_or_measure_peak_measures_again_over_a_corrupt_cache_file(tmp_path: Path) -> None:
    path = peak_cache_path("cpu-test-2c", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    probe = CountingProbe()
    load_or_measure_peak("cpu-test-2c", "cpu", tmp_path, env=ENV, measure=probe)
    assert probe.calls == 1
    assert json.loads(path.read_text())["fingerprint"]["target"] == "cpu-test-2c"


def fixed_probe(read_gbps: float, vendor_gbps: float | None) -> Any:
    def probe(device: str, env: dict[str, Any]) -> PeakBandwidth:
        return PeakBandwidth(read_gbps=read_gbps, copy_gbps=1.0, vendor_gbps=vendor_gbps, buffer_bytes=4096, method="")

    return probe


def test_a_gpu_peak_far_below_the_vendor_figure_is_returned_with_a_warning_and_not_cached(tmp_path: Path) -> None:
    peak = load_or_measure_peak("nvidia-x", "cuda", tmp_path, env=ENV, measure=fixed_probe(3000.0, 4800.0))
    assert peak.warning is not None and "below 80%" in peak.warning
    assert not peak_cache_path("nvidia-x", tmp_path).exists()


def test_a_gpu_peak_near_the_vendor_figure_is_cached_without_a_warning(tmp_path: Path) -> None:
    peak = load_or_measure_peak("nvidia-x", "cuda", tmp_path, env=ENV, measure=fixed_probe(4300.0, 4800.0))
    assert peak.warning is None
    assert json.loads(peak_cache_path("nvidia-x", tmp_path).read_text())["peak"]["read_gbps"] == 4300.0


def contended_probe(other_cores: float | None) -> Any:
    def probe(device: str, env: dict[str, Any]) -> PeakBandwidth:
        return PeakBandwidth(
            read_gbps=5.1, copy_gbps=4.0, vendor_gbps=None, buffer_bytes=4096, method="", host_other_cores=other_cores
        )

    return probe


def test_a_cpu_peak_probed_while_other_work_took_a_core_is_returned_with_a_warning_and_not_cached(
    tmp_path: Path,
) -> None:
    peak = load_or_measure_peak("cpu-test-2c", "cpu", tmp_path, env=ENV, measure=contended_probe(0.93))
    assert peak.warning is not None and peak.warning.startswith("other work took 0.93 cores while the probe ran")
    assert not peak_cache_path("cpu-test-2c", tmp_path).exists()


@pytest.mark.parametrize("other_cores", [0.02, None])
def test_a_cpu_peak_probed_on_a_quiet_host_or_where_load_is_unknown_is_cached(
    tmp_path: Path, other_cores: float | None
) -> None:
    peak = load_or_measure_peak("cpu-test-2c", "cpu", tmp_path, env=ENV, measure=contended_probe(other_cores))
    assert peak.warning is None and peak_cache_path("cpu-test-2c", tmp_path).exists()


def test_every_probe_warms_up_for_at_least_the_warmup_time_before_its_repeats(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[float] = []
    monkeypatch.setattr(bandwidth, "WARMUP_S", 0.05)
    before = time.perf_counter()
    bandwidth._best_seconds(lambda: calls.append(time.perf_counter()), repeats=3)
    assert len(calls) - 3 >= 2  # at least two warm-up calls
    assert calls[-3] - before >= 0.05  # the first timed repeat comes after the warm-up time


def test_cache_dir_follows_attnbench_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path


@pytest.mark.cuda
@needs_cuda
def test_cuda_probe_reports_copy_and_read_bandwidth_over_a_gib() -> None:
    peak = measure_peak_cuda("cuda")
    assert peak.buffer_bytes >= 2**29
    assert peak.copy_gbps > 100 and peak.read_gbps > 100
