"""The two sides of a comparison: result files, folders, or results committed at a git revision."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.errors import UserError
from harness.results import gitrev
from harness.results.schema import RunResult
from harness.results.store import load_result, newest_results


@dataclass(frozen=True)
class Side:
    """One side of a comparison: the argument as given, what it was read as, and its results."""

    spec: str
    kind: Literal["file", "folder", "revision"]
    results: tuple[RunResult, ...]

    @property
    def target(self) -> str:
        return self.results[0].target

    @property
    def commits(self) -> list[str]:
        return sorted({r.git.short or "nogit" for r in self.results})


def _local_side(spec: str) -> Side:
    path = Path(spec)
    if path.is_file():
        return Side(spec, "file", (load_result(path),))
    newest = newest_results(path)
    if not newest:
        raise UserError("holds no result files", source=spec)
    targets = sorted({target for target, _ in newest})
    if len(targets) > 1:
        raise UserError(
            f"holds results for several targets ({', '.join(targets)}); "
            f"pass one target's folder, e.g. {path / targets[0]}",
            source=spec,
        )
    return Side(spec, "folder", tuple(load_result(newest[key]) for key in sorted(newest)))


def _revision_side(spec: str, target: str, scenarios: Sequence[str] | None, cwd: Path | None) -> Side:
    return Side(spec, "revision", tuple(gitrev.committed_results(spec, target, scenarios, cwd)))


def _shared_committed_target(base: str, head: str, cwd: Path | None) -> str:
    base_targets, head_targets = gitrev.committed_targets(base, cwd), gitrev.committed_targets(head, cwd)
    common = sorted(set(base_targets) & set(head_targets))
    if len(common) == 1:
        return common[0]
    if not common:
        raise UserError(
            f"no target has committed results at both revisions (base: {', '.join(base_targets) or 'none'}; "
            f"head: {', '.join(head_targets) or 'none'})",
            source=f"{base}..{head}",
        )
    raise UserError(f"several targets have results at both revisions ({', '.join(common)}); choose one with --target")


def load_sides(base: str, head: str, target: str | None = None, cwd: Path | None = None) -> tuple[Side, Side]:
    """Read both sides; a revision takes the target (and scenarios) of the other side (module doc)."""
    base_local, head_local = Path(base).exists(), Path(head).exists()
    if base_local and head_local:
        return _local_side(base), _local_side(head)
    if base_local or head_local:
        local = _local_side(base if base_local else head)
        scenarios = [r.scenario.name for r in local.results]
        other = _revision_side(head if base_local else base, target or local.target, scenarios, cwd)
        return (local, other) if base_local else (other, local)
    chosen = target or _shared_committed_target(base, head, cwd)
    return _revision_side(base, chosen, None, cwd), _revision_side(head, chosen, None, cwd)
