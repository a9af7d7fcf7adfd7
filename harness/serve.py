"""A revision's runner, driven one cell-round at a time over JSON lines: the entry point of ``attnbench ab``.

``python -m harness.serve``, started in a revision's source tree, measures with that revision's own
code (runner, workers, model) while a driver decides the order of the measurements, so that two
revisions can be interleaved round by round on one machine. One JSON object per line on stdin, one
answer per line on stdout:

- ``{"op": "hello"}`` -> ``{"ok": true, "protocol": N, "features": [...]}``
- ``{"op": "open", "scenario": PATH, "device": D, "out_dir": DIR, "quick": BOOL, "pairing": {...}}``
  -> ``{"ok": true, "cells": [LABEL, ...], "target": T, "rounds": N}``
- ``{"op": "measure", "cell": LABEL, "round": R[, "inner_reps": {"decode"|"attention": N}]}`` ->
  ``{"ok": true, "status": S, "medians": {METRIC: [SECONDS, ...]}, "inner_reps": {...}}``
  (``"skipped"`` when that round was done already or the cell failed earlier; the medians of each
  latency's rounds so far, from which the driver decides whether to go on; the calls per warm sample
  the cell times with, which a round 0 given ``inner_reps`` takes instead of calibrating its own)
- ``{"op": "finish"}`` -> ``{"ok": true, "path": FILE}``, and the server exits.

A user's mistake answers ``{"ok": false, "error": LINE}``. A stop signal (the driver's, or one sent to
the whole process group) is recorded in the result file, as ``attnbench run`` does, and ends the server
with exit code 128 + the signal's number. ``PROTOCOL`` is bumped on any incompatible
change; a driver refuses a server that speaks another. Anything else the code prints goes to stderr,
so that nothing can corrupt the answers.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, Any

from harness.compare.thresholds import LATENCY_METRICS
from harness.errors import UserError
from harness.results.schema import CellResult, Pairing
from harness.run.derive import inner_reps
from harness.run.runner import Runner, RunOptions
from harness.scenario import Cell
from harness.signals import Interrupted, stop_signals

PROTOCOL = 1
# Additions a driver may use when a server lists them (older servers list none): the pairing's
# ``confidence``, each round's latency medians in the ``measure`` answer, and ``inner_reps`` in both
# directions of ``measure``.
FEATURES = ("confidence", "medians", "inner_reps")


def round_medians(cell: CellResult) -> dict[str, list[float]]:
    """Each latency's median per round so far (none for a cell that is not ``ok``)."""
    if cell.status != "ok" or cell.metrics is None:
        return {}
    summaries = {name: getattr(cell.metrics, name) for name in LATENCY_METRICS}
    return {name: list(summary.process_medians) for name, summary in summaries.items() if summary is not None}


class Server:
    """One revision's runner and the cells of its scenario, by label."""

    def __init__(self) -> None:
        self.runner: Runner | None = None
        self.cells: dict[str, Cell] = {}

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "hello":
            return {"ok": True, "protocol": PROTOCOL, "features": list(FEATURES)}
        if op == "open":
            options = RunOptions(
                scenario=request["scenario"],
                device=request.get("device", "auto"),
                out_dir=Path(request["out_dir"]),
                quick=bool(request.get("quick", False)),
                rounds=request.get("rounds"),
            )
            self.runner = Runner(options)
            pairing = Pairing.model_validate(request["pairing"]) if request.get("pairing") else None
            self.cells = {cell.label: cell for cell in self.runner.begin(pairing)}
            return {
                "ok": True,
                "cells": list(self.cells),
                "target": self.runner.result.target,
                "rounds": self.runner.rounds,
            }
        if self.runner is None:
            return {"ok": False, "error": f"{op!r} before 'open'"}
        if op == "measure":
            cell = self.cells.get(request.get("cell", ""))
            if cell is None:
                return {"ok": False, "error": f"no cell {request.get('cell')!r} in this scenario"}
            given = request.get("inner_reps")
            measured = self.runner.measure_round(cell, int(request["round"]), dict(given) if given else None)
            if measured is None:
                return {"ok": True, "status": "skipped", "medians": {}, "inner_reps": {}}
            reps = inner_reps(measured.metrics) if measured.status == "ok" and measured.metrics else {}
            return {"ok": True, "status": measured.status, "medians": round_medians(measured), "inner_reps": reps}
        if op == "finish":
            orders = request.get("orders")
            if orders and self.runner.result.pairing is not None:
                self.runner.result.pairing.orders = dict(orders)
            outcome = self.runner.finish()
            return {"ok": True, "path": str(outcome.path)}
        return {"ok": False, "error": f"unknown op {op!r}"}


def serve(requests: IO[str], answers: IO[str]) -> int:
    """Answer requests line by line until 'finish' or the end of input; the exit code."""
    server = Server()
    try:
        for line in requests:
            if not line.strip():
                continue
            try:
                request = json.loads(line)
                answer = server.handle(request)
            except UserError as exc:
                request, answer = {}, {"ok": False, "error": str(exc)}
            answers.write(json.dumps(answer) + "\n")
            answers.flush()
            if request.get("op") == "finish" and answer.get("ok"):
                return 0
        return 0
    except Interrupted as stop:
        if server.runner is not None:
            server.runner.record_interruption(stop)
        return stop.exit_code
    except BrokenPipeError:  # the driver went away: nobody to answer
        return 1
    finally:
        if server.runner is not None:
            server.runner.close()


def main() -> None:
    # The answers get a file descriptor of their own; descriptor 1 then points at stderr, so output of
    # any code this process or its workers run cannot interleave with them.
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        with stop_signals():
            code = serve(sys.stdin, answers)
    except Interrupted as stop:  # a stop that came after the last answer: nothing left to record
        code = stop.exit_code
    sys.exit(code)


if __name__ == "__main__":
    main()
