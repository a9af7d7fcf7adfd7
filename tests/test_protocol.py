"""The records that cross from the parent to a worker: typed, frozen, versioned, and resolved by name."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
from helpers_requests import cell_request, rank_request

from harness.measure.protocol import (
    PROTOCOL,
    CellRequest,
    Entry,
    MachineRequest,
    ProtocolMismatch,
    RankRequest,
    Timing,
    accept,
    resolve,
)
from harness.run.worker import IsolatedRunner


def test_a_misspelt_field_is_refused_where_the_request_is_built() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'graph'"):
        cell_request(graph=False)
    with pytest.raises(TypeError, match="unexpected keyword argument 'budget'"):
        dataclasses.replace(cell_request(), budget=1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'warmup'"):
        Timing(warmup=0.1, min_time_s=0.1, min_samples=1, max_samples=2)  # type: ignore[call-arg]


def test_a_misspelt_field_is_refused_where_the_request_is_read() -> None:
    with pytest.raises(AttributeError, match="graph"):
        cell_request().graph  # type: ignore[attr-defined]  # noqa: B018


def test_a_request_cannot_be_changed_once_built() -> None:
    request = cell_request()
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.graphs = False  # type: ignore[misc]
    assert dataclasses.replace(request, graphs=False).graphs is False and request.graphs is True


def test_a_request_crosses_a_process_boundary_unchanged() -> None:
    request = cell_request(timing=Timing(warmup_s=0.1, min_time_s=0.2, min_samples=3, max_samples=9), cold=True)
    assert pickle.loads(pickle.dumps(request)) == request
    assert pickle.loads(pickle.dumps(request)).protocol == PROTOCOL


def test_a_request_of_another_protocol_is_refused_in_one_line_naming_both() -> None:
    accept(MachineRequest(device="cpu"))  # this protocol passes
    with pytest.raises(ProtocolMismatch) as refused:
        accept(MachineRequest(device="cpu", protocol=PROTOCOL + 1))
    assert str(refused.value) == (
        f"MachineRequest speaks worker protocol {PROTOCOL + 1}, this worker {PROTOCOL}: "
        "the parent and the worker run different versions of attnbench"
    )


def test_a_worker_refuses_a_request_of_another_protocol_before_running_anything() -> None:
    outcome = IsolatedRunner().call(Entry.DESCRIBE_MACHINE, MachineRequest(device="cpu", protocol=PROTOCOL + 1))
    assert outcome.status == "error" and outcome.exception == "ProtocolMismatch"
    assert outcome.error is not None and "\n" not in outcome.error
    assert f"protocol {PROTOCOL + 1}, this worker {PROTOCOL}" in outcome.error


def test_every_entry_point_names_a_function_of_the_worker_side() -> None:
    for entry in Entry:
        module, _, name = entry.value.partition(":")
        function = resolve(entry)
        assert (function.__module__, function.__name__) == (module, name)
        assert module.startswith("harness.measure.")


def test_a_rank_request_carries_every_field_of_its_cells_request() -> None:
    cell = cell_request(batch_size=3, threads=2, metrics=("decode",), inner_reps={"decode": 4})
    rank = RankRequest.of(cell, tp=2, threads_per_rank=1)
    for field in dataclasses.fields(CellRequest):
        assert getattr(rank, field.name) == getattr(cell, field.name), field.name
    assert (rank.tp, rank.threads_per_rank, rank.rank) == (2, 1, 0)
    assert rank_request(4).tp == 4


def test_measuring_without_timing_settings_says_which_field_is_missing() -> None:
    with pytest.raises(ValueError, match=r"CellRequest\.timing is required"):
        cell_request().needs_timing()
