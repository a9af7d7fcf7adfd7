"""What crosses the process boundary between the parent and a worker: typed requests and entry points by name.

The parent (runner, doctor) builds a frozen request, names the worker function that takes it by its
:class:`Entry`, and hands both to an isolated worker (harness/run/worker.py). The worker resolves the
name (:func:`resolve`) and checks the request's protocol (:func:`accept`) before it runs anything. The
parent thus never imports the worker side, nor torch with it; this module imports neither, so both sides
share it.

Every record is frozen, with slots and keyword-only fields: a misspelt field is an error where the record
is built (``TypeError``) or read (``AttributeError``), never a value silently dropped. ``PROTOCOL`` is
bumped on any incompatible change of a record or entry point; a worker refuses a request of another
protocol with one line naming both. A field added with a default is compatible. What a worker returns
is a plain dict of numbers, each entry point's docstring naming its keys.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from harness.scenario.schema import ModelSpec
from harness.variants import Variant

PROTOCOL = 1
# Default seconds of CUDA-graph replays of the decode step over which NVML's energy counter is read.
ENERGY_WINDOW_S = 2.0


class ProtocolMismatch(RuntimeError):
    """A request built by code that speaks another protocol than the worker that got it."""


class NotEnoughDevices(RuntimeError):
    """A tensor-parallel group needs one CUDA device per rank (raised by measure_rank; the parent reads its name)."""


class Entry(StrEnum):
    """A worker function by name (``module:function``), resolved in the worker."""

    MEASURE_CELL = "harness.measure.cell_worker:measure_cell"
    CHOOSE_AUTO_BACKEND = "harness.measure.cell_worker:choose_auto_backend"
    PROBE_BATCH = "harness.measure.cell_worker:probe_batch"
    DESCRIBE_MACHINE = "harness.measure.cell_worker:describe_machine"
    PROBE_PEAK = "harness.measure.cell_worker:probe_peak"
    PROBE_MATMUL = "harness.measure.matmul_peak:probe_matmul"
    MEASURE_TRAIN_STEP = "harness.measure.train_step:measure_train_step"
    MEASURE_RANK = "harness.measure.tp_rank:measure_rank"


def resolve(entry: Entry) -> Callable[[Any], dict[str, Any]]:
    """The function ``entry`` names, importing its module (in a worker: preloaded by the forkserver)."""
    module, _, name = Entry(entry).value.partition(":")
    function: Callable[[Any], dict[str, Any]] = getattr(importlib.import_module(module), name)
    return function


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """What every request carries: the protocol of the code that built it."""

    protocol: int = PROTOCOL


def accept(request: object) -> None:
    """Refuse a request of another protocol (:class:`ProtocolMismatch`); anything that is no request passes."""
    if isinstance(request, Request) and request.protocol != PROTOCOL:
        raise ProtocolMismatch(
            f"{type(request).__name__} speaks worker protocol {request.protocol}, this worker {PROTOCOL}: "
            "the parent and the worker run different versions of attnbench"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineRequest(Request):
    """describe_machine: the target id and fingerprint of ``device``."""

    device: str  # cpu, cuda or cuda:N
    threads: int | None = None  # CPU: torch's intra-op threads (measure.threads); None: torch's own


@dataclass(frozen=True, slots=True, kw_only=True)
class PeakRequest(Request):
    """probe_peak and probe_matmul: the target's peak bandwidth or matmul rate, cached per target."""

    device: str
    target: str
    environment: Mapping[str, Any]  # the node's fingerprint (harness.hardware.fingerprint)


@dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    """How a worker warms up and how long it times (harness/measure/window.py, harness/run/cellround.py)."""

    warmup_s: float
    min_time_s: float
    min_samples: int
    max_samples: int
    warmup_max_s: float | None = None  # warm up until steady, at most this long
    target_ci: float | None = None  # sample until the median is known within this fraction
    max_time_s: float | None = None  # ... or for at most this long

    def window(self) -> dict[str, Any]:
        """The settings as the timing loops take them (harness/measure/timing.py, keyword arguments)."""
        return {
            "warmup_s": self.warmup_s,
            "warmup_max_s": self.warmup_max_s,
            "min_time_s": self.min_time_s,
            "target_ci": self.target_ci,
            "max_time_s": self.max_time_s,
            "min_samples": self.min_samples,
            "max_samples": self.max_samples,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class CellRequest(Request):
    """One cell to build in a worker, and how to measure it: measure_cell, choose_auto_backend, probe_batch and
    measure_train_step all take it (each reads the fields it needs)."""

    device: str  # cpu, cuda or cuda:N
    model: ModelSpec
    variant: Variant
    batch_size: int
    context_len: int
    dtype: str
    backend: str  # a backend name, or auto for choose_auto_backend
    seed: int
    threads: int | None = None  # CPU: torch's intra-op threads (measure.threads); None: torch's own
    # measure_cell
    metrics: tuple[str, ...] = ()  # measure.metrics: decode, attention, memory, ...
    timing: Timing | None = None  # required by measure_cell
    cold: bool = False  # measure cold-cache samples too
    energy_window_s: float = ENERGY_WINDOW_S
    repeat: bool = False  # a later round: timing only, with inner_reps
    graphs: bool = True  # CUDA: capture graphs (off once a failed capture broke a worker)
    inner_reps: Mapping[str, int] | None = None  # calls per warm sample, by metric, instead of calibrating
    # probe_batch
    budget_bytes: int | None = None

    def needs_timing(self) -> Timing:
        """The timing settings, which measuring requires."""
        if self.timing is None:
            raise ValueError(f"{type(self).__name__}.timing is required to time a cell")
        return self.timing


@dataclass(frozen=True, slots=True, kw_only=True)
class RankRequest(CellRequest):
    """measure_rank: one rank of a tensor-parallel group (harness/run/ranks.py fills in the last three)."""

    tp: int  # the group's size
    threads_per_rank: int | None  # CPU: the cores shared out among the ranks; None on CUDA
    rank: int = 0
    store_path: str = ""  # the file store the group meets through
    timeout_s: float = 600.0  # the group's collectives give up after this long

    @classmethod
    def of(cls, cell: CellRequest, *, tp: int, threads_per_rank: int | None) -> RankRequest:
        """The cell's request for a group of ``tp`` ranks."""
        fields = {name: getattr(cell, name) for name in CELL_FIELDS}
        return cls(**fields, tp=tp, threads_per_rank=threads_per_rank)


CELL_FIELDS = tuple(field.name for field in dataclasses.fields(CellRequest))


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckRequest(Request):
    """One check of ``attnbench doctor`` (harness/doctor.py's run_check), on ``device``."""

    device: str
    check: str = ""  # the check's function name
    fraction: float | None = None  # allocates_too_much on CUDA: cap the allocator at this fraction of the device
