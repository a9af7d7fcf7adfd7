"""Result files as committed at a git revision: ``results/<target>/<run>.json`` read with ``git show``.

Lets ``compare`` take a revision (``main``, ``HEAD~3``, a tag or a hash) in place of a result file.
The results folder is ``results/`` at the top of the repository; file names sort by start time
(:func:`harness.results.store.result_filename`), so the newest run is the last name. Git runs as a
subprocess (harness/git.py); every failure a user can cause becomes a :class:`UserError`.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path, PurePosixPath

from harness.errors import UserError
from harness.git import repo_root, resolve_commit, run_git
from harness.results.schema import RunResult
from harness.results.store import RESULT_SUFFIX, name_order, parse_result

RESULTS_DIR = "results"  # relative to the repository's top folder


def _commit_and_root(rev: str, cwd: Path | None) -> tuple[str, Path]:
    root = repo_root(cwd)
    if root is None:
        raise UserError("no such file or folder (and not inside a git repository to read it as a revision)", source=rev)
    commit = resolve_commit(rev, root)
    if commit is None:
        raise UserError("no such git revision (and no such file or folder)", source=rev)
    return commit, root


def _result_paths(commit: str, root: Path, folder: str) -> list[str]:
    """Paths of ``*.json`` files below ``folder`` at ``commit``, oldest name first."""
    proc = run_git(["ls-tree", "-r", "-z", "--name-only", commit, "--", f"{folder}/"], root)
    if not proc.ok:
        raise UserError(f"git ls-tree failed: {proc.stderr.strip()}", source=commit)
    paths = [p for p in proc.stdout.split("\0") if p.endswith(RESULT_SUFFIX)]
    kept = (p for p in paths if not PurePosixPath(p).name.startswith("."))
    return sorted(kept, key=lambda p: name_order(PurePosixPath(p).name))


def _show(commit: str, path: str, root: Path) -> str:
    proc = run_git(["show", f"{commit}:{path}"], root)
    if not proc.ok:
        raise UserError(f"git show failed: {proc.stderr.strip()}", source=f"{commit}:{path}")
    try:
        return proc.stdout_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError("not a result file (not UTF-8 text)", source=f"{commit}:{path}") from None


def committed_targets(rev: str, cwd: Path | None = None, results_dir: str = RESULTS_DIR) -> list[str]:
    """Targets with at least one result file at ``rev``: the folder names under ``results/``, sorted."""
    commit, root = _commit_and_root(rev, cwd)
    targets = {
        PurePosixPath(p).parts[1] for p in _result_paths(commit, root, results_dir) if len(PurePosixPath(p).parts) > 2
    }
    return sorted(targets)


def committed_results(
    rev: str,
    target: str,
    scenarios: Collection[str] | None = None,
    cwd: Path | None = None,
    results_dir: str = RESULTS_DIR,
) -> list[RunResult]:
    """The newest committed result per scenario for ``target`` at ``rev``, sorted by scenario name.

    ``scenarios`` limits the search to those names (files are read newest first and reading stops
    once each has been found); None takes every scenario. Files whose recorded target differs from
    their folder, and JSON files that are not result files, are skipped. UserError when the revision
    does not exist or holds no result for the target (and scenarios) asked.
    """
    commit, root = _commit_and_root(rev, cwd)
    wanted = set(scenarios) if scenarios is not None else None
    found: dict[str, RunResult] = {}
    for path in reversed(_result_paths(commit, root, f"{results_dir}/{target}")):
        if wanted is not None and wanted <= found.keys():
            break
        text = _show(commit, path, root)
        if '"schema_version"' not in text:
            continue  # some other JSON file kept beside the results
        result = parse_result(text, f"{rev}:{path}")
        name = result.scenario.name
        if result.target != target or name in found or (wanted is not None and name not in wanted):
            continue
        found[name] = result
    if not found:
        what = f"target {target!r}" + (f" and scenario {', '.join(sorted(wanted))}" if wanted else "")
        raise UserError(
            f"holds no committed results under {results_dir}/{target}/ for {what}", source=f"revision {rev}"
        )
    return [found[name] for name in sorted(found)]


def committed_result(
    rev: str, target: str, scenario: str, cwd: Path | None = None, results_dir: str = RESULTS_DIR
) -> RunResult:
    """The newest result for ``target`` and ``scenario`` committed at ``rev`` (UserError when none)."""
    return committed_results(rev, target, [scenario], cwd, results_dir)[0]


def commit_order(cwd: Path | None = None) -> dict[str, int]:
    """Every commit reachable from HEAD, by full hash, numbered oldest first in git's topological order
    (a parent always before its children); empty outside a repository."""
    root = repo_root(cwd)
    if root is None:
        return {}
    out = run_git(["rev-list", "--topo-order", "--reverse", "HEAD"], root)
    if not out.ok:
        return {}
    return {commit: index for index, commit in enumerate(out.stdout.split())}
