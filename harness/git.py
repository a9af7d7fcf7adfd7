"""git, run as a subprocess without a shell: the one wrapper every caller uses, with one time limit.

Every call is bounded by ``TIMEOUT_S``: a git that waits on a lock or a prompt cannot hang a run, a
comparison or an interleaved A/B. A missing git and a call that runs out of time are a one-line
:class:`~harness.errors.UserError`; what a failed command says is the caller's to judge (its return
code and stderr). Output bytes that are not UTF-8 (in a file name, say) become U+FFFD.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError

# Long enough for ``git worktree add`` of a large checkout on a slow disk; far below a hung call.
TIMEOUT_S = 120.0


@dataclass(frozen=True)
class GitOutput:
    returncode: int
    stdout_bytes: bytes  # as git wrote it: a file's content is the caller's to decode
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", "replace")


def run_git(args: list[str], cwd: Path | None = None) -> GitOutput:
    """``git ARGS`` in ``cwd`` (default: the current folder); UserError when git is missing or hangs."""
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False, timeout=TIMEOUT_S)
    except FileNotFoundError:
        raise UserError("git is not installed, so revisions cannot be read") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"git {' '.join(args[:2])} did not finish within {TIMEOUT_S:g} s") from None
    except OSError as exc:
        raise UserError(f"cannot run git: {exc.strerror or exc}") from None
    return GitOutput(proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace"))


def repo_root(cwd: Path | None = None) -> Path | None:
    """The top folder of the git repository holding ``cwd``; None outside a repository."""
    out = run_git(["rev-parse", "--show-toplevel"], cwd or Path.cwd())
    return Path(out.stdout.strip()) if out.ok else None


def resolve_commit(rev: str, cwd: Path | None = None) -> str | None:
    """The full commit hash ``rev`` names, or None when it names no commit (or there is no repository)."""
    if not rev or rev.startswith("-"):
        return None
    out = run_git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd or Path.cwd())
    return out.stdout.strip() if out.ok else None
