"""What the fault-injection tests share: a small scenario, ``attnbench`` in a real subprocess of its own
session (so that a test can signal it, or its whole process group, as a terminal or a CI runner
would), and waiting on what it writes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]

# Two cells of a four-layer stack. ``warmup_s`` sets how long each cell's worker runs: long enough
# that a test can act while a worker is busy, short enough that the suite stays quick.
SCENARIO = """
name = "faults"
[model]
d_model = 64
n_layers = 4
d_ff = 128
vocab_size = 97
dtype = "float32"
[[variant]]
name = "H16-MHA"
[[variant]]
name = "H16-MQA-CLA2"
[sweep]
batch_size = [1]
context_len = [32]
backend = ["sdpa"]
[measure]
metrics = ["decode"]
warmup_s = {warmup_s}
min_time_s = 0.01
min_samples = 5
max_samples = 10
rounds = 1
"""


def write_scenario(folder: Path, warmup_s: float = 3.0) -> Path:
    path = folder / "faults.toml"
    path.write_text(SCENARIO.format(warmup_s=warmup_s))
    return path


def environment(cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["ATTNBENCH_CACHE_DIR"] = str(cache_dir)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _default_stop_signals() -> None:
    """In the child before exec: SIGINT and SIGHUP as a terminal's foreground job has them. Started from
    a background shell job (``pytest ... &``) the suite inherits SIGINT ignored, and harness/signals.py
    rightly keeps a signal ignored at start ignored: the Ctrl-C tests would then test nohup."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def start(args: list[str], cache_dir: Path, prefix: tuple[str, ...] = (), **popen: Any) -> subprocess.Popen[str]:
    """``python -m harness ARGS`` in a new session (its pid is its process group's id), run by the
    command ``prefix`` when one is given, with the stop signals at their defaults."""
    popen.setdefault("preexec_fn", _default_stop_signals)
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "harness", *args],
        cwd=REPO,
        env=environment(cache_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **popen,
    )


def run_args(scenario: Path, out: Path, *more: str) -> list[str]:
    return ["run", str(scenario), "--device", "cpu", "--out", str(out), "--quiet", *more]


def wait_for(what: str, ready: Callable[[], Any], timeout_s: float = 120.0) -> Any:
    """Poll ``ready`` until it returns something true; that value. Fails the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def result_paths(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.json") if not p.name.startswith("."))


def read_json(path: Path) -> dict[str, Any] | None:
    """The file's JSON, or None while it is empty (a claimed name) or missing."""
    try:
        text = path.read_text()
        return json.loads(text) if text else None
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def saved(out: Path, *, cells: int = 0, peak: bool = True) -> dict[str, Any] | None:
    """The run's file once it holds the peak bandwidth and at least ``cells`` cells; else None."""
    for path in result_paths(out):
        data = read_json(path)
        if data and len(data["cells"]) >= cells and (not peak or data.get("peak_bandwidth_gbps")):
            return data
    return None


def workers(pid: int) -> list[psutil.Process]:
    """The measuring workers of the ``attnbench`` process ``pid``: children of its forkserver."""
    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    return [w for child in children for w in _children(child)]


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children()
    except psutil.NoSuchProcess:
        return []


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def all_gone(processes: list[psutil.Process], timeout_s: float) -> bool:
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    return not alive


def signal_group(process: subprocess.Popen[str], sig: signal.Signals) -> None:
    """``sig`` to the process and everything it started, as Ctrl-C in a terminal or a cancelled CI job sends it."""
    os.killpg(process.pid, sig)


def finish(process: subprocess.Popen[str], timeout_s: float = 120.0) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=timeout_s)
    return process.returncode, stdout, stderr


def assert_no_traceback(stderr: str) -> None:
    """Neither a traceback nor the last line of one (``BrokenPipeError: [Errno 32] ...``)."""
    assert "Traceback" not in stderr, stderr
    assert not re.search(r"^\w+(Error|Exception|Interrupt): ", stderr, re.MULTILINE), stderr
