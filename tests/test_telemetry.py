"""NVML telemetry: throttle-reason decoding, summaries, a fake NVML, and the no-NVML fallback."""

from __future__ import annotations

import sys
import time
import types
from typing import Any

import pytest
import torch

from harness import hardware
from harness.measure.telemetry import NvmlSample, NvmlSampler, decode_throttle_reasons, summarise
from harness.results.schema import Telemetry


def test_throttle_mask_decodes_into_reason_names_lowest_bit_first() -> None:
    assert decode_throttle_reasons(0x4 | 0x40) == ["sw_power_cap", "hw_thermal_slowdown"]
    assert decode_throttle_reasons(0) == []
    assert decode_throttle_reasons(0x800) == ["unknown_0x800"]


def test_summary_takes_means_and_energy_per_token_and_leaves_the_idle_reason_out() -> None:
    samples = [NvmlSample(1800, 2600, 500.0, 60, 0x1), NvmlSample(1900, 2600, 700.0, 62, 0x4)]
    summary = summarise(samples, energy_start_mj=1_000_000, energy_end_mj=1_012_000, tokens=64)
    assert summary == Telemetry(
        sm_clock_mhz=1850,
        memory_clock_mhz=2600,
        power_w=600.0,
        temperature_c=61,
        throttle_reasons=["sw_power_cap"],  # idle is waiting for work, not throttling
        energy_per_token_j=12.0 / 64,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on a machine without an NVIDIA GPU")
def test_sampler_without_an_nvidia_gpu_gives_all_fields_none() -> None:
    with NvmlSampler("cuda", interval_s=0.001) as sampler:
        time.sleep(0.005)
    assert sampler.result(tokens=10) == Telemetry()


def test_sampler_on_a_cpu_device_gives_all_fields_none() -> None:
    with NvmlSampler("cpu") as sampler:
        pass
    assert sampler.result(tokens=10) == Telemetry()


def fake_nvml() -> Any:
    """A stand-in for pynvml with one GPU at fixed readings and an energy counter that advances 5 J per read."""
    nvml = types.SimpleNamespace(NVML_CLOCK_SM=1, NVML_CLOCK_MEM=2, NVML_TEMPERATURE_GPU=0, energy_mj=0)

    def energy(handle: object) -> int:
        nvml.energy_mj += 5000
        return int(nvml.energy_mj)

    nvml.nvmlInit = lambda: None
    nvml.nvmlShutdown = lambda: None
    nvml.nvmlDeviceGetHandleByIndex = lambda index: "gpu0"
    nvml.nvmlDeviceGetCount = lambda: 1
    nvml.nvmlDeviceGetClockInfo = lambda handle, clock: {1: 1980, 2: 2619}[clock]
    nvml.nvmlDeviceGetPowerUsage = lambda handle: 350_000  # milliwatts
    nvml.nvmlDeviceGetTemperature = lambda handle, sensor: 55
    nvml.nvmlDeviceGetCurrentClocksEventReasons = lambda handle: 0x4
    nvml.nvmlDeviceGetTotalEnergyConsumption = energy
    return nvml


def test_sampler_with_nvml_reports_means_throttling_and_energy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # ordinal 0, no torch CUDA properties
    monkeypatch.setattr(hardware, "_cuda_device_count", lambda: 1)  # one GPU seen by CUDA and by NVML
    with NvmlSampler("cuda:0", interval_s=0.001) as sampler:
        time.sleep(0.01)
    result = sampler.result(tokens=10)
    assert len(sampler.samples) >= 1
    assert (result.sm_clock_mhz, result.memory_clock_mhz, result.power_w) == (1980, 2619, 350.0)
    assert result.temperature_c == 55
    assert result.throttle_reasons == ["sw_power_cap"]
    assert result.energy_per_token_j == pytest.approx(0.5)  # 5 J between the two reads over 10 tokens
