"""The one error type a user's mistake raises.

Anything a user can get wrong (a scenario file, a command-line argument, a result file handed to
``compare``) raises :class:`UserError`. The command line prints each of its problems as a single
line and exits with code 2; it never shows a traceback for it. Where one input has several
problems (a result file is checked whole), :class:`UserErrors` carries them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError


def one_line(text: str) -> str:
    """``text`` with every character that would not print as itself (newlines, tabs, control and
    bidirectional-override characters) escaped, so that text taken from a file can never start a
    new line or disguise itself on a terminal."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: ``<source>: <field>: <reason>`` on one line."""

    reason: str
    source: str | None = None  # the file, flag or revision
    field: str | None = None  # dotted path inside the source, e.g. cells[3].metrics.peak_memory_bytes

    def __str__(self) -> str:
        return one_line(": ".join(p for p in (self.source, self.field, self.reason) if p))


class UserError(Exception):
    """A mistake in the user's input, reported as ``<source>: <field>: <reason>``."""

    exit_code = 2

    def __init__(self, reason: str, *, source: str | None = None, field: str | None = None):
        self.reason = reason
        self.source = source
        self.field = field
        self.problems: tuple[Problem, ...] = (Problem(reason, source, field),)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)


class UserErrors(UserError):
    """Several problems with one input, found at once: printed one line each."""

    def __init__(self, problems: Sequence[Problem]):
        if not problems:
            raise ValueError("UserErrors needs at least one problem")
        first = problems[0]
        super().__init__(first.reason, source=first.source, field=first.field)
        self.problems = tuple(problems)
        self.args = (str(self),)


def dotted(loc: Sequence[int | str]) -> str:
    """``('variant', 2, 'n_kv_heads')`` -> ``'variant[2].n_kv_heads'``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_SHOWN_INPUT_CHARS = 40  # an offending value longer than this is not repeated in the message


def validation_problems(exc: ValidationError, source: str) -> list[Problem]:
    """Every error of a pydantic validation, one :class:`Problem` each, in the order pydantic found them."""
    problems = []
    for err in exc.errors(include_url=False):
        # "function-before[...]" and similar parts name validators, not fields
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        reason = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            reason = "unknown key"
        elif err["type"] == "missing":
            reason = "required field is missing"
        elif isinstance(err.get("input"), int | float | str) and len(shown := repr(err["input"])) <= _SHOWN_INPUT_CHARS:
            reason += f" (got {shown})"
        problems.append(Problem(reason, source, dotted(loc) or None))
    return problems


class RunFailure(UserError):
    """A measurement that cannot go on through no mistake of the user's (a probe of the machine failed):
    reported like a :class:`UserError`, one line, but with exit code 1."""

    exit_code = 1
