"""Isolated worker processes: each cell and each max-batch probe runs in a fresh child process.

Isolation makes the numbers trustworthy and the run robust: a peak resident set or allocator
peak belongs to that cell alone, an out-of-memory or a crash in one cell leaves nothing behind
for the next, and a CUDA error cannot poison the rest of the run. Children come from a
``forkserver`` that imported torch once, so starting one costs milliseconds, not an import; the
server itself never touches CUDA, so every child starts with a clean device.

A child outlives nothing: it holds the reading end of a "lifeline" pipe whose only writer is the
parent, and a thread of its own blocked on it exits the child, silently, the moment the parent is
gone (however it went, SIGKILL included). A child that finds nobody to report to exits silently too.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

from harness.measure import protocol
from harness.measure.hostload import mark_run_root

# Modules the forkserver imports once, so that children start warm.
# torch._dynamo is imported lazily by the meta-device build and costs over a second in every child.
PRELOAD = ("torch", "torch._dynamo", "harness.model", "harness.measure.cell_worker")
POLL_S = 0.05
KILL_WAIT_S = 10.0
# glibc adapts its mmap threshold to the allocations it has seen, so identical workers could end
# with different peak resident sets; fixed thresholds make CPU peaks repeatable to well under a
# sequence's worth of cache (seen here: 1.6 MB spread without, 0.3 MB with). Read at process start.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


Status = Literal["ok", "oom", "error", "timeout", "killed"]


@dataclass(frozen=True)
class WorkerOutcome:
    """What a child returned, or why it returned nothing."""

    # oom also covers a SIGKILL the cgroup counted as an OOM kill; killed: any other SIGKILL without a
    # word (the error names the likely cause; see killed_cause)
    status: Status
    value: dict[str, Any] | None
    error: str | None
    elapsed_s: float
    exception: str | None = None  # the type name of what the child raised, when it raised
    ended_at: float | None = None  # time.monotonic() in the child when it finished (one clock for all processes)


def describe_exception(exc: BaseException) -> str:
    """One line: the exception and where it was raised (file:line in function)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    text = " ".join(traceback.format_exception_only(type(exc), exc)).strip().replace("\n", " ")
    return text + where


# Allocation failures that reach Python as other errors: a CUDA library (cuBLAS, cuDNN, cuFFT, cuSOLVER,
# cuSPARSE) that could not allocate its workspace reports its own status, and cuDNN reports a plan or
# algorithm it could not find when every candidate's workspace failed to allocate.
OUT_OF_MEMORY_MARKERS = (
    "out of memory",  # torch.OutOfMemoryError, "CUDA error: out of memory"
    "can't allocate memory",  # the CPU allocator
    "cudaerrormemoryallocation",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "cufft_alloc_failed",
    "cusolver_status_alloc_failed",
    "cusparse_status_alloc_failed",
    "unable to find a valid cudnn algorithm",
    "failed to allocate memory for the cudnn workspace",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError, MemoryError, or an error whose text says an allocation failed (see the markers)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return any(marker in text for marker in OUT_OF_MEMORY_MARKERS)


def _exit_when_orphaned(lifeline: Connection) -> None:
    """Block until the parent's end of the lifeline closes, then end this process at once."""
    with contextlib.suppress(EOFError, OSError):
        lifeline.recv_bytes()  # the parent never writes: this returns only by raising at its end
    os._exit(0)


# What a worker runs: an entry point by name (the parent's way: it never imports the worker side), or a
# module-level function.
Function = protocol.Entry | Callable[[Any], dict[str, Any]]


def _child_main(conn: Connection, lifeline: Connection, fn: Function, request: Any) -> None:
    # The parent handles Ctrl-C and ends its children; a child must not die half-way on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_when_orphaned, args=(lifeline,), daemon=True, name="lifeline").start()
    # Objects inherited from the forkserver (torch's modules) are never garbage: keep them out of
    # the collections that the timing loops run before each timed window.
    gc.freeze()
    try:
        protocol.accept(request)
        value = (protocol.resolve(fn) if isinstance(fn, protocol.Entry) else fn)(request)
        message: tuple[Any, ...] = ("ok", value, None, None, time.monotonic())
    except BaseException as exc:  # report everything, including MemoryError, to the parent
        ended_at = time.monotonic()
        status = "oom" if is_out_of_memory(exc) else "error"
        message = (status, None, describe_exception(exc), type(exc).__name__, ended_at)
    try:
        try:
            conn.send(message)
        except OSError:
            raise
        except Exception as exc:  # the value would not pickle: say so instead
            conn.send(("error", None, describe_exception(exc), type(exc).__name__, time.monotonic()))
        conn.close()
    except OSError:  # BrokenPipeError: the parent stopped listening; there is nobody to tell
        os._exit(0)


def oom_kills() -> int | None:
    """How many processes of this process's memory cgroup an out-of-memory killer has ended so far.

    cgroup v2 counts them in ``memory.events`` (``oom_kill``, the kernel's and the cgroup's OOM killer
    alike), v1 in ``memory.oom_control``; None where neither can be read.
    """
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    v2 = next((line.split(":", 2)[2] for line in lines if line.startswith("0::")), "")
    v1 = next((line.split(":", 2)[2] for line in lines if re.match(r"\d+:([^:]*,)?memory(,[^:]*)?:", line)), "")
    candidates = [
        Path("/sys/fs/cgroup", v2.lstrip("/"), "memory.events"),
        Path("/sys/fs/cgroup/memory.events"),
        Path("/sys/fs/cgroup/memory", v1.lstrip("/"), "memory.oom_control"),
        Path("/sys/fs/cgroup/memory/memory.oom_control"),  # a container sees its own cgroup at the root
    ]
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        found = re.search(r"^oom_kill (\d+)$", text, re.MULTILINE)
        if found:
            return int(found.group(1))
    return None


def killed_cause(oom_kills_before: int | None, oom_kills_after: int | None) -> str:
    """Why a worker most likely ended by SIGKILL without reporting, from the OOM-kill count around it."""
    if oom_kills_before is None or oom_kills_after is None:
        return "most likely the kernel's out-of-memory killer (its kill count cannot be read here)"
    if oom_kills_after > oom_kills_before:
        return (
            f"the out-of-memory killer: this cgroup's oom_kill count rose from {oom_kills_before} "
            f"to {oom_kills_after} meanwhile"
        )
    return "not the out-of-memory killer (this cgroup's oom_kill count did not change): another process sent it SIGKILL"


class IsolatedRunner:
    """Runs ``fn(request) -> dict`` in fresh child processes: ``fn`` an entry point of the worker side by name
    (harness/measure/protocol.py), or a module-level function."""

    def __init__(self, preload: Sequence[str] = PRELOAD) -> None:
        for name, value in MALLOC_ENV.items():  # inherited by the forkserver, and so by every worker
            os.environ.setdefault(name, value)
        mark_run_root()  # their CPU time is this run's own, not other work on the host
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(list(preload))

    @property
    def context(self) -> multiprocessing.context.ForkServerContext:
        """The forkserver context children start from (harness/run/ranks.py starts groups of them)."""
        return self._context

    def call(self, fn: Function, request: Any, timeout_s: float | None = None) -> WorkerOutcome:
        """Run ``fn(request)`` in a child and wait for it; never raises for what the child does (a request of
        another protocol included: that is an ``error`` outcome naming both)."""
        start = time.perf_counter()
        kills_before = oom_kills()
        receiver, sender = self._context.Pipe(duplex=False)
        lifeline_reader, lifeline = self._context.Pipe(duplex=False)  # this process holds the only writer
        process = self._context.Process(target=_child_main, args=(sender, lifeline_reader, fn, request), daemon=True)
        process.start()
        sender.close()
        lifeline_reader.close()
        try:
            # Sleep until the child answers or ends (no polling: a parent waking up every few milliseconds
            # takes CPU time from the worker it is waiting for), or until the timeout.
            deadline = None if timeout_s is None else start + timeout_s
            while not receiver.poll(0):
                remaining = None if deadline is None else deadline - time.perf_counter()
                if remaining is not None and remaining <= 0:
                    return WorkerOutcome(
                        "timeout",
                        None,
                        f"no answer within {timeout_s:g} s (measure.cell_timeout_s); the worker was killed",
                        time.perf_counter() - start,
                    )
                ready = multiprocessing.connection.wait([receiver, process.sentinel], timeout=remaining)
                if process.sentinel in ready and not receiver.poll(0):
                    return self._died(process, start, kills_before)
            try:
                status, value, error, exception, ended_at = receiver.recv()
            except EOFError:
                return self._died(process, start, kills_before)
            process.join()
            return WorkerOutcome(status, value, error, time.perf_counter() - start, exception, ended_at)
        finally:
            receiver.close()
            lifeline.close()
            if process.is_alive():
                process.kill()
                process.join(KILL_WAIT_S)  # a process stuck in the GPU driver may not die at once

    @staticmethod
    def _died(process: multiprocessing.process.BaseProcess, start: float, kills_before: int | None) -> WorkerOutcome:
        return died(process, start, kills_before)


def died(process: multiprocessing.process.BaseProcess, start: float, kills_before: int | None) -> WorkerOutcome:
    """The outcome of a child that ended without reporting (waits for it to end); ``start`` as perf_counter,
    ``kills_before`` the cgroup's OOM-kill count (:func:`oom_kills`) when the child started."""
    process.join()
    code = process.exitcode
    elapsed = time.perf_counter() - start
    if code is not None and code == -signal.SIGKILL:
        kills_after = oom_kills()
        cause = killed_cause(kills_before, kills_after)
        # Only a counted OOM kill is known to be one; an unexplained SIGKILL is recorded as what it was.
        counted = kills_before is not None and kills_after is not None and kills_after > kills_before
        status: Status = "oom" if counted else "killed"
        return WorkerOutcome(status, None, f"worker killed by SIGKILL before reporting: {cause}", elapsed)
    reason = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    return WorkerOutcome("error", None, f"worker died with {reason} before reporting", elapsed)
