"""A run's result files: one per hardware target, claimed, locked while written, reopened to resume.

A new file's name is claimed (created empty, exclusively) before it is written, so that two runs
started in the same second never overwrite each other. While a run writes a file it holds a lock on
it (``.<file>.lock``, harness/results/lock.py), so that no ``--resume`` elsewhere writes it too. A
save that fails (a full disk) leaves the last good file in place and stops the run with a
RunFailure that says so.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.cellkey import CellKey
from harness.compare.comparable import setting_differences
from harness.errors import RunFailure, UserError
from harness.git import run_git
from harness.inputs import MIB
from harness.results.lock import AdvisoryLock, file_lock
from harness.results.schema import GitInfo, RunResult, ScenarioRef, Shard
from harness.results.store import claim_result_path, load_result, result_files, save_result
from harness.run.derive import inner_reps
from harness.scenario import LoadedScenario

# Where a tree without .git (a copy sent to a GPU machine) says which commit it is: this variable, else this
# file in the working directory or the project's root; benchmarks/gpu_validate.sh sets and writes both.
COMMIT_ENV = "ATTNBENCH_COMMIT"
COMMIT_FILE = ".attnbench-commit"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
_COMMIT = re.compile(r"[0-9a-f]{7,40}")


def git_info(cwd: Path | None = None) -> GitInfo:
    """The commit of the working tree and whether tracked files differ from it.

    Outside a git checkout, the commit named by ``$ATTNBENCH_COMMIT`` or ``.attnbench-commit``
    (``<sha> [clean|dirty]``); UserError when neither exists, since a result must say what measured it.
    """

    def git(*args: str) -> str | None:
        try:
            out = run_git(list(args), cwd)
        except UserError:  # no git, or none that answers: the recorded commit serves
            return None
        return out.stdout.strip() if out.ok else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return recorded_commit(os.environ, [cwd or Path.cwd(), PROJECT_ROOT])
    status = git("status", "--porcelain", "--untracked-files=no")
    return GitInfo(
        commit=commit,
        short=git("rev-parse", "--short", "HEAD"),
        dirty=None if status is None else bool(status),
        branch=git("rev-parse", "--abbrev-ref", "HEAD"),
    )


def recorded_commit(environ: Mapping[str, str], folders: list[Path]) -> GitInfo:
    """The commit a tree without .git was copied from, from ``$ATTNBENCH_COMMIT`` or ``.attnbench-commit``."""
    text, source = environ.get(COMMIT_ENV, "").strip(), f"${COMMIT_ENV}"
    for folder in folders if not text else []:
        with contextlib.suppress(OSError):
            text, source = (folder / COMMIT_FILE).read_text().strip(), str(folder / COMMIT_FILE)
            break
    if not text:
        raise UserError(
            f"not a git checkout, and neither ${COMMIT_ENV} nor {COMMIT_FILE} names the commit this tree was "
            f"copied from; set {COMMIT_ENV}=<sha> (benchmarks/gpu_validate.sh does)",
            field="git",
        )
    commit, _, state = text.partition(" ")
    if not _COMMIT.fullmatch(commit) or state.strip() not in ("", "clean", "dirty"):
        raise UserError(f"{text!r} is not '<commit sha> [clean|dirty]'", source=source)
    dirty = None if not state.strip() else state.strip() == "dirty"
    return GitInfo(commit=commit, short=commit[:7], dirty=dirty)


def needed_bytes(cells: int, rounds: int, max_samples: int) -> int:
    """Room a run's result file needs, generously: about 8 KiB per cell and round beside its samples
    (a few tens of bytes each, per timed part), twice over for the atomic rewrite, plus 1 MiB."""
    per_round = 8 * 1024 + 100 * max_samples
    return 2 * (cells * rounds * per_round) + MIB


@dataclass
class ResultFile:
    """One target's result file of a run, the lock held on it, and where each of its cells is in it."""

    path: Path
    result: RunResult
    lock: AdvisoryLock | None = None
    index: dict[CellKey, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {c.key: i for i, c in enumerate(self.result.cells)}

    def save(self) -> None:
        """Save the file; RunFailure, with the last good file left in place, when it cannot."""
        try:
            save_result(self.result, self.path)
        except OSError as exc:
            raise RunFailure(
                f"could not save the result ({exc.strerror or exc}); the file keeps what was saved before it, "
                f"every cell measured before this one: make room and continue with --resume",
                source=str(self.path),
            ) from None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _take(path: Path) -> AdvisoryLock:
    """Lock ``path`` for a run (LockHeld, naming the holder's pid, when another run has it)."""
    lock = file_lock(path, "run")
    lock.acquire()
    return lock


def shard_part(shard: Shard | None) -> str | None:
    """The part of a shard's file name: ``shard-2-of-4``."""
    return f"shard-{shard.index}-of-{shard.count}" if shard is not None else None


def find_resumable(
    out_dir: Path,
    target: str,
    loaded: LoadedScenario,
    device: str,
    *,
    finished_too: bool = False,
    shard: Shard | None = None,
) -> tuple[Path, RunResult] | None:
    """The newest unfinished result of this scenario (same content) and shard on this target, if any;
    with ``finished_too``, the newest one whether finished or not."""
    folder = out_dir / target
    if not folder.is_dir():
        return None
    for path in reversed(result_files(folder)):
        result = load_result(path)
        same = result.scenario.sha256 == loaded.content_sha256 and result.device == device and result.shard == shard
        if same and (finished_too or result.finished_utc is None):
            return path, result
    return None


def calibrated_earlier(folder: Path, result: RunResult, own: Path) -> tuple[Path, dict[CellKey, dict[str, int]]] | None:
    """The newest finished result in ``folder`` (a target's) other than ``own`` that measured ``result``'s
    scenario as it will be measured (same scenario name and device, and no setting that makes compare call
    them not comparable: --quick, the model, the sample settings), and the calls per warm sample each of its
    ``ok`` cells timed with; None when there is none. A run that times its cells with these compares with
    that one, and with every other run that did the same, cell by cell alike."""
    if not folder.is_dir():
        return None
    for path in reversed(result_files(folder)):
        if path == own:
            continue
        earlier = load_result(path)
        same = earlier.scenario.name == result.scenario.name and earlier.device == result.device
        if same and earlier.finished_utc is not None and setting_differences(earlier, result) is None:
            return path, calls_per_sample(earlier)
    return None


def calls_per_sample(result: RunResult) -> dict[CellKey, dict[str, int]]:
    """The calls per warm sample each ``ok`` cell of ``result`` timed with, by metric (harness/run/derive.py)."""
    reps = {c.key: inner_reps(c.metrics) for c in result.cells if c.status == "ok" and c.metrics is not None}
    return {key: counts for key, counts in reps.items() if counts}


def target_folders(out_dir: Path) -> list[str]:
    """Targets with a result folder under ``out_dir``, in name order."""
    if not out_dir.is_dir():
        return []
    return sorted(p.name for p in out_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


@dataclass(frozen=True)
class RunIdentity:
    """What every file of one run shares: its scenario, device kind, settings, start time and commit."""

    loaded: LoadedScenario
    device_kind: str  # cpu or cuda
    quick: bool
    started: datetime
    git: GitInfo
    shard: Shard | None


def create(out_dir: Path, target: str, environment: dict[str, Any], run: RunIdentity) -> ResultFile:
    """A new result file for ``target``: claimed, locked and saved before anything goes into it."""
    path = claim_result_path(out_dir / target, run.started, run.git.short, shard_part(run.shard))
    lock = _take(path)
    scenario = run.loaded.scenario
    result = RunResult(
        target=target,
        environment=environment,
        git=run.git,
        scenario=ScenarioRef(
            name=scenario.name,
            source=run.loaded.source,
            sha256=run.loaded.content_sha256,
            description=scenario.description,
            model=scenario.model.model_dump(),
            measure=scenario.measure.model_dump(),
            baseline=scenario.report.baseline,
        ),
        device=run.device_kind,
        quick=run.quick,
        started_utc=run.started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        shard=run.shard,
    )
    try:
        save_result(result, path)
    except OSError as exc:
        lock.release()
        path.unlink(missing_ok=True)  # the claimed, still empty name
        raise RunFailure(f"could not save the result: {exc.strerror or exc}", source=str(path)) from None
    return ResultFile(path, result, lock)


def reopen(out_dir: Path, target: str, run: RunIdentity, *, unstable: bool, required: bool) -> ResultFile | None:
    """The file to continue on ``target``: the newest unfinished run of this scenario (and shard); with
    ``unstable``, the newest one finished or not, with its unstable cells removed (they are measured
    again, every round, into the same file). Locked, then read again: what another run wrote before it
    let go is what this one continues. None when there is none, or a UserError when ``required``."""
    found = find_resumable(out_dir, target, run.loaded, run.device_kind, finished_too=unstable, shard=run.shard)
    if found is None:
        if not required:
            return None
        what = "to re-measure unstable cells of" if unstable else "to resume"
        kind = "run" if unstable else "unfinished run"
        raise UserError(
            f"no {kind} of scenario {run.loaded.scenario.name!r} (same file content) for target {target} {what}",
            source=str(out_dir / target),
        )
    path = found[0]
    lock = _take(path)
    try:
        result = load_result(path)
        if result.finished_utc is not None and not unstable:
            raise UserError("another run finished this file meanwhile; nothing to resume", source=str(path))
    except BaseException:
        lock.release()
        raise
    file = ResultFile(path, result, lock)
    if unstable:
        kept = [cell for cell in result.cells if not cell.unstable]
        file = ResultFile(path, result.model_copy(update={"cells": kept, "finished_utc": None}), lock)
        file.save()
    return file
