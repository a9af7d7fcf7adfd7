"""Isolated workers: every way a child can end is reported, none raises in the parent."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from harness.run.worker import IsolatedRunner, describe_exception, is_out_of_memory


def returns_payload(payload: dict[str, Any]) -> dict[str, Any]:
    return {"echo": payload["x"], "pid": os.getpid()}


def raises_value_error(payload: dict[str, Any]) -> dict[str, Any]:
    raise ValueError("bad shape")


def raises_memory_error(payload: dict[str, Any]) -> dict[str, Any]:
    raise MemoryError()


def kills_itself(payload: dict[str, Any]) -> dict[str, Any]:
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


def exits_quietly(payload: dict[str, Any]) -> dict[str, Any]:
    os._exit(3)


def hangs(payload: dict[str, Any]) -> dict[str, Any]:
    time.sleep(60)
    return {}


@pytest.fixture(scope="module")
def workers() -> IsolatedRunner:
    return IsolatedRunner(preload=())


def test_a_child_returns_its_value_from_another_process(workers: IsolatedRunner):
    outcome = workers.call(returns_payload, {"x": 41})
    assert outcome.status == "ok"
    assert outcome.value is not None and outcome.value["echo"] == 41
    assert outcome.value["pid"] != os.getpid()


def test_an_exception_in_the_child_is_an_error_naming_it_and_where(workers: IsolatedRunner):
    outcome = workers.call(raises_value_error, {})
    assert outcome.status == "error"
    assert outcome.error is not None
    assert outcome.error.startswith("ValueError: bad shape (at test_worker.py:")


def test_a_memory_error_in_the_child_is_an_out_of_memory(workers: IsolatedRunner):
    assert workers.call(raises_memory_error, {}).status == "oom"


def test_a_child_killed_by_sigkill_is_recorded_as_killed_with_its_likely_cause(workers: IsolatedRunner, monkeypatch):
    monkeypatch.setattr("harness.run.worker.oom_kills", lambda: 4)  # the OOM killer did not act
    outcome = workers.call(kills_itself, {})
    assert outcome.status == "killed"
    assert outcome.error is not None and "SIGKILL" in outcome.error
    assert "not the out-of-memory killer" in outcome.error


def test_a_sigkill_the_cgroup_counted_as_an_oom_kill_is_an_out_of_memory(workers: IsolatedRunner, monkeypatch):
    counts = iter([4, 5])  # before and after the call
    monkeypatch.setattr("harness.run.worker.oom_kills", lambda: next(counts))
    outcome = workers.call(kills_itself, {})
    assert outcome.status == "oom"
    assert outcome.error is not None and "rose from 4 to 5" in outcome.error


def test_an_unexplained_sigkill_says_the_oom_killer_is_the_likely_cause(workers: IsolatedRunner, monkeypatch):
    monkeypatch.setattr("harness.run.worker.oom_kills", lambda: None)  # no cgroup counters to read
    outcome = workers.call(kills_itself, {})
    assert outcome.status == "killed"
    assert outcome.error is not None and "most likely the kernel's out-of-memory killer" in outcome.error


def test_a_child_that_exits_without_reporting_is_an_error_with_its_exit_code(workers: IsolatedRunner):
    outcome = workers.call(exits_quietly, {})
    assert (outcome.status, outcome.error) == ("error", "worker died with exit code 3 before reporting")


def test_allocator_messages_count_as_out_of_memory():
    cpu = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 bytes")
    assert is_out_of_memory(cpu)
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


@pytest.mark.parametrize(
    "message",
    [
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
        "Unable to find a valid cuDNN algorithm to run convolution",
        "CUDA driver error: cudaErrorMemoryAllocation",
    ],
)
def test_cuda_library_allocation_failures_count_as_out_of_memory(message: str) -> None:
    assert is_out_of_memory(RuntimeError(message))


def test_cuda_library_errors_that_are_not_allocations_stay_errors() -> None:
    assert not is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_NOT_SUPPORTED when calling cublasGemmEx"))
    assert not is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_BAD_PARAM"))


def test_a_child_that_does_not_answer_in_time_is_killed_and_reported_as_a_timeout(workers: IsolatedRunner):
    start = time.perf_counter()
    outcome = workers.call(hangs, {}, timeout_s=0.5)
    assert outcome.status == "timeout"
    assert outcome.error is not None and "0.5 s" in outcome.error
    assert time.perf_counter() - start < 10


def test_an_exception_names_its_type_for_the_parent(workers: IsolatedRunner):
    assert workers.call(raises_value_error, {}).exception == "ValueError"
    assert workers.call(returns_payload, {"x": 1}).exception is None


def test_describe_exception_is_one_line():
    try:
        raise KeyError("a\nb")
    except KeyError as exc:
        assert "\n" not in describe_exception(exc)
