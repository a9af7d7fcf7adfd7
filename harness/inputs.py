"""Reading an input file a user names: bounded, and every failure a :class:`~harness.errors.UserError`.

A name may point at something that never ends (``/dev/zero``, a pipe fed forever) or at a file far
larger than any input of its kind; reading stops one byte past the limit either way, instead of
filling memory. Decoding refuses, in one line each, text that is not UTF-8, a syntax error, nesting
deeper than the parser's recursion allows (``RecursionError``) and an integer of more digits than
Python converts (a ``ValueError``, ``sys.get_int_max_str_digits``): every JSON and TOML input is read
through :func:`read_json`, :func:`parse_json` or :func:`read_toml`.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

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


def _article(what: str) -> str:
    return "an" if what[:1] in "aeiou" else "a"


def _decoded(raw: bytes, source: str, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"not {_article(what)} {what} (not UTF-8 text)", source=source) from None


def read_text(path: str | Path, limit_bytes: int, what: str) -> str:
    """The UTF-8 text of the file ``path``, a ``what`` of at most ``limit_bytes``; UserError otherwise."""
    return _decoded(read_input(path, limit_bytes, what), str(path), what)


def parse_json(text: str, source: str, what: str) -> Any:
    """The JSON value in ``text``, a ``what`` ("result file") read from ``source``; UserError otherwise."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"not JSON: {exc}".splitlines()[0], source=source) from None
    except RecursionError:
        raise UserError(f"not {_article(what)} {what} (JSON nested too deeply to read)", source=source) from None
    except ValueError as exc:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise UserError(f"not {_article(what)} {what}: {exc}", source=source) from None


def read_json(path: str | Path, limit_bytes: int, what: str) -> Any:
    """The JSON value in the file ``path``, a ``what`` of at most ``limit_bytes``; UserError otherwise."""
    return parse_json(read_text(path, limit_bytes, what), str(path), what)


def read_toml(path: str | Path, limit_bytes: int, what: str) -> tuple[dict[str, Any], bytes]:
    """The TOML table in the file ``path``, a ``what`` of at most ``limit_bytes``, and the bytes it was
    read from (for a hash of the content); UserError otherwise."""
    source = str(path)
    raw = read_input(path, limit_bytes, what)
    try:
        return tomllib.loads(_decoded(raw, source, what)), raw
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"TOML syntax error: {exc}", source=source) from None
    except RecursionError:
        raise UserError("arrays or tables nested too deeply to read", source=source) from None
    except ValueError as exc:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise UserError(f"cannot read: {exc}", source=source) from None
