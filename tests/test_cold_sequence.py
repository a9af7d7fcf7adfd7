"""Cold core attention on CUDA: layers back to back in one captured sequence with the evictions inside.

A CUDA stream runs its work in order; an op starts when the device is free and the host has enqueued
it, and an event is stamped when the device reaches it, so an idle device stamps an event as soon as
the host enqueues it. ``QueuedDevice`` models exactly that on the CPU, with a fixed host cost per
enqueue, to show where host gaps fall inside event pairs.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers_requests import cell_request

from harness.measure import cell_worker, timing
from harness.measure.protocol import Timing

HOST_S = 20e-6  # host time to enqueue one op (a graph replay, a kernel, an event record)
FLUSH_S = 5e-6  # device time of one L2 flush
LAYER_S = 2e-6  # device time of one layer's core attention
CLOCK_HZ = 2e9  # cycles per second of torch.cuda._sleep


class QueuedDevice:
    def __init__(self) -> None:
        self.host = 0.0
        self.free = 0.0

    def enqueue(self, duration_s: float) -> None:
        self.host += HOST_S
        self.free = max(self.free, self.host) + duration_s

    def stamp(self) -> float:
        self.host += HOST_S
        self.free = max(self.free, self.host)
        return self.free


@pytest.fixture
def device(monkeypatch: pytest.MonkeyPatch) -> QueuedDevice:
    queued = QueuedDevice()

    class Event:
        def __init__(self, enable_timing: bool = False) -> None:
            self.t = 0.0

        def record(self) -> None:
            self.t = queued.stamp()

        def synchronize(self) -> None:
            queued.host = max(queued.host, queued.free)

        def elapsed_time(self, end: Event) -> float:
            return (end.t - self.t) * 1e3  # milliseconds, as CUDA events report

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: queued.enqueue(cycles / CLOCK_HZ), raising=False)
    return queued


def test_cold_layers_in_one_captured_sequence_time_only_the_layers(device: QueuedDevice) -> None:
    n_layers = 4
    sequence = lambda: device.enqueue(n_layers * (FLUSH_S + LAYER_S))  # noqa: E731  (one graph replay)
    evictions = lambda: device.enqueue(n_layers * FLUSH_S)  # noqa: E731
    samples = timing.time_cuda_cold_sequence(sequence, evictions, min_time_s=0.0, min_samples=5, max_samples=5)
    assert samples == pytest.approx([n_layers * LAYER_S] * 5, rel=1e-6)


def test_a_graph_per_layer_between_its_own_events_counts_the_host_launch_gaps(device: QueuedDevice) -> None:
    # What cold core attention measured before: each layer replayed between its own event pair.
    layers = [lambda: device.enqueue(LAYER_S)] * 4
    samples = timing.time_cuda_parts(
        layers, lambda: device.enqueue(FLUSH_S), min_time_s=0.0, min_samples=3, max_samples=3
    )
    assert min(samples) > 4 * 4 * LAYER_S  # host gaps, not the layers, dominate


def test_cold_core_attention_on_cuda_runs_its_layers_in_one_sequence_with_the_flushes_inside(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    timed: list[tuple[str, ...]] = []

    def replay(step: Any) -> timing.Captured:
        return timing.Captured(step=step, graph_used=True)

    def cold_sequence(sequence: Any, evictions: Any, **window: Any) -> list[float]:
        for what in (sequence, evictions):
            calls.clear()
            what()
            timed.append(tuple(calls))
        return [1e-5]

    monkeypatch.setattr(timing, "capture", lambda fn, graph=True, tolerance=0.0: replay(fn))
    monkeypatch.setattr(timing, "warm_up", lambda fn, seconds, sync: None)
    monkeypatch.setattr(timing, "time_cuda_steps", lambda step, **window: ([2e-5], 1))
    monkeypatch.setattr(timing, "time_cuda_cold_sequence", cold_sequence)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(cell_worker._CellTimer, "flusher", lambda self, reads: (lambda: calls.append("flush"), "L2"))
    payload = cell_request(
        device="cuda:0", timing=Timing(warmup_s=0.0, min_time_s=0.0, min_samples=1, max_samples=1), cold=True
    )
    timer = cell_worker._CellTimer(payload, torch.bfloat16)
    parts = [lambda i=i: calls.append(f"layer {i}") for i in range(3)]
    out = timer.time("attention", lambda: None, parts, reads=[], flush_before=[True, False, True])
    assert timed == [("flush", "layer 0", "layer 1", "flush", "layer 2"), ("flush", "flush")]
    assert out["cold"]["seconds"] == [1e-5] and "one captured sequence" in out["cold"]["flush"]
