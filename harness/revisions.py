"""Source trees of two revisions side by side: a git revision checked out into a temporary worktree,
or the working tree itself (uncommitted changes included), for ``attnbench ab``.

A revision is any name git resolves to a commit (``main``, ``HEAD~3``, a tag, a hash); the working
tree is spelled ``.`` (``WORKTREE`` too). :func:`checkout` yields the tree's root and removes a
temporary worktree afterwards, also on error or Ctrl-C. Every failure a user can cause (not a
repository, an unknown revision, a revision without the entry point interleaved runs need) is a
one-line :class:`~harness.errors.UserError`.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError
from harness.git import repo_root, resolve_commit, run_git

WORKING_TREE = (".", "WORKTREE")
# What a revision must contain for ``attnbench ab`` to drive it (the interleaved-run server).
ENTRY_POINT = "harness/serve.py"


@dataclass(frozen=True)
class Revision:
    """A source tree to measure: where it is and what it is."""

    spec: str  # as the user wrote it
    root: Path  # the tree's top folder
    commit: str | None  # the commit it is, or its base when ``dirty``
    dirty: bool  # the working tree with uncommitted changes to tracked files

    @property
    def label(self) -> str:
        short = (self.commit or "nogit")[:7]
        return f"{self.spec} ({short}{', with uncommitted changes' if self.dirty else ''})"


def _require_entry_point(revision: Revision) -> None:
    if not (revision.root / ENTRY_POINT).is_file():
        raise UserError(
            f"has no {ENTRY_POINT}: it predates interleaved comparisons, so it cannot be driven by attnbench ab; "
            "compare it with results committed at it instead (attnbench compare REV RESULTS)",
            source=f"revision {revision.spec}",
        )


@contextlib.contextmanager
def checkout(spec: str, cwd: Path | None = None) -> Iterator[Revision]:
    """The source tree of ``spec``: the working tree for ``.``, else a temporary detached worktree."""
    root = repo_root(cwd)
    if root is None:
        raise UserError("not inside a git repository: interleaved comparisons need revisions", source=spec)
    if spec in WORKING_TREE:
        status = run_git(["status", "--porcelain", "--untracked-files=no"], root)
        revision = Revision(spec, root, resolve_commit("HEAD", root), dirty=bool(status.stdout.strip()))
        _require_entry_point(revision)
        yield revision
        return
    commit = resolve_commit(spec, root)
    if commit is None:
        raise UserError("no such git revision", source=spec)
    with tempfile.TemporaryDirectory(prefix="attnbench-ab-") as scratch:
        tree = Path(scratch) / commit[:12]
        added = run_git(["worktree", "add", "--detach", "--quiet", str(tree), commit], root)
        if not added.ok:
            raise UserError(f"git worktree add failed: {added.stderr.strip()}", source=spec)
        try:
            revision = Revision(spec, tree, commit, dirty=False)
            _require_entry_point(revision)
            yield revision
        finally:
            run_git(["worktree", "remove", "--force", str(tree)], root)
            run_git(["worktree", "prune"], root)
