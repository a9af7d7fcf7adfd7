"""Reading an input file a user names: bounded, and every failure a :class:`~harness.errors.UserError`.

A name may point at something that never ends (``/dev/zero``, a pipe fed forever) or at a file far
larger than any input of its kind; reading stops one byte past the limit either way, instead of
filling memory.
"""

from __future__ import annotations

from pathlib import Path

from harness.errors import UserError

MIB = 2**20


def read_input(path: str | Path, limit_bytes: int, what: str) -> bytes:
    """The bytes of ``path``, a ``what`` ("scenario file"); UserError when it is missing, a folder,
    unreadable, or larger than ``limit_bytes``."""
    source = str(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit_bytes + 1)
    except FileNotFoundError:
        raise UserError("no such file", source=source) from None
    except IsADirectoryError:
        raise UserError(f"is a directory, not a {what}", source=source) from None
    except OSError as exc:
        raise UserError(f"cannot read: {exc.strerror or exc}", source=source) from None
    if len(data) > limit_bytes:
        raise UserError(f"larger than {limit_bytes // MIB} MiB, too large for a {what}", source=source)
    return data
