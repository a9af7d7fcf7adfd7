"""Joining result files of one scenario measured in parts (``run --shard K/N``, a cluster's nodes).

    [result files] --check--> same scenario content, revision, timing settings, no cell twice
                   --group by target--> one RunResult per target, stability assessed over all its cells

Parts of one target pool into one file: its environment and peak bandwidth are the first part's (by
shard, then start time); every cell keeps the ``placement`` that says where each of its rounds ran, and
``merged_from`` lists the parts. Files of different targets stay apart, one merged file each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.cellkey import CellKey
from harness.errors import Problem, UserErrors
from harness.results import stability
from harness.results.schema import MergedPart, RunResult


@dataclass(frozen=True)
class Part:
    path: Path
    result: RunResult

    @property
    def order(self) -> tuple[int, str, str]:
        shard = self.result.shard
        return (shard.index if shard is not None else 0, self.result.started_utc, self.path.name)


def _differences(first: Part, part: Part, allow_revisions: bool) -> list[Problem]:
    """What keeps ``part`` from joining ``first``'s merge, one problem per field."""
    a, b, source = first.result, part.result, str(part.path)
    problems = []
    if b.scenario.sha256 != a.scenario.sha256:
        problems.append(
            Problem(
                f"scenario {b.scenario.name!r} ({b.scenario.sha256[:12]}) is not the content of "
                f"{first.path.name}'s ({a.scenario.sha256[:12]}): results of different scenarios do not merge",
                source,
                "scenario.sha256",
            )
        )
    if not allow_revisions and b.git.commit != a.git.commit:
        problems.append(
            Problem(
                f"measured at commit {b.git.short or 'unknown'}, {first.path.name} at {a.git.short or 'unknown'}; "
                "give --allow-revisions to merge results of different revisions",
                source,
                "git.commit",
            )
        )
    for name in ("device", "quick"):
        if getattr(b, name) != getattr(a, name):
            problems.append(Problem(f"{getattr(b, name)!r}, {first.path.name} has {getattr(a, name)!r}", source, name))
    if b.finished_utc is None:
        problems.append(Problem("unfinished: continue it with attnbench run --resume first", source, "finished_utc"))
    if b.pairing is not None:
        problems.append(
            Problem("one side of an interleaved comparison (attnbench ab) merges with nothing", source, "pairing")
        )
    return problems


def merge_results(parts: Sequence[tuple[Path, RunResult]], *, allow_revisions: bool = False) -> dict[str, RunResult]:
    """One merged result per target; UserErrors naming every file, field and reason that prevents it."""
    ordered = sorted((Part(path, result) for path, result in parts), key=lambda p: p.order)
    if not ordered:
        raise UserErrors([Problem("nothing to merge: no result files given", None, None)])
    problems = [p for part in ordered[1:] for p in _differences(ordered[0], part, allow_revisions)]
    by_target: dict[str, list[Part]] = {}
    for part in ordered:
        by_target.setdefault(part.result.target, []).append(part)
    for members in by_target.values():
        seen: dict[CellKey, str] = {}
        for part in members:
            for index, cell in enumerate(part.result.cells):
                if cell.key in seen:
                    problems.append(
                        Problem(f"cell {cell.key.label} is also in {seen[cell.key]}", str(part.path), f"cells[{index}]")
                    )
                seen.setdefault(cell.key, part.path.name)
    if problems:
        raise UserErrors(problems)
    return {target: _merged(members) for target, members in by_target.items()}


def _merged(members: list[Part]) -> RunResult:
    first = members[0].result
    merged = first.model_copy(
        deep=True,
        update={
            "shard": None,
            "inner_reps_from": None,  # a file name in the parts' folder, which is not the merged file's
            "started_utc": min(p.result.started_utc for p in members),
            "finished_utc": max(p.result.finished_utc or "" for p in members),
            "interruptions": [i for p in members for i in p.result.interruptions],
            "cells": [cell.model_copy(deep=True) for p in members for cell in p.result.cells],
            "merged_from": [
                MergedPart(
                    file=p.path.name,
                    shard=p.result.shard,
                    commit=p.result.git.commit,
                    started_utc=p.result.started_utc,
                    finished_utc=p.result.finished_utc,
                    cells=len(p.result.cells),
                )
                for p in members
            ],
        },
    )
    stability.assess_run(merged)  # against every cell of the target now, not each part's own
    return RunResult.model_validate(merged.model_dump())


def missing_shards(parts: Sequence[RunResult]) -> list[str]:
    """Shards ``K/N`` of the counts seen that no part measured: a merge without them is incomplete."""
    counts = {r.shard.count for r in parts if r.shard is not None}
    have = {(r.shard.index, r.shard.count) for r in parts if r.shard is not None}
    return [f"{k}/{n}" for n in sorted(counts) for k in range(1, n + 1) if (k, n) not in have]
