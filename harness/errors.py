"""The one error type a user's mistake raises.

Anything a user can get wrong (a scenario file, a command-line argument, a result file handed to
``compare``) raises :class:`UserError`. The command line prints it as a single line and exits with
code 2; it never shows a traceback for it.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input, reported as ``<source>: <field>: <reason>``."""

    exit_code = 2

    def __init__(self, reason: str, *, source: str | None = None, field: str | None = None):
        self.reason = reason
        self.source = source
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [p for p in (self.source, self.field, self.reason) if p]
        return ": ".join(parts)


class RunFailure(UserError):
    """A measurement that cannot go on through no mistake of the user's (a probe of the machine failed):
    reported like a :class:`UserError`, one line, but with exit code 1."""

    exit_code = 1
