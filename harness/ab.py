"""Interleaved A/B runs of two revisions on one machine (``attnbench ab``).

Sequential runs minutes apart measure the machine's drift as much as the code. Here both revisions
are checked out side by side (harness/revisions.py), each driven by a server running its own code
(``python -m harness.serve`` in its tree), and every cell is measured round by round at BASE and at
HEAD back to back, in an order drawn at random per cell and round (asv ``continuous`` and pyperf
compare revisions the same way). The drift over a round moves both sides alike; the per-round
ratios (harness/compare/paired.py) cancel it.

Each side writes its own result file, marked with the pairing (``RunResult.pairing``: the shared
session, its role and revision, its partner, and which side went first in each round), under
``<out>/base/<target>/`` and ``<out>/head/<target>/``; ``attnbench compare`` on the two files (or
folders) later gives the same verdicts.
"""

from __future__ import annotations

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
from harness.results.gitrev import repo_root
from harness.revisions import Revision, checkout

PROTOCOL = 1  # harness/serve.py speaks this version
DEFAULT_ROUNDS = 6  # the fewest whose median-ratio interval reaches 95% (harness/compare/paired.py)


@dataclass
class ServedRevision:
    """A revision's runner in a process of its own, spoken to one JSON line at a time."""

    role: str  # "base" or "head"
    revision: Revision
    process: subprocess.Popen[str]

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise UserError(f"its runner stopped (exit code {code}) during {request['op']!r}", source=self.label)
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise UserError(str(answer.get("error")), source=self.label)
        return answer

    @property
    def label(self) -> str:
        return f"{self.role} {self.revision.label}"


@contextmanager
def serve(role: str, revision: Revision) -> Iterator[ServedRevision]:
    """Start ``python -m harness.serve`` in the revision's tree, importing that tree's code first."""
    env = dict(os.environ)
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
        protocol = served.ask({"op": "hello"}).get("protocol")
        if protocol != PROTOCOL:
            raise UserError(f"its runner speaks protocol {protocol}, this attnbench {PROTOCOL}", source=served.label)
        yield served
    finally:
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


@dataclass
class AbRun:
    """What an interleaved comparison measured: the two result files, and cells only one side has."""

    base_path: Path
    head_path: Path
    only_one_side: list[str] = field(default_factory=list)


def interleave(
    base_spec: str,
    head_spec: str,
    scenario: str,
    *,
    device: str,
    out_dir: Path,
    rounds: int = DEFAULT_ROUNDS,
    quick: bool = False,
    seed: int | None = None,
    progress: Callable[[int, int, str], None] = lambda done, total, label: None,
) -> AbRun:
    """Measure ``scenario`` at both revisions, round by round, each cell's sides in a random order."""
    rng = random.Random(seed)
    session = uuid.uuid4().hex[:12]
    with ExitStack() as stack:
        base = stack.enter_context(checkout(base_spec))
        head = stack.enter_context(checkout(head_spec))
        files = {"base": scenario_in(base, scenario), "head": scenario_in(head, scenario)}
        sides = {
            "base": stack.enter_context(serve("base", base)),
            "head": stack.enter_context(serve("head", head)),
        }
        opened = {}
        for role, side in sides.items():
            partner = head if role == "base" else base
            pairing = {
                "session": session,
                "role": role,
                "revision": side.revision.spec,
                "commit": side.revision.commit,
                "dirty": side.revision.dirty,
                "partner_revision": partner.spec,
                "partner_commit": partner.commit,
                "rounds": rounds,
            }
            request = {"op": "open", "scenario": files[role], "device": device, "quick": quick, "rounds": rounds}
            opened[role] = side.ask(request | {"out_dir": str(out_dir / role), "pairing": pairing})
        cells = [label for label in opened["head"]["cells"] if label in opened["base"]["cells"]]
        only = sorted(set(opened["head"]["cells"]) ^ set(opened["base"]["cells"]))
        orders: dict[str, list[str]] = {label: [] for label in cells}
        total, done = rounds * len(cells) * 2, 0
        for round_index in range(rounds):
            for label in cells:
                order = rng.choice((("base", "head"), ("head", "base")))
                orders[label].append("".join("A" if role == "base" else "B" for role in order))
                for role in order:
                    progress(done, total, f"round {round_index + 1}: {label} at {role}")
                    sides[role].ask({"op": "measure", "cell": label, "round": round_index})
                    done += 1
        progress(done, total, "finishing")
        finished = {
            role: side.ask({"op": "finish", "orders": {k: " ".join(v) for k, v in orders.items()}})
            for role, side in sides.items()
        }
    return AbRun(Path(finished["base"]["path"]), Path(finished["head"]["path"]), only)
