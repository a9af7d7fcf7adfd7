"""The doctor's max-batch check against a CUDA allocator faked as torch's behaves: the memory-fraction cap
bounds reserved bytes (allocations rounded up to its blocks), and cuBLAS's workspace is reserved on the
first matmul of the step beside weights and cache."""

from __future__ import annotations

import dataclasses

import pytest
from helpers_requests import cell_request

from harness import accounting, doctor
from harness.measure import cell_worker
from harness.measure.protocol import Entry, Request, resolve
from harness.run import worker
from harness.run.worker import WorkerOutcome
from harness.scenario.schema import ModelSpec
from harness.variants import Variant, sharing_map

HOPPER = {"device": "cuda", "compute_capability": "9.0", "env": {"CUBLAS_WORKSPACE_CONFIG": None}}
ROUNDING_BYTES = 2 * 2 * 2**20  # K and V of the cache each rounded up to the allocator's 2 MiB segments


class FakeCudaRunner:
    """Answers describe_machine with a Hopper fingerprint and probe_batch as a capped CUDA allocator would."""

    def __init__(self) -> None:
        model = ModelSpec(**doctor.TINY_MODEL)
        variant = Variant("H128-MQA", 128, 4, 1, sharing_map(4, 1))
        self.fixed = accounting.weight_bytes(model, variant, "bfloat16") + 32 * 2**20  # weights + cuBLAS workspace
        self.per_sequence = accounting.bytes_per_sequence(model, variant, "bfloat16", 4096)

    def call(self, entry: Entry, request: Request, timeout_s: float) -> WorkerOutcome:
        function, payload = resolve(entry), dataclasses.asdict(request)
        if function is cell_worker.describe_machine:
            return WorkerOutcome("ok", {"target": "nvidia-h100", "environment": HOPPER}, None, 0.1)
        assert function is cell_worker.probe_batch and payload["device"] == "cuda:0"
        allocated = self.fixed + payload["batch_size"] * self.per_sequence
        reserved = allocated + ROUNDING_BYTES
        if reserved > payload["budget_bytes"]:  # the cap refuses the block that would pass it
            return WorkerOutcome("oom", None, "CUDA out of memory", 0.1)
        value = {"batch_size": payload["batch_size"], "peak_bytes": reserved, "allocated_bytes": allocated}
        return WorkerOutcome("ok", value | {"fits": True}, None, 0.1)


def test_the_max_batch_check_passes_a_search_that_lands_where_the_capped_allocator_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker, "IsolatedRunner", FakeCudaRunner)
    finding = doctor._max_batch_finding("cuda:0")
    assert finding.status == "pass", finding.detail
    assert "workspace 32.0 MiB" in finding.detail


def test_a_cuda_probe_reports_the_reserved_peak_the_cap_bounds_with_the_allocated_peak_beside_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import helpers_fakecuda
    import torch

    from harness.measure.memory import MemoryPeak

    fake = helpers_fakecuda.install(monkeypatch, device_count=1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: type("P", (), {"total_memory": 4000})())
    peak = MemoryPeak(peak_allocated_bytes=900, peak_reserved_bytes=1000, process_bytes=None)
    monkeypatch.setattr(cell_worker, "_build_and_step", lambda payload, backend, fill: (None, None, None, peak))
    monkeypatch.setattr(cell_worker, "_concrete_backend", lambda payload: "sdpa")
    answer = cell_worker.probe_batch(cell_request(device="cuda:0", budget_bytes=1000, batch_size=3))
    assert answer == {"batch_size": 3, "peak_bytes": 1000, "allocated_bytes": 900, "fits": True}
    assert fake.fractions == [(0.25, 0)]
