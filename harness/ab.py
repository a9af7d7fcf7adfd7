"""Interleaved A/B runs of two revisions on one machine (``attnbench ab``).

Sequential runs minutes apart measure the machine's drift as much as the code. Here both revisions
are checked out side by side (harness/revisions.py), each driven by a server running its own code
(``python -m harness.serve`` in its tree), and every cell is measured round by round at BASE and at
HEAD back to back, in an order drawn at random per cell and round (asv ``continuous`` and pyperf
compare revisions the same way). The drift over a round moves both sides alike; the per-round
ratios (harness/stats/paired.py) cancel it.

How many rounds (:class:`Plan`): each latency's interval is asked for a confidence that holds for all
of the comparison's latencies together (2% family-wise), and the most rounds a cell gets are the fewest
whose interval still excludes 1 with 2 round ratios on the wrong side of 1, however far (29 for the
default scenario's 80 latencies). After every round a cell stops once none of its latencies is likely to show a change
any more (harness/stats/paired.py). An unchanged revision so costs a few rounds per cell, a changed
one all of them.

Both sides time a cell with the same number of calls per warm sample: a short call is timed in
samples of several back-to-back calls, calibrated in the cell's first round and kept for its later
ones, and two sides calibrating apart could settle on 2 and 3 calls and differ by several percent
in every round for that alone (seen here: core attention at batch 1, +6% over 29 rounds of an A/A
comparison). So in round 0 the side measured first calibrates (or, as any run does, takes the count of
the newest earlier run of the scenario in its results folder) and the other is handed its count.

Every path is the caller's: the results folder and the scenario are made absolute before a server
starts in its own tree (a relative one would name a place in that tree, removed at the end).

Each side writes its own result file, marked with the pairing (``RunResult.pairing``: the shared
session, its role and revision, its partner, and which side went first in each round), under
``<out>/base/<target>/`` and ``<out>/head/<target>/``; ``attnbench compare`` on the two files (or
folders) later gives the same verdicts.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.git import repo_root
from harness.revisions import Revision, checkout
from harness.scenario.cells import expand_cells
from harness.scenario.load import load_scenario
from harness.stats.paired import (
    TOLERATED_CONTRARY,
    family_confidence,
    round_ratios,
    rounds_needed,
    rounds_tolerating,
    worth_another_round,
)

PROTOCOL = 1  # harness/serve.py speaks this version


@dataclass
class ServedRevision:
    """A revision's runner in a process of its own, spoken to one JSON line at a time."""

    role: str  # "base" or "head"
    revision: Revision
    process: subprocess.Popen[str]
    features: frozenset[str] = frozenset()  # what this revision's server offers beyond the protocol
    finished: bool = False  # it answered 'finish' and is closing its workers on its way out

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        self.send(request)
        answer = self.receive(request["op"])
        self.finished = request["op"] == "finish"
        return answer

    def send(self, request: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()

    def receive(self, op: str) -> dict[str, Any]:
        """The answer to the request sent last (``op`` names it in an error)."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise UserError(f"its runner stopped (exit code {code}) during {op!r}", source=self.label)
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise UserError(str(answer.get("error")), source=self.label)
        return answer

    @property
    def label(self) -> str:
        return f"{self.role} {self.revision.label}"

    def greet(self) -> None:
        """Read the answer to the 'hello' that :func:`serve` sent: the protocol and features it speaks."""
        hello = self.receive("hello")
        protocol = hello.get("protocol")
        if protocol != PROTOCOL:
            raise UserError(f"its runner speaks protocol {protocol}, this attnbench {PROTOCOL}", source=self.label)
        self.features = frozenset(hello.get("features") or ())


# Variables that name folders: relative, they would name another one in a server's own tree.
PATH_VARIABLES = ("ATTNBENCH_CACHE_DIR", "XDG_CACHE_HOME")


def callers_paths(env: dict[str, str]) -> dict[str, str]:
    """``env`` with its relative folders (``PATH_VARIABLES``, ``PYTHONPATH`` entries) made absolute against
    this process's working folder, so that a server started in another one reads the same places."""
    out = dict(env)
    for name in PATH_VARIABLES:
        if out.get(name):
            out[name] = str(Path(out[name]).absolute())
    if out.get("PYTHONPATH"):
        entries = out["PYTHONPATH"].split(os.pathsep)
        out["PYTHONPATH"] = os.pathsep.join(str(Path(e).absolute()) if e else e for e in entries)
    return out


@contextmanager
def serve(role: str, revision: Revision) -> Iterator[ServedRevision]:
    """Start ``python -m harness.serve`` in the revision's tree, importing that tree's code first."""
    env = callers_paths(dict(os.environ))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(revision.root), env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "harness.serve"],
        cwd=revision.root,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    served = ServedRevision(role, revision, process)
    try:
        served.send({"op": "hello"})  # answered by greet(): two servers start at once
        yield served
    finally:
        if served.finished:  # let it close its workers and exit by itself rather than stop it half-way
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=60)
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def scenario_in(revision: Revision, scenario: str) -> str:
    """The scenario file as the revision's tree has it (a path inside the repository is read there)."""
    given = Path(scenario).resolve()
    root = repo_root(Path.cwd())
    if root is not None and given.is_relative_to(root.resolve()):
        there = revision.root / given.relative_to(root.resolve())
        if not there.is_file():
            raise UserError(f"does not exist at revision {revision.spec}", source=scenario)
        return str(there)
    if not given.is_file():
        raise UserError("no such file", source=scenario)
    return str(given)


def latency_comparisons(scenario: str) -> int:
    """How many latencies one comparison of ``scenario`` decides: its cells times the latencies each is
    timed for (decode and core attention as asked, each also cold unless ``measure.cold`` is off)."""
    loaded = load_scenario(scenario)
    measure = loaded.scenario.measure
    timed = sum(metric in ("decode", "attention") for metric in measure.selected_metrics)
    return max(1, len(expand_cells(loaded.scenario, loaded.variants)) * timed * (2 if measure.cold else 1))


@dataclass(frozen=True)
class Plan:
    """How many rounds a cell gets at most, and the confidence each latency's interval is decided at."""

    rounds: int
    confidence: float
    comparisons: int  # latencies decided together (the family of the Bonferroni correction)

    @classmethod
    def for_scenario(cls, scenario: str, rounds: int | None) -> Plan:
        comparisons = latency_comparisons(scenario)
        confidence = family_confidence(comparisons)
        return cls(rounds or rounds_tolerating(TOLERATED_CONTRARY, confidence), confidence, comparisons)

    def goes_on(self, medians: dict[str, dict[str, list[float]]]) -> bool:
        """Whether a cell with these per-round medians (``{"base"|"head": {metric: [...]}}``) gets another
        round: while some latency of it could still show a change by the last round and is likely enough
        to (harness/stats/paired.py, :func:`worth_another_round`). With fewer rounds than the
        confidence needs no latency can change at all: the rounds asked are all measured."""
        if self.rounds < rounds_needed(self.confidence):
            return True
        base, head = medians.get("base", {}), medians.get("head", {})
        shared = [m for m in base if m in head and len(base[m]) == len(head[m]) and base[m]]
        return any(worth_another_round(round_ratios(base[m], head[m]), self.rounds, self.confidence) for m in shared)


@dataclass
class AbRun:
    """What an interleaved comparison measured: the two result files, and cells only one side has."""

    base_path: Path
    head_path: Path
    plan: Plan
    only_one_side: list[str] = field(default_factory=list)
    rounds_done: dict[str, int] = field(default_factory=dict)  # per cell: rounds before it stopped


def interleave(
    base_spec: str,
    head_spec: str,
    scenario: str,
    *,
    device: str,
    out_dir: Path,
    rounds: int | None = None,
    quick: bool = False,
    seed: int | None = None,
    progress: Callable[[int, int, str], None] = lambda done, total, label: None,
) -> AbRun:
    """Measure ``scenario`` at both revisions, round by round, each cell's sides in a random order, until
    each cell either has ``rounds`` rounds or can no longer show a change (:class:`Plan`)."""
    rng = random.Random(seed)
    session = uuid.uuid4().hex[:12]
    out_dir = out_dir.absolute()  # the servers work in their own trees: a relative folder would be theirs
    with ExitStack() as stack:
        base = stack.enter_context(checkout(base_spec))
        head = stack.enter_context(checkout(head_spec))
        files = {"base": scenario_in(base, scenario), "head": scenario_in(head, scenario)}
        plan = Plan.for_scenario(files["head"], rounds)
        sides = {
            "base": stack.enter_context(serve("base", base)),
            "head": stack.enter_context(serve("head", head)),
        }
        for side in sides.values():
            side.greet()
        # both sides then time each cell with the same calls per sample (module doc)
        shares_reps = all("inner_reps" in side.features for side in sides.values())
        for role, side in sides.items():
            partner = head if role == "base" else base
            pairing: dict[str, Any] = {
                "session": session,
                "role": role,
                "revision": side.revision.spec,
                "commit": side.revision.commit,
                "dirty": side.revision.dirty,
                "partner_revision": partner.spec,
                "partner_commit": partner.commit,
                "rounds": plan.rounds,
            }
            if "confidence" in side.features:
                pairing["confidence"] = plan.confidence
            request = {"op": "open", "scenario": files[role], "device": device, "quick": quick, "rounds": plan.rounds}
            side.send(request | {"out_dir": str(out_dir / role), "pairing": pairing})
        # both open at once (each describes the machine in a worker of its own): nothing is timed yet
        opened = {role: side.receive("open") for role, side in sides.items()}
        cells = [label for label in opened["head"]["cells"] if label in opened["base"]["cells"]]
        only = sorted(set(opened["head"]["cells"]) ^ set(opened["base"]["cells"]))
        orders: dict[str, list[str]] = {label: [] for label in cells}
        answers: dict[str, dict[str, dict[str, Any]]] = {label: {} for label in cells}
        going = list(cells)
        done = 0
        for round_index in range(plan.rounds):
            total = done + (plan.rounds - round_index) * len(going) * 2  # at most; cells that stop take less
            for label in going:
                order = rng.choice((("base", "head"), ("head", "base")))
                orders[label].append("".join("A" if role == "base" else "B" for role in order))
                calibrated: dict[str, int] = {}  # round 0: the first side's calls per sample, for the second
                for role in order:
                    progress(done, total, f"round {round_index + 1}: {label} at {role}")
                    asked: dict[str, Any] = {"op": "measure", "cell": label, "round": round_index}
                    if calibrated and round_index == 0 and shares_reps:
                        asked["inner_reps"] = calibrated
                    answers[label][role] = sides[role].ask(asked)
                    calibrated = dict(answers[label][role].get("inner_reps") or {})
                    done += 1
            going = [label for label in going if _goes_on(plan, answers[label])]
        progress(done, done, "finishing")
        finished = {
            role: side.ask({"op": "finish", "orders": {k: " ".join(v) for k, v in orders.items()}})
            for role, side in sides.items()
        }
    rounds_done = {label: len(order) for label, order in orders.items()}
    return AbRun(Path(finished["base"]["path"]), Path(finished["head"]["path"]), plan, only, rounds_done)


def _goes_on(plan: Plan, answers: dict[str, dict[str, Any]]) -> bool:
    """Whether a cell gets another round, from both sides' answers to its last one."""
    if set(answers) != {"base", "head"} or any(a.get("status") != "ok" for a in answers.values()):
        return False  # it failed on a side: its later rounds would be skipped there anyway
    if any("medians" not in a for a in answers.values()):
        return True  # a revision whose server does not report medians: every round
    return plan.goes_on({role: a["medians"] for role, a in answers.items()})
