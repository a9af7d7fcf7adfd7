"""Advisory locks that keep two attnbench processes from writing the same files at once.

    with folder_lock(out_dir, "report"):      # LockHeld (a UserError) if another report holds it
        ...write the files...

A lock is ``fcntl.flock`` on a hidden file in the folder written to (``.attnbench-report.lock``),
holding the holder's pid so that a second taker can say who holds it. The kernel drops the lock
when its holder exits, however it exits (SIGKILL included), so a dead process never blocks
anyone; a clean release also removes the file, so nothing is left in a results folder that is
committed. Removal is safe because a taker checks, once it holds the lock, that the file it
locked is still the one at the path, and starts over if it was removed in between. Advisory means
only attnbench processes that take the lock are kept out, on file systems whose ``flock`` works
across processes (local ones do).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from harness.errors import UserError

# A holder takes the lock, then writes its pid: a second taker that finds the file empty waits
# this long for the pid before saying it does not know it.
_PID_WAIT_S = 0.5


class LockHeld(UserError):
    """Another process holds the lock; ``holder_pid`` is its pid when the lock file names one."""

    def __init__(self, reason: str, *, source: str, holder_pid: int | None) -> None:
        super().__init__(reason, source=source)
        self.holder_pid = holder_pid


class AdvisoryLock:
    """An exclusive lock on the file at ``path`` for one ``purpose`` (how a refusal names the holder).

    Not reentrant: a second :meth:`acquire` of the same file, even from this process, is refused.
    """

    def __init__(self, path: Path, purpose: str, subject: Path | None = None) -> None:
        self.path = path
        self.purpose = purpose
        self.subject = subject if subject is not None else path.parent  # what a refusal names as written
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`LockHeld` at once (never waits); UserError when the
        folder cannot hold a lock file (missing permissions, read-only file system)."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this lock")
        while self._fd is None:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder_pid(fd)
                os.close(fd)
                named = f"pid {holder}" if holder is not None else "pid unknown"
                raise LockHeld(
                    f"another attnbench {self.purpose} is writing here ({named}); run again once it has finished",
                    source=str(self.subject),
                    holder_pid=holder,
                ) from None
            except BaseException:
                os.close(fd)
                raise
            if not self._is_current(fd):  # its holder removed it before we locked it: take the new one
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._fd = fd

    def release(self) -> None:
        """Give the lock up and remove its file; nothing when not held. The file goes before the
        lock does, so no other process can lock it in between and take it for the current one."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                with contextlib.suppress(OSError):  # left behind, the file only costs a look
                    self.path.unlink()
            finally:
                os.close(fd)

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a link planted at the lock's path must not make us truncate what it points to
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)
        except OSError as exc:
            raise UserError(f"cannot write here: {exc.strerror or exc}", source=str(self.path.parent)) from None

    def _is_current(self, fd: int) -> bool:
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            return False

    def __enter__(self) -> AdvisoryLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def folder_lock(folder: Path, purpose: str) -> AdvisoryLock:
    """The lock that writers doing ``purpose`` (``"report"``, ``"run"``) take on ``folder``."""
    return AdvisoryLock(folder / f".attnbench-{purpose}.lock", purpose)


def file_lock(path: Path, purpose: str) -> AdvisoryLock:
    """The lock that writers doing ``purpose`` take on one file: ``.<name>.lock`` beside it."""
    return AdvisoryLock(path.with_name(f".{path.name}.lock"), purpose, subject=path)


def _holder_pid(fd: int) -> int | None:
    """The pid the holder wrote into the lock file; None if it wrote none in time or wrote garbage."""
    deadline = time.monotonic() + _PID_WAIT_S
    while True:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return int(text) if text.isdecimal() and len(text) < 16 else None
