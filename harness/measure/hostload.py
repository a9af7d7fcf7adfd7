"""How busy the rest of the host was while a cell was timed: other processes' CPU time and steal.

A timing on a shared machine is only as good as the machine's quiet while it ran. :class:`HostLoadMeter`
reads the kernel's CPU accounting (``/proc/stat``: busy and steal time of all CPUs) and the CPU time
of this run's own processes at the start and end of a block: what the CPUs spent busy beyond them is
other processes' work, and steal is time the hypervisor gave this machine's CPUs to other guests.

This run's own processes are the tree under the process that started it (``attnbench run``, or
``attnbench ab`` with both revisions' servers): the command line marks itself in the environment
(:func:`mark_run_root`), every process it starts inherits the mark, and a worker sums the CPU time of
that process and all its descendants, itself included. The parent waiting for a worker, the
forkserver and the progress bar are the harness's own cost, which it keeps small (the parent sleeps
until the worker answers); counting them as "other work" would flag a quiet host as busy. (A process
of the tree that ends during the block takes its CPU time with it, which then reads as other work:
none does while a worker times.)

Other work and steal are seconds of CPU time; divided by the block's wall time they are the average
number of cores taken from the measurement. Linux only; elsewhere the reading is None.

The kernel counts in clock ticks (``SC_CLK_TCK``, usually 100 per second), so a block shorter than a
few ticks reads coarsely; cells are timed for far longer.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psutil

PROC_STAT = Path("/proc/stat")
# The pid of the process whose tree is this run's own (set once, by the first process of a run).
RUN_ROOT_ENV = "ATTNBENCH_RUN_ROOT"


def mark_run_root() -> None:
    """Make this process the root of the run's process tree, unless a process above it already is."""
    os.environ.setdefault(RUN_ROOT_ENV, str(os.getpid()))


def run_tree_cpu_s() -> float:
    """User + system seconds of the run's processes (the marked root and its descendants, and this one),
    each counting all its threads; this process alone where no root is marked or it has gone."""
    own = os.times()
    total = own.user + own.system
    try:
        root = psutil.Process(int(os.environ[RUN_ROOT_ENV]))
        tree = [root, *root.children(recursive=True)]
    except (KeyError, ValueError, psutil.Error):
        return total
    for process in tree:
        if process.pid == os.getpid():
            continue
        try:
            times = process.cpu_times()
        except psutil.Error:  # ended meanwhile
            continue
        total += times.user + times.system
    return total


@dataclass(frozen=True)
class CpuTimes:
    """System-wide CPU time (seconds, all CPUs) and this process's own, at one moment."""

    busy_s: float  # user + nice + system + irq + softirq over all CPUs
    steal_s: float
    own_s: float  # user + system time of this run's processes (run_tree_cpu_s), all their threads
    wall_s: float  # perf_counter


def parse_proc_stat(text: str, ticks_per_s: float) -> tuple[float, float] | None:
    """(busy seconds, steal seconds) from the aggregate ``cpu`` line of /proc/stat; None if absent.

    Columns (proc(5)): user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    already counted in user, so it is not added again.
    """
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            values = [int(v) for v in fields[1:]] + [0] * 8
            user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
            return (user + nice + system + irq + softirq) / ticks_per_s, steal / ticks_per_s
    return None


def read_cpu_times(stat: Path = PROC_STAT) -> CpuTimes | None:
    """The current :class:`CpuTimes`, or None where /proc/stat cannot be read."""
    try:
        parsed = parse_proc_stat(stat.read_text(), float(os.sysconf("SC_CLK_TCK")))
    except (OSError, ValueError):
        return None
    if parsed is None:
        return None
    return CpuTimes(busy_s=parsed[0], steal_s=parsed[1], own_s=run_tree_cpu_s(), wall_s=time.perf_counter())


def host_load(start: CpuTimes, end: CpuTimes, cores: int) -> dict[str, float]:
    """Other processes' CPU seconds, steal seconds and wall seconds between two readings."""
    other = max(0.0, (end.busy_s - start.busy_s) - (end.own_s - start.own_s))
    return {
        "wall_s": end.wall_s - start.wall_s,
        "other_cpu_s": other,
        "steal_s": max(0.0, end.steal_s - start.steal_s),
        "cores": float(cores),
    }


class HostLoadMeter:
    """``with HostLoadMeter() as meter: <timed block>`` then ``meter.result`` (None off Linux)."""

    def __init__(self, stat: Path = PROC_STAT) -> None:
        self.stat = stat
        self.result: dict[str, float] | None = None
        self._start: CpuTimes | None = None

    def __enter__(self) -> HostLoadMeter:
        self._start = read_cpu_times(self.stat)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        end = read_cpu_times(self.stat)
        if self._start is not None and end is not None:
            self.result = host_load(self._start, end, os.cpu_count() or 1)
