"""GPU clocks, power, temperature, throttling and energy over a timed window, from NVML.

:class:`NvmlSampler` is a context manager: a background thread reads the device every
~50 ms while the block runs, and the total-energy counter is read at entry and exit where the
GPU has one (Volta and later). A cell samples over its timed windows (clocks, power and
throttling are those of the measured steps) and reads energy over a separate window of CUDA-graph
replays of the decode step, the same steps its latency times. Without NVML, without an NVIDIA
GPU, or on a CPU target every field of the result is None and nothing raises.

NVML's "GPU idle" reason is not throttling: it is set whenever the GPU waits for work (between
launches, or before the window starts), so it is left out of the reasons reported.
"""

from __future__ import annotations

import os
import statistics
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from harness.hardware import nvml_call, nvml_parent, nvml_session
from harness.results.schema import Telemetry

SAMPLE_INTERVAL_S = 0.05

# NVML's clock throttle ("clock event") reason bits, nvmlClocksThrottleReason* in nvml.h.
THROTTLE_REASON_BITS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
IDLE_REASON = "gpu_idle"
# The reasons that lower clocks under load: power caps and brakes, thermal and hardware slowdowns.
THROTTLING_REASONS = frozenset(
    {"sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"}
)


def decode_throttle_reasons(mask: int) -> list[str]:
    """Names of the bits set in an NVML throttle-reason mask, lowest bit first; unknown bits as hex."""
    names = []
    bit = 1
    while bit <= mask:
        if mask & bit:
            names.append(THROTTLE_REASON_BITS.get(bit, f"unknown_0x{bit:x}"))
        bit <<= 1
    return names


@dataclass(frozen=True)
class NvmlSample:
    """One reading; None where NVML could not tell."""

    sm_clock_mhz: float | None
    memory_clock_mhz: float | None
    power_w: float | None
    temperature_c: float | None
    throttle_mask: int | None


def summarise(
    samples: list[NvmlSample], energy_start_mj: int | None, energy_end_mj: int | None, tokens: int
) -> Telemetry:
    """Means of the samples, every clock-event reason seen but idle, and energy per token in joules."""

    def mean(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.fmean(known) if known else None

    mask = 0
    for sample in samples:
        mask |= sample.throttle_mask or 0
    energy_per_token_j = None
    if energy_start_mj is not None and energy_end_mj is not None and tokens > 0:
        energy_per_token_j = (energy_end_mj - energy_start_mj) / 1e3 / tokens  # counter is in millijoules
    return Telemetry(
        sm_clock_mhz=mean([s.sm_clock_mhz for s in samples]),
        memory_clock_mhz=mean([s.memory_clock_mhz for s in samples]),
        power_w=mean([s.power_w for s in samples]),
        temperature_c=mean([s.temperature_c for s in samples]),
        throttle_reasons=[reason for reason in decode_throttle_reasons(mask) if reason != IDLE_REASON],
        energy_per_token_j=energy_per_token_j,
    )


class NvmlSampler:
    """``with NvmlSampler("cuda") as sampler: <timed window>`` then ``sampler.result(tokens)``."""

    def __init__(self, device: str = "cuda", interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.device = device
        self.interval_s = interval_s
        self.samples: list[NvmlSample] = []  # raw readings of the last window
        self.energy_start_mj: int | None = None
        self.energy_end_mj: int | None = None
        self._nvml: Any = None  # (pynvml, device handle) while a window is open
        self._stack = ExitStack()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> NvmlSampler:
        self.samples = []
        self.energy_start_mj = self.energy_end_mj = None
        session = self._stack.enter_context(nvml_session(self.device))
        if session is None:
            return self
        nv, handle = session
        self._nvml = (nv, nvml_parent(nv, handle))  # a MIG instance's clocks, power and energy are its GPU's
        self.energy_start_mj = self._energy_mj()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="attnbench-nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.energy_end_mj = self._energy_mj()
        self._nvml = None
        self._stack.close()

    def result(self, tokens: int) -> Telemetry:
        """Summary of the last window; ``tokens`` generated in it give the energy per token."""
        return summarise(self.samples, self.energy_start_mj, self.energy_end_mj, tokens)

    def _run(self) -> None:
        while True:
            self.samples.append(self._read())
            if self._stop.wait(self.interval_s):
                return

    def _read(self) -> NvmlSample:
        nv, handle = self._nvml
        power_mw = nvml_call(nv, "nvmlDeviceGetPowerUsage", handle)
        mask = nvml_call(nv, "nvmlDeviceGetCurrentClocksEventReasons", handle)
        if mask is None:  # the name before NVML 12.2
            mask = nvml_call(nv, "nvmlDeviceGetCurrentClocksThrottleReasons", handle)
        return NvmlSample(
            sm_clock_mhz=nvml_call(nv, "nvmlDeviceGetClockInfo", handle, getattr(nv, "NVML_CLOCK_SM", 1)),
            memory_clock_mhz=nvml_call(nv, "nvmlDeviceGetClockInfo", handle, getattr(nv, "NVML_CLOCK_MEM", 2)),
            power_w=power_mw / 1e3 if power_mw is not None else None,
            temperature_c=nvml_call(nv, "nvmlDeviceGetTemperature", handle, getattr(nv, "NVML_TEMPERATURE_GPU", 0)),
            throttle_mask=int(mask) if mask is not None else None,
        )

    def _energy_mj(self) -> int | None:
        nv, handle = self._nvml
        energy = nvml_call(nv, "nvmlDeviceGetTotalEnergyConsumption", handle)
        return int(energy) if energy is not None else None


def other_gpu_processes(device: str) -> list[int] | None:
    """PIDs of the other processes NVML sees on this GPU (compute and graphics); None without NVML.

    In a container NVML reports host PIDs, so this process may be listed under a PID it does not
    know: when its own PID is absent, one listed process is taken to be itself.
    """
    with nvml_session(device) as session:
        if session is None:
            return None
        nv, handle = session
        pids: set[int] = set()
        for function in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            for process in nvml_call(nv, function, handle) or []:
                pid = getattr(process, "pid", None)
                if isinstance(pid, int):
                    pids.add(pid)
    own = os.getpid()
    if own in pids:
        pids.discard(own)
    elif pids:
        pids.discard(max(pids))  # one of them is this process under a host PID; which one cannot be told
    return sorted(pids)
