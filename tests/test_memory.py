"""Peak memory trackers: CPU resident set during a block; CUDA allocator peak on GPUs."""

from __future__ import annotations

import pytest
import torch

from harness.measure.memory import CpuMemoryTracker, CudaMemoryTracker, baseline_rss_bytes, nvml_process_bytes

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
MB = 10**6


def test_cpu_tracker_sees_a_200mb_tensor_allocated_and_freed_inside_the_block() -> None:
    tracker = CpuMemoryTracker()
    with tracker.track():
        block = torch.ones(200 * MB, dtype=torch.uint8)  # ones: every page is touched
        del block
    peak = tracker.result()
    assert peak.peak_allocated_bytes is not None and 190 * MB <= peak.peak_allocated_bytes <= 260 * MB
    assert peak.process_bytes is not None and peak.process_bytes >= peak.peak_allocated_bytes


def test_cpu_tracker_result_before_a_block_raises() -> None:
    with pytest.raises(RuntimeError, match="before a track"):
        CpuMemoryTracker().result()


def test_baseline_rss_is_positive() -> None:
    assert baseline_rss_bytes() > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on a machine without an NVIDIA GPU")
def test_nvml_process_bytes_is_none_without_an_nvidia_gpu() -> None:
    assert nvml_process_bytes("cuda") is None


@pytest.mark.cuda
@needs_cuda
def test_cuda_tracker_peak_includes_a_256mib_tensor() -> None:
    tracker = CudaMemoryTracker("cuda")
    with tracker.track():
        block = torch.empty(2**28, dtype=torch.uint8, device="cuda")
        del block
    peak = tracker.result()
    assert peak.peak_allocated_bytes is not None and peak.peak_allocated_bytes >= 2**28
    assert peak.peak_reserved_bytes is not None and peak.peak_reserved_bytes >= peak.peak_allocated_bytes
