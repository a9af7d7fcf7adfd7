"""Stop signals as an exception, so that an interrupted command cleans up instead of vanishing.

Python turns SIGINT (Ctrl-C) into ``KeyboardInterrupt`` but lets SIGTERM (what ``kill``, ``timeout``
and a cancelled CI job send) and SIGHUP (a closed terminal) end the process at once: no ``finally``
runs, so a run would leave its worker measuring, its file without a word of the interruption, and
``attnbench ab`` its worktrees. Inside :func:`stop_signals` all three raise :class:`Interrupted`
instead, which every ``finally`` and ``except Interrupted`` sees; the command line turns it into one
line and exit code 128 + the signal's number (130 for SIGINT, 143 for SIGTERM), as a shell reports a
process killed by it.

The first signal raises; any later one while the first is being handled is noted and ignored, so
that saving what was measured cannot itself be cut short (SIGKILL still ends everything: the
result file is then as the last finished cell left it).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):
    """A stop signal arrived. A BaseException, like KeyboardInterrupt: ``except Exception`` lets it pass."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextmanager
def stop_signals() -> Iterator[None]:
    """Within the block, SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` (the first one only).

    Only the main thread can install handlers; elsewhere the block changes nothing. A signal that
    was ignored on entry stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise Interrupted(signum)

    # a signal ignored when this process started (SIGHUP under nohup, SIGINT in a background job)
    # stays ignored: whoever started it asked for that
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
